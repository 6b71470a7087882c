"""The cleaned dataset as a Hugging Face dataset: ``W/cleaned_hf`` (``save_to_disk``).

    if export_hf.wanted(config):                      # config.export_hf: auto | true | false
        export_hf.write(os.path.join(workdir, "cleaned_hf"), table, source)
    ds = datasets.load_from_disk(workdir + "/cleaned_hf")
    ds.filter(lambda r: not r["label_issue"])         # the kept samples

One row per scored sample (``scores.csv``'s rows, dataset order; an unreadable image is not
scored and so not exported, as in ``cleaned.csv``), with two columns added beside the data:
``label_issue`` (bool, the sample is flagged: ``score < threshold``, the same mask as
``label_issues.npy``) and ``score`` (float32, the consistency score). Two layouts:

- the input was a local HF dataset (``data.kind = "hf"``) and nothing was injected: its own
  rows, every original column as it was (images, label column with its ``ClassLabel``, the id
  column), plus ``id`` (the ids of ``scores.csv``) when the dataset has no column of that name;
- otherwise (TFDS, files, or a corrupted set): ``image`` (``Image``, the image *as judged*,
  PNG, with any injected trigger), ``label`` (``ClassLabel`` with the run's class names; the
  label checked, after injected noise), ``id``, and ``dirt_kind`` (``""`` = clean) when the
  dirt was injected.

``config.export_hf``: ``"auto"`` (default) writes it for HF inputs only (others already have
``cleaned.csv``, and a copy of every image can be large), ``"true"`` always, ``"false"`` never.
The folder is written beside the final one and renamed into place, so a reader never sees half
an export; a rerun replaces it.
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import tempfile

import numpy as np

from vdc_jax.scoring import Table
from vl_jax.data.hf import HFSource
from vl_jax.errors import ConfigError
from vl_jax.images import ImageError

log = logging.getLogger(__name__)

__all__ = ["wanted", "write"]

CHUNK = 256  # rows built in memory at a time (images are PNG-encoded bytes)


def wanted(config) -> bool:
    """Whether ``config`` asks for the export (``export_hf``: auto | true | false)."""
    value = str(config.get("export_hf", "auto")).strip().lower()
    if value == "auto":
        return config.data.kind == "hf"
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise ConfigError(f"config.export_hf must be auto, true or false, got {value!r}")


def write(out: str, table: Table, source) -> str:
    """Writes the export of ``table`` (scored rows) read from ``source`` (the source VQA read:
    the corrupted one when dirt was injected) to folder ``out``; returns ``out``."""
    import datasets

    if isinstance(source, HFSource):
        ds = _native(table, source)
    else:
        ds = _rebuilt(table, source)
    parent = os.path.dirname(os.path.abspath(out))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(out)}.")
    try:
        was_disabled = datasets.utils.are_progress_bars_disabled()
        datasets.disable_progress_bars()
        try:
            ds.save_to_disk(tmp)
        finally:
            if not was_disabled:
                datasets.enable_progress_bars()
        shutil.rmtree(out, ignore_errors=True)
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("HF export: %d rows -> %s", len(ds), out)
    return out


def _native(table: Table, source: HFSource):
    """The input dataset's own rows and columns, plus ``label_issue``, ``score`` (and ``id``)."""
    import datasets

    ds = source.dataset.select(source.rows[table.index])
    # The source reads images encoded (decode=False); the export decodes as a normal dataset.
    # save_to_disk embeds the bytes of rows that point at files (an image folder's).
    if isinstance(ds.features[source.image_column], datasets.Image):
        ds = ds.cast_column(source.image_column, datasets.Image())
    if "id" not in ds.column_names:
        ds = ds.add_column("id", list(table.ids))
    ds = ds.add_column("label_issue", np.asarray(table.flagged, bool).tolist())
    return ds.add_column("score", np.asarray(table.score, np.float32).tolist())


def _rebuilt(table: Table, source):
    """``image`` (PNG as judged), ``label``, ``id``, ``label_issue``, ``score`` [, ``dirt_kind``]."""
    import datasets

    names = list(table.class_names)
    features = {
        "image": datasets.Image(),
        "label": datasets.ClassLabel(names=names),
        "id": datasets.Value("string"),
        "label_issue": datasets.Value("bool"),
        "score": datasets.Value("float32"),
    }
    if table.kinds is not None:
        features["dirt_kind"] = datasets.Value("string")
    features = datasets.Features(features)
    parts = []
    for lo in range(0, len(table.index), CHUNK):
        rows = range(lo, min(lo + CHUNK, len(table.index)))
        cols = {
            "image": [_png(source, int(table.index[r]), table.ids[r]) for r in rows],
            "label": [int(table.labels[r]) for r in rows],
            "id": [table.ids[r] for r in rows],
            "label_issue": [bool(table.flagged[r]) for r in rows],
            "score": [float(table.score[r]) for r in rows],
        }
        if table.kinds is not None:
            cols["dirt_kind"] = [str(table.kinds[r]) for r in rows]
        parts.append(datasets.Dataset.from_dict(cols, features=features))
    if not parts:
        return datasets.Dataset.from_dict({k: [] for k in features}, features=features)
    return datasets.concatenate_datasets(parts)


def _png(source, index: int, example_id: str) -> dict | None:
    """``{"bytes": PNG, "path": None}`` of ``source[index]``'s image, as the pipeline reads it."""
    from PIL import Image

    from vl_jax.data.pipeline import to_rgb

    try:
        pixels = to_rgb(source[index]["image"], example_id)
    except (ImageError, OSError) as e:  # read once already (it was scored); say so and go on
        log.warning("HF export: %s: image not readable now (%s); exported without it",
                    example_id, e)  # fmt: skip
        return None
    buf = io.BytesIO()
    Image.fromarray(np.asarray(pixels, np.uint8)).save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": None}
