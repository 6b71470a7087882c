"""Hugging Face ``datasets`` on local disk as a :class:`~vl_jax.data.protocol.RandomAccessSource`.

    src = hf_source("/data/pets_saved", "train")                     # save_to_disk output
    src = hf_source("/data/pets_folder", "test")                     # imagefolder layout
    src = hf_source("/data/pets.parquet", "train[:10%]", label_column="breed")
    src = get_source("hf:/data/pets_saved?image=img&label=breed", "train")   # the same, by name
    src[i] -> {"image": uint8 [H, W, 3], "label": int32, "id": str}

Three local layouts, told apart by what is at ``path`` (nothing is ever downloaded; a name that
is not an existing path, such as a hub id, is a :class:`~vl_jax.errors.NotFoundError`):

- a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk`` (it holds
  ``state.json`` or ``dataset_dict.json``): read with ``datasets.load_from_disk``; a single
  ``Dataset`` is the split it was saved as (``"train"`` when it has none);
- ``.parquet`` files, or a folder of them: ``load_dataset("parquet", data_files=...)``
  (split ``train``);
- any other folder: ``load_dataset("imagefolder", data_dir=...)`` (class subfolders, optional
  ``train/``/``test/`` split folders, as ``datasets`` defines them).

Columns: ``image_column`` holds an ``Image`` feature, encoded bytes, or file paths;
``label_column`` (``""`` = no labels, every label -1) a ``ClassLabel`` (its names become
``class_names``), integers (names ``"0" ... "C-1"`` unless given) or strings (sorted unique
values); ``id_column`` (``""`` = ``"<split>/<row>"``, the row in the whole split) any column
with unique values. A missing column is a :class:`~vl_jax.data.files.DataError` that lists the
columns there are. ``split`` is a split string as ``datasets`` spells it (``"train"``,
``"test[:50]"``, ``"train[10%:20%]"``; one split at a time).

Images stay encoded in the Arrow table and are decoded in ``__getitem__`` with
:mod:`vl_jax.images` (same rules as every other source); an undecodable or missing image raises
:class:`~vl_jax.images.ImageError` naming the dataset, split, row and id, which the input
pipeline records as skipped (``skipped.tsv``) and never stops on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import operator
import os
from collections.abc import Sequence
from urllib.parse import parse_qsl, urlencode

import numpy as np

from vl_jax.data.files import DataError
from vl_jax.errors import NotFoundError
from vl_jax.images import ImageError, decode_rgb, load_rgb

__all__ = ["HF_PREFIX", "HFSource", "HFSpec", "hf_source", "source_name"]

HF_PREFIX = "hf:"
_KEYS = {"image": "image_column", "label": "label_column", "id": "id_column"}


@dataclasses.dataclass(frozen=True)
class HFSpec:
    """Where an HF dataset is and which columns to read; ``name`` is its ``get_source`` name
    (``hf:<path>`` plus ``?image=..&label=..&id=..`` for columns that are not the defaults)."""

    path: str
    image_column: str = "image"
    label_column: str = "label"
    id_column: str = ""

    @property
    def name(self) -> str:
        default = HFSpec(self.path)
        query = {
            k: getattr(self, field)
            for k, field in _KEYS.items()
            if getattr(self, field) != getattr(default, field)
        }
        return HF_PREFIX + self.path + (f"?{urlencode(query)}" if query else "")

    @classmethod
    def parse(cls, name: str) -> HFSpec:
        """The spec of ``hf:<path>[?image=..&label=..&id=..]``; DataError on unknown keys."""
        body = name.removeprefix(HF_PREFIX)
        path, sep, query = body.rpartition("?")
        if not sep:
            return cls(body)
        pairs = parse_qsl(query, keep_blank_values=True)
        unknown = [k for k, _ in pairs if k not in _KEYS]
        if unknown:
            raise DataError(f"{name}: unknown option(s) {unknown}; known: {sorted(_KEYS)}")
        return cls(path, **{_KEYS[k]: v for k, v in pairs})


class HFSource:
    """A split of a local HF dataset; examples ``{"image": uint8 [H, W, 3], "label": int32,
    "id": str}``. Build it with :func:`hf_source`.

    Attributes:
      dataset: the ``datasets.Dataset`` of the whole split with its image column left encoded
        (``Image(decode=False)``); ``rows[i]`` is example ``i``'s row in it.
      rows: ``int64 [N]``, the rows the split string selects.
      image_column / label_column / id_column: the columns read.
    """

    def __init__(self, spec: HFSpec, split: str, dataset, rows, class_names, labels, ids):
        self.name, self.split = spec.name, split
        self.spec = spec
        self.dataset = dataset
        self._images = dataset.select_columns([spec.image_column])  # rows read: this column only
        self.rows = np.asarray(rows, np.int64)
        self.class_names = list(class_names)
        self._labels = np.asarray(labels, np.int32)
        self._ids = list(ids)

    image_column = property(lambda self: self.spec.image_column)
    label_column = property(lambda self: self.spec.label_column)
    id_column = property(lambda self: self.spec.id_column)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i) -> dict:
        i = operator.index(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {self!r}")
        i %= len(self)
        row, example_id = int(self.rows[i]), self._ids[i]
        try:
            image = _decode(self._images[row][self.image_column], example_id)
        except ImageError as e:  # the id (as other sources), and where the row is
            where = f"at {self.spec.path}, {self.split.split('[', 1)[0]} row {row}"
            raise ImageError(example_id, f"{e.reason} ({where})") from e
        return {"image": image, "label": self._labels[i], "id": example_id}

    def labels(self) -> np.ndarray:
        """``int32 [N]``, without decoding any image."""
        return self._labels.copy()

    def ids(self) -> list[str]:
        """``[N]``, without decoding any image."""
        return list(self._ids)

    def __repr__(self) -> str:
        return f"HFSource({self.name!r}, split={self.split!r}, len={len(self)}, classes={self.num_classes})"


def hf_source(
    path: str | os.PathLike,
    split: str = "train",
    *,
    image_column: str = "image",
    label_column: str = "label",
    id_column: str = "",
    class_names: Sequence[str] | None = None,
    cache_dir: str | None = None,
) -> HFSource:
    """The ``split`` of the local HF dataset at ``path`` (see the module docstring).

    Args:
      class_names: names of integer labels without a ``ClassLabel`` (ignored otherwise).
      cache_dir: where ``load_dataset`` keeps its Arrow cache for image folders and parquet
        (None = the ``datasets`` default); ``save_to_disk`` folders are read in place.

    Raises:
      NotFoundError: ``path`` does not exist (hub names are never downloaded).
      DataError: unknown split, missing or non-image column, duplicate ids, unknown labels.
    """
    spec = HFSpec(os.fspath(path), image_column, label_column, id_column)
    splits = _load(spec.path, cache_dir)
    instructions = _split_rows(spec.path, split, splits)
    bases = {name for name, _ in instructions}
    if len(bases) > 1:
        raise DataError(f"{spec.path}: split {split!r} spans splits {sorted(bases)}; read one")
    base, rows = instructions[0][0], np.concatenate([r for _, r in instructions])
    dataset = splits[base]
    _check_columns(spec, dataset)
    dataset = _encoded_images(dataset, image_column)
    names, labels = _labels(spec, dataset, class_names)
    if id_column:
        all_ids = [str(v) for v in dataset[id_column]]
        if len(set(all_ids)) != len(all_ids):
            dup = next(v for v in all_ids if all_ids.count(v) > 1)
            raise DataError(f"{spec.path}: id column {id_column!r} has {dup!r} twice")
        ids = [all_ids[r] for r in rows]
    else:
        ids = [f"{base}/{r}" for r in rows]
    return HFSource(spec, split, dataset, rows, names, labels[rows], ids)


# --------------------------------------------------------------------------------- loading
def _load(path: str, cache_dir: str | None) -> dict:
    """``{split: datasets.Dataset}`` of the local dataset at ``path``."""
    if not os.path.exists(path):
        raise NotFoundError(
            f"HF dataset {path!r} is not a local path (a save_to_disk folder, an image folder or "
            f"parquet files); hub datasets are never downloaded here: save one with "
            f"save_to_disk on a machine with network access and copy it"
        )
    import datasets

    with _quiet(datasets):
        if os.path.isdir(path) and {"state.json", "dataset_dict.json"} & set(os.listdir(path)):
            try:
                loaded = datasets.load_from_disk(path)
            except (FileNotFoundError, ValueError, OSError) as e:
                raise DataError(f"{path}: cannot read the saved dataset: {e}") from e
            if isinstance(loaded, datasets.DatasetDict):
                return dict(loaded)
            return {str(loaded.split) if loaded.split else "train": loaded}
        parquet = (
            [path]
            if os.path.isfile(path)
            else sorted(glob.glob(os.path.join(path, "**", "*.parquet"), recursive=True))
        )
        if os.path.isfile(path) and not path.endswith(".parquet"):
            raise DataError(f"{path}: expected a .parquet file, a save_to_disk folder or a folder")
        try:
            if parquet:
                loaded = datasets.load_dataset("parquet", data_files=parquet, cache_dir=cache_dir)
            else:
                loaded = datasets.load_dataset("imagefolder", data_dir=path, cache_dir=cache_dir)
        except (FileNotFoundError, ValueError) as e:  # no images / no data files found
            raise DataError(f"{path}: not a dataset datasets can read locally: {e}") from e
    return dict(loaded)


@contextlib.contextmanager
def _quiet(datasets):
    """No progress bars or "Downloading and preparing" lines for a local build."""
    was_disabled = datasets.utils.are_progress_bars_disabled()
    level = datasets.logging.get_verbosity()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    try:
        yield
    finally:
        datasets.logging.set_verbosity(level)
        if not was_disabled:
            datasets.enable_progress_bars()


def _split_rows(path: str, split: str, splits: dict) -> list[tuple[str, np.ndarray]]:
    """``[(split name, int64 rows)]`` that ``split`` (datasets' split grammar) selects."""
    import datasets

    try:
        instruction = datasets.ReadInstruction.from_spec(split)
        absolute = instruction.to_absolute({k: len(v) for k, v in splits.items()})
    except (ValueError, AssertionError) as e:
        raise DataError(f"{path}: bad split {split!r} (splits: {sorted(splits)}): {e}") from e
    return [(a.splitname, np.arange(a.from_, a.to, dtype=np.int64)) for a in absolute]


def _check_columns(spec: HFSpec, dataset) -> None:
    for what, col in (("image", spec.image_column), ("label", spec.label_column),
                      ("id", spec.id_column)):  # fmt: skip
        if col and col not in dataset.column_names:
            raise DataError(
                f"{spec.path}: no {what} column {col!r}; columns: {dataset.column_names} "
                f"(set data.{what}_column)"
            )


def _encoded_images(dataset, column: str):
    """``dataset`` with ``column`` left encoded: ``{"bytes", "path"}`` rows, bytes or paths."""
    import datasets

    feature = dataset.features[column]
    if isinstance(feature, datasets.Image):
        return dataset.cast_column(column, datasets.Image(decode=False))
    dtype = getattr(feature, "dtype", None)
    if dtype in ("binary", "large_binary", "string", "large_string"):
        return dataset
    raise DataError(
        f"column {column!r} holds {feature}, not images (an Image feature, bytes or file paths)"
    )


def _labels(spec: HFSpec, dataset, class_names) -> tuple[list[str], np.ndarray]:
    """``(class names, int32 labels of every row of the split)``."""
    import datasets

    col = spec.label_column
    if not col:
        return list(class_names or []), np.full(len(dataset), -1, np.int32)
    feature, values = dataset.features[col], dataset[col]
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names), np.asarray(list(values), np.int32)
    dtype = getattr(feature, "dtype", "")
    if dtype.startswith(("int", "uint")):
        labels = np.asarray(list(values), np.int64)
        k = int(labels.max()) + 1 if len(labels) else 0
        names = list(class_names) if class_names else [str(c) for c in range(k)]
        if len(labels) and (labels.min() < -1 or labels.max() >= len(names)):
            raise DataError(f"{spec.path}: labels in {col!r} outside -1..{len(names) - 1}")
        return names, labels.astype(np.int32)
    if dtype in ("string", "large_string"):
        text = [str(v) for v in values]
        names = list(class_names) if class_names else sorted(set(text))
        index = {n: i for i, n in enumerate(names)}
        unknown = sorted(set(text) - set(index))
        if unknown:
            raise DataError(f"{spec.path}: labels {unknown[:5]} of {col!r} not in {names}")
        return names, np.asarray([index[t] for t in text], np.int32)
    raise DataError(f"{spec.path}: label column {col!r} holds {feature}, not class labels")


def _decode(value, name: str) -> np.ndarray:
    """An image cell (``{"bytes", "path"}``, bytes or a path) -> ``uint8 [H, W, 3]``; an
    ImageError's reason names the file of a path."""
    if isinstance(value, dict):
        data, path = value.get("bytes"), value.get("path")
        if data:
            return decode_rgb(data, name)
        value = path
    if isinstance(value, bytes | bytearray):
        return decode_rgb(bytes(value), name)
    if not value:
        raise ImageError(name, "no image in this row")
    try:
        return load_rgb(value)
    except ImageError as e:
        raise ImageError(name, f"{value}: {e.reason}") from e
    except OSError as e:  # missing or unreadable file
        raise ImageError(name, f"{value}: {type(e).__name__}: {e}") from e


def source_name(data) -> str:
    """The ``get_source`` name of a clustering config's ``data`` block: ``data.source``, or for
    ``data.kind == "hf"`` the ``hf:`` name of ``data.path`` and its columns."""
    if data.get("kind", "tfds") != "hf":
        return data.source
    if not data.get("path"):
        raise DataError("config.data.kind='hf' needs config.data.path")
    return HFSpec(data.path, data.image_column, data.label_column, data.id_column).name
