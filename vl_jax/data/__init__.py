"""Datasets: TFDS builders that need no TensorFlow, and one resolver to random-access sources.

``get_source(name, split)`` returns ``len()``-able, indexable sources of examples
``{"image": uint8 [H, W, 3], "label": int32, "id": str}`` (see :mod:`vl_jax.data.sources`
and docs/data.md).
"""

from vl_jax.data.sources import DatasetNotPreparedError, Source, get_source, known_names

__all__ = ["DatasetNotPreparedError", "Source", "get_source", "known_names"]
