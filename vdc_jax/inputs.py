"""Where the cleanser's samples come from: a dataset source, and the runlocal images.

    data = load_dataset(config.data, workdir)   # data.source: a RandomAccessSource
    data.source[i]                              # {"image": uint8 [H, W, 3], "label", "id"}
    data.class_names, data.paths                # paths: [N] str for files, None for TFDS
    view = Subset(data.source, indices)         # the samples at `indices`, as a source

Five kinds of dataset (``config.data.kind``):

- ``tfds``: a name that `vl_jax.data.get_source` knows (ImageNet subsets, CIFAR-10, ...,
  ``image_folder:/path``), with ``split``, ``data_dir``, ``manual_dir``;
- ``folder``: an image folder with one subfolder per class
  (`vl_jax.data.files.FileSource.from_folder`; files directly in the root have no label and are
  left out, with a warning); ids are the paths relative to the folder;
- ``csv``: a CSV of ``path,label`` rows (`FileSource.from_csv`: optional header, paths relative
  to the CSV's folder, labels class names — or indices into ``data.class_names`` when given);
  ids are the paths as written. A bad row is a `DataError` naming the file and line; a missing
  or unreadable image is skipped when it is read and listed in the run's ``skipped.tsv``;
- ``hf``: a local Hugging Face dataset at ``path`` (a ``save_to_disk`` folder, an image folder
  or parquet files; `vl_jax.data.hf`), its ``split``, columns ``image_column`` /
  ``label_column`` / ``id_column`` (``""`` = ``"<split>/<row>"``); ``class_names`` names
  integer labels that have no ``ClassLabel``. A hub name is an error, never a download;
- ``synthetic``: a small generated image folder (coloured circles / squares / triangles on noise)
  written into the workdir (by the writer process), for runlocal.

`Subset` is the source VQA reads: the (corrupted) dataset restricted to the samples it checks
(those with a label), so that the input pipeline's batch ``k`` holds checked samples
``k * B ... (k + 1) * B - 1`` and no batch is cut short by unlabelled ones.
"""

from __future__ import annotations

import dataclasses
import logging
import operator
import os
import tempfile
from collections.abc import Sequence

import numpy as np

from vl_jax import workdir as wd
from vl_jax.data.files import DataError, FileSource
from vl_jax.data.protocol import RandomAccessSource
from vl_jax.errors import UserError

log = logging.getLogger(__name__)

__all__ = ["SHAPES", "DataError", "Dataset", "Subset", "load_dataset", "synthetic_folder",
           "write_shapes_folder"]  # fmt: skip


@dataclasses.dataclass
class Dataset:
    """`source`: the samples; `paths`: [N] absolute image paths when the samples are files,
    else None; `description`: what the data is, for metrics.json."""

    source: RandomAccessSource
    class_names: list[str]
    paths: list[str] | None
    description: str


class Subset:
    """``source`` restricted to ``indices``, in that order: ``self[k] == source[indices[k]]``.

    A :class:`vl_jax.data.protocol.RandomAccessSource` (ids, labels and class names of the
    chosen samples, read without decoding); decoding happens in ``source[...]``, so a bad image
    raises there as it would from ``source``.

    Args:
      source: a RandomAccessSource. indices: ``[M]`` positions in it.
    """

    def __init__(self, source: RandomAccessSource, indices: Sequence[int] | np.ndarray):
        self.source = source
        self.indices = np.asarray(indices, np.int64).reshape(-1)
        if len(self.indices) and not (0 <= self.indices.min() and self.indices.max() < len(source)):
            raise IndexError(f"indices outside [0, {len(source)})")
        self.name, self.split = source.name, source.split
        self.class_names = list(source.class_names)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k) -> dict:
        return self.source[int(self.indices[operator.index(k)])]

    def labels(self) -> np.ndarray:
        return np.asarray(self.source.labels())[self.indices]

    def ids(self) -> list[str]:
        ids = self.source.ids()
        return [ids[i] for i in self.indices]

    def __repr__(self) -> str:
        return f"Subset({self.source!r}, {len(self)} of {len(self.source)})"


