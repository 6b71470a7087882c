"""Image files as a dataset: one source for an image folder, a CSV of ``path,label``, or a list.

    src = FileSource.from_folder("/data/pets")           # root/<class>/.../<file>
    src = FileSource.from_csv("/data/pets.csv")          # rows "path,label" (optional header)
    src = FileSource(paths, labels, class_names=names)   # anything you listed yourself
    src[i] -> {"image": uint8 [H, W, 3], "label": int32, "id": str}

It implements :class:`vl_jax.data.protocol.RandomAccessSource`, so the input pipeline,
``vl_jax.encode``, MCLA and VDC read it like a TFDS dataset.

Bad images: a file that is missing, empty, truncated or not an image raises
:class:`vl_jax.images.ImageError` from ``__getitem__`` (its message names the file and, for a
CSV, the line that listed it). The pipeline records it as skipped (``skipped.tsv``) and goes
on; nothing is dropped silently. A *listing* that cannot be read at all (no such folder, a CSV
row with three fields, an unknown label, a path listed twice) is a :class:`DataError` before
anything runs.

Ids: for a folder, the path relative to the folder; for a CSV, the path as written in it; for
a plain list, the path as given.
"""

from __future__ import annotations

import csv
import logging
import operator
import os
from collections.abc import Sequence

import numpy as np

from vl_jax.errors import NotFoundError, UserError
from vl_jax.images import ImageError, load_rgb, walk_image_folder

log = logging.getLogger(__name__)


class DataError(UserError, ValueError):
    """A dataset listing that cannot be read; the message names the file (and line)."""


class FileSource:
    """Samples that are image files (see the module docstring).

    Args:
      paths: ``[N]`` image paths.
      labels: ``[N]`` class indices (-1 = unlabelled); default all -1.
      ids: ``[N]`` unique ids; default the paths.
      class_names: ``[C]`` names the labels index into.
      name: what the data is called in logs and metrics.
      where: ``[N]`` where each file was listed (``"data.csv, line 7"``), for error messages.
    """

    split = None

    def __init__(
        self,
        paths: Sequence[str | os.PathLike],
        labels: Sequence[int] | np.ndarray | None = None,
        *,
        ids: Sequence[str] | None = None,
        class_names: Sequence[str] = (),
        name: str = "files",
        where: Sequence[str] | None = None,
    ):
        self.paths = [os.fspath(p) for p in paths]
        n = len(self.paths)
        self._labels = np.full(n, -1, np.int32) if labels is None else np.asarray(labels, np.int32)
        self._ids = list(self.paths) if ids is None else [str(i) for i in ids]
        self.where = None if where is None else list(where)
        self.class_names = [str(c) for c in class_names]
        self.name = name
        if len(self._labels) != n or len(self._ids) != n:
            raise ValueError(f"{n} paths but {len(self._labels)} labels and {len(self._ids)} ids")

    @classmethod
    def from_folder(cls, root: str | os.PathLike, *, labelled_only: bool = False) -> FileSource:
        """``root/<class>/.../<file>`` (sorted class folders = label indices; files directly in
        ``root`` get label -1, or are left out with ``labelled_only``)."""
        root = os.path.abspath(os.fspath(root))
        try:
            listing = walk_image_folder(root)
        except UserError:
            raise
        except (OSError, ValueError) as e:
            raise DataError(str(e)) from e
        for path, reason in listing.ignored:
            log.warning("%s: skipped (%s)", path, reason)
        keep = np.ones(len(listing.paths), bool)
        if labelled_only:
            keep = listing.labels >= 0
            if not keep.all():
                log.warning("%s: %d files directly in the folder have no class; left out", root,
                            int((~keep).sum()))  # fmt: skip
        paths = [p for p, k in zip(listing.paths, keep) if k]
        if not paths:
            raise DataError(f"{root}: no images in class subfolders")
        return cls(
            paths, listing.labels[keep], ids=[os.path.relpath(p, root) for p in paths],
            class_names=listing.class_names, name=root,
        )  # fmt: skip

    @classmethod
    def from_csv(cls, path: str | os.PathLike, class_names: Sequence[str] | None = None):
        """Rows ``path,label`` (optional header ``path,label``); paths relative to the CSV's
        folder; labels are class names, or indices into ``class_names`` when given (default
        names: the sorted distinct labels)."""
        path = os.path.abspath(os.fspath(path))
        if not os.path.isfile(path):
            raise NotFoundError(f"CSV file not found: {path}")
        rows = _read_rows(path)
        names = list(class_names) if class_names else sorted({r[2] for r in rows})
        index = {n: i for i, n in enumerate(names)}
        labels, paths, where = [], [], []
        base = os.path.dirname(path)
        for line_no, rel, label in rows:
            at = f"{path}, line {line_no}"
            if label in index:
                labels.append(index[label])
            elif class_names and label.isdigit() and int(label) < len(names):
                labels.append(int(label))
            else:
                raise DataError(f"{at}: unknown label {label!r} (classes: {names})")
            paths.append(os.path.normpath(os.path.join(base, rel)))
            where.append(at)
        ids = [r[1] for r in rows]
        if len(set(ids)) != len(ids):
            dup = next(i for i in ids if ids.count(i) > 1)
            raise DataError(f"{path}: path {dup!r} is listed twice")
        return cls(paths, labels, ids=ids, class_names=names, name=path, where=where)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i) -> dict:
        i = operator.index(i)
        try:
            image = load_rgb(self.paths[i])
        except ImageError as e:
            raise ImageError(self.paths[i], self._listed(i, e.reason)) from e
        except OSError as e:  # missing or unreadable file
            raise ImageError(self.paths[i], self._listed(i, f"{type(e).__name__}: {e}")) from e
        return {"image": image, "label": self._labels[i], "id": self._ids[i]}

    def _listed(self, i: int, reason: str) -> str:
        return reason if self.where is None else f"{reason} (listed at {self.where[i]})"

    def labels(self) -> np.ndarray:
        return self._labels.copy()

    def ids(self) -> list[str]:
        return list(self._ids)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __repr__(self) -> str:
        return f"FileSource({self.name!r}, len={len(self)}, classes={self.num_classes})"


def _read_rows(path: str) -> list[tuple[int, str, str]]:
    """``(line, relative path, label text)`` of a ``path,label`` CSV; DataError names a bad
    line."""
    rows = []
    with open(path, newline="", encoding="utf-8-sig") as f:
        for line_no, row in enumerate(csv.reader(f), start=1):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != 2:
                raise DataError(f"{path}, line {line_no}: expected 2 fields path,label, got "
                                f"{len(row)}: {row!r}")  # fmt: skip
            rel, label = row[0].strip(), row[1].strip()
            if not rows and line_no == 1 and label.lower() in ("label", "class"):
                continue  # header
            if not rel or not label:
                raise DataError(f"{path}, line {line_no}: empty path or label: {row!r}")
            rows.append((line_no, rel, label))
    if not rows:
        raise DataError(f"{path}: no rows")
    return rows
