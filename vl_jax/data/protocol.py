"""The one interface every random-access dataset in this project implements.

    def consume(source: RandomAccessSource):
        ids, labels = source.ids(), source.labels()     # no image decoded
        example = source[0]                              # {"image", "label", "id"}

Implemented by the TFDS datasets (:class:`vl_jax.data.sources.Source`), image files listed from
a folder or a CSV (:class:`vl_jax.data.files.FileSource`), and sources that wrap another one
(``vdc_jax.corrupt.CorruptedSource``). The input pipeline (:mod:`vl_jax.data.pipeline`) reads
any of them; consumers never look at private attributes and never probe with ``getattr``.

An example is a dict:

    {"image": uint8 [H, W, 3] array | encoded bytes | a file path,
     "label": int (0..num_classes-1; -1 = no label),
     "id":    str, unique within the source}

``__getitem__`` may raise :class:`vl_jax.images.ImageError` (or ``OSError``) for an unreadable
image; the pipeline records such examples as skipped and never stops on them.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class RandomAccessSource(Protocol):
    """``len`` + ``[i]`` examples, with labels, ids and class names readable without decoding.

    Attributes:
      name: what the data is called in logs and metrics (dataset name, folder, CSV path).
      split: the split it was read from, or None for files.
      class_names: ``[C]`` human-readable names, ``labels()`` index into them.
    """

    name: str
    split: str | None
    class_names: list[str]

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, Any]: ...

    def labels(self) -> np.ndarray:
        """``int32 [N]``, ``labels()[i] == self[i]["label"]``, without decoding any image."""
        ...

    def ids(self) -> list[str]:
        """``[N]`` example ids, ``ids()[i] == self[i]["id"]``, without decoding any image."""
        ...


def check_source(source: Any) -> RandomAccessSource:
    """``source`` if it implements :class:`RandomAccessSource`, else a ``TypeError`` naming
    what is missing (a bug in the caller, not a user error)."""
    missing = [
        m
        for m in ("__len__", "__getitem__", "labels", "ids", "class_names", "name", "split")
        if not hasattr(source, m)
    ]
    if missing:
        raise TypeError(f"{type(source).__name__} is not a RandomAccessSource: lacks {missing}")
    return source