# ---------------------------------------------------------------------------- loading
def load_dataset(cfg, workdir: str) -> Dataset:
    """The dataset of ``cfg`` (``config.data``); see the module docstring."""
    kind = cfg.kind
    if kind in ("folder", "csv", "hf") and not cfg.path:
        raise DataError(f"config.data.kind={kind!r} needs config.data.path")
    if kind == "tfds":
        from vl_jax.data import get_source

        if not cfg.name:
            raise DataError("config.data.kind='tfds' needs config.data.name")
        try:
            src = get_source(
                cfg.name,
                cfg.split,
                data_dir=cfg.data_dir or None,
                manual_dir=cfg.manual_dir or None,
            )
        except UserError:  # e.g. DatasetNotPreparedError: already says what to do
            raise
        except ValueError as e:  # unknown name or split: the message lists the known ones
            raise DataError(str(e)) from e
        return Dataset(src, list(src.class_names), None, f"tfds {cfg.name}:{cfg.split}")
    if kind == "folder":
        return _files(FileSource.from_folder(cfg.path, labelled_only=True), "folder")
    if kind == "csv":
        return _files(FileSource.from_csv(cfg.path, list(cfg.class_names) or None), "csv")
    if kind == "hf":
        from vl_jax.data.hf import hf_source

        src = hf_source(
            cfg.path, cfg.split, image_column=cfg.image_column, label_column=cfg.label_column,
            id_column=cfg.id_column, class_names=list(cfg.class_names) or None,
            cache_dir=os.path.join(cfg.data_dir, "hf_cache") if cfg.data_dir else None,
        )  # fmt: skip
        return Dataset(src, list(src.class_names), None, f"hf {cfg.path}:{cfg.split}")
    if kind == "synthetic":
        root = synthetic_folder(workdir, cfg.per_class, cfg.seed)
        return _files(FileSource.from_folder(root, labelled_only=True), "folder")
    raise DataError(f"config.data.kind must be tfds, folder, csv, hf or synthetic, got {kind!r}")


def _files(src: FileSource, kind: str) -> Dataset:
    return Dataset(src, list(src.class_names), list(src.paths), f"{kind} {src.name}")


# ---------------------------------------------------------------------------- runlocal
SHAPES = ("circle", "square", "triangle")


def synthetic_folder(workdir: str, per_class: int, seed: int) -> str:
    """`workdir/synthetic_images`, written once: by the writer process into a temporary folder
    that is renamed into place (a killed write leaves no half dataset), the other processes
    waiting at a barrier. Every process must call it."""
    root = os.path.join(workdir, "synthetic_images")
    if wd.is_writer() and not os.path.isdir(root):
        os.makedirs(workdir, exist_ok=True)
        tmp = tempfile.mkdtemp(dir=workdir, prefix=".synthetic_images.")
        write_shapes_folder(tmp, per_class=per_class, seed=seed)
        os.rename(tmp, root)
    wd.written("vdc: synthetic images")
    return root


def write_shapes_folder(root: str, per_class: int = 8, size: int = 48, seed: int = 0) -> None:
    """`root/<shape>/<k>.png`: one coloured shape on a noisy background per image."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    for shape in SHAPES:
        os.makedirs(os.path.join(root, shape), exist_ok=True)
        for k in range(per_class):
            bg = rng.integers(150, 256, (size, size, 3), dtype=np.uint8)
            img = Image.fromarray(bg)
            draw = ImageDraw.Draw(img)
            colour = tuple(int(c) for c in rng.integers(0, 120, 3))
            lo, hi = int(rng.integers(4, 12)), int(rng.integers(size - 12, size - 4))
            if shape == "circle":
                draw.ellipse([lo, lo, hi, hi], fill=colour)
            elif shape == "square":
                draw.rectangle([lo, lo, hi, hi], fill=colour)
            else:
                draw.polygon([(lo, hi), (hi, hi), ((lo + hi) // 2, lo)], fill=colour)
            img.save(os.path.join(root, shape, f"{k:03d}.png"))
