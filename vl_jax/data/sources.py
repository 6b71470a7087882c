"""One resolver from dataset names to random-access sources with one example schema.

``get_source(name, split)`` returns a :class:`Source`: ``len(source)`` and ``source[i]`` ->

    {"image": np.ndarray uint8 [H, W, 3],   # decoded, RGB, EXIF-oriented (vl_jax.images rules)
     "label": np.int32 scalar,              # 0..num_classes-1; -1 only for STL-10 "unlabelled"
     "id":    str}                          # unique within the dataset (file name, TFDS id, ...)

plus ``source.class_names`` (human-readable, ``len == num_classes``), ``source.num_classes``,
``source.labels()`` (``int32 [N]`` without decoding images), ``source.name``, ``source.split``.
Images are stored encoded and decoded in ``__getitem__`` (so grain worker processes decode
in parallel); sources are plain picklable objects. ``split`` is any TFDS split string
(``"train"``, ``"validation"``, ``"train[:10%]"``...).

Names (``known_names()``): ``imagenet_subset/<config>`` with aliases ``imagenet_dogs``,
``imagenet10``, ``imagenet_dog10``, ``imagenet100``; ``easy_vqa_shapes`` / ``easy_vqa_colors``
(same images, label = shape / colour); ``image_folder:<path>``; ``hf:<path>`` (a local Hugging
Face dataset, :mod:`vl_jax.data.hf`); and adapters over TFDS
datasets that must already be prepared (array_record) in ``data_dir`` -- nothing is ever
downloaded: ``cifar10``, ``cifar100_20`` (coarse labels), ``stl10``, ``stanford_dogs15``.
"""

from __future__ import annotations

import dataclasses
import operator
import os
from collections.abc import Sequence

import numpy as np
import tensorflow_datasets as tfds

from vl_jax.data import wordnet_ids
from vl_jax.data.builders import image_folder_builder
from vl_jax.data.builders.imagenet_subset import ImagenetSubset
from vl_jax.data.hf import HF_PREFIX, HFSource, HFSpec, hf_source
from vl_jax.errors import NotFoundError
from vl_jax.images import decode_rgb

__all__ = ["DatasetNotPreparedError", "Source", "get_source", "known_names"]

_IMAGENET_CONFIGS = tuple(c.name for c in ImagenetSubset.BUILDER_CONFIGS)
ALIASES = {c: f"imagenet_subset/{c}" for c in _IMAGENET_CONFIGS}
IMAGE_FOLDER_PREFIX = "image_folder:"


class DatasetNotPreparedError(NotFoundError):
    """A dataset that this code never downloads is not prepared in ``data_dir``."""


@dataclasses.dataclass(frozen=True)
class _Spec:
    """How a TFDS record maps onto the common schema.

    ``label_map``: old label -> new label (-1 = drop the record); ``id_key`` None: the id is
    ``"<split>/<index>"``; ``id_split_prefix``: prefix the ``id_key`` value with the split.
    """

    tfds_name: str
    label_key: str = "label"
    id_key: str | None = None
    id_split_prefix: bool = False
    local: bool = False  # our builder (prepared on demand) vs a registered remote dataset


_SPECS = {
    **{ALIASES[c]: _Spec(ALIASES[c], id_key="file_name", local=True) for c in _IMAGENET_CONFIGS},
    "easy_vqa_shapes": _Spec("easy_vqa_shapes", "shape", "image_id", True, local=True),
    "easy_vqa_colors": _Spec("easy_vqa_shapes", "color", "image_id", True, local=True),
    "cifar10": _Spec("cifar10", id_key="id"),
    "cifar100_20": _Spec("cifar100", label_key="coarse_label", id_key="id"),
    "stl10": _Spec("stl10"),
    "stanford_dogs15": _Spec("stanford_dogs", id_key="image/filename"),
}


def known_names() -> list[str]:
    """Every name :func:`get_source` accepts (``image_folder:<path>`` for any path)."""
    return sorted(_SPECS) + sorted(ALIASES) + [IMAGE_FOLDER_PREFIX + "<path>", HF_PREFIX + "<path>"]


class Source:
    """A prepared TFDS dataset as a :class:`~vl_jax.data.protocol.RandomAccessSource`:
    examples ``{"image": uint8 [H, W, 3], "label": int32, "id": str}``."""

    def __init__(self, name, split, records, spec, class_names, label_map=None):
        self.name = name
        self.split = split
        self.class_names = list(class_names)
        self._records = records  # TFDS data source, images left encoded (SkipDecoding)
        self._spec = spec
        self._label_map = None if label_map is None else np.asarray(label_map, np.int32)
        self._index = None
        if self._label_map is not None:  # a filtered dataset: keep records whose label maps
            raw = np.asarray([r[spec.label_key] for r in records], np.int64)
            self._index = np.flatnonzero(self._label_map[raw] >= 0)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self._records) if self._index is None else len(self._index)

    def __getitem__(self, i) -> dict:
        j = self._record_index(i)
        record = self._records[j]
        example_id = self._id(record, j)
        return {
            "image": decode_rgb(record["image"], example_id),
            "label": self._label(record),
            "id": example_id,
        }

    def labels(self) -> np.ndarray:
        """``int32 [N]``, ``labels()[i] == self[i]["label"]``, without decoding any image."""
        rows = range(len(self)) if self._index is None else self._index
        return np.asarray([self._label(self._records[int(j)]) for j in rows], np.int32)

    def ids(self) -> list[str]:
        """``[N]``, ``ids()[i] == self[i]["id"]``, without decoding any image."""
        rows = range(len(self)) if self._index is None else self._index
        return [self._id(self._records[int(j)], int(j)) for j in rows]

    def __repr__(self) -> str:
        return f"Source({self.name!r}, split={self.split!r}, len={len(self)}, classes={self.num_classes})"

    def _record_index(self, i) -> int:
        i = operator.index(i)
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {self!r}")
        i %= n
        return i if self._index is None else int(self._index[i])

    def _label(self, record) -> np.int32:
        label = int(record[self._spec.label_key])
        if self._label_map is not None and label >= 0:
            label = int(self._label_map[label])
        return np.int32(label)

    def _id(self, record, j: int) -> str:
        if self._spec.id_key is None:
            return f"{self.split}/{j}"
        value = record[self._spec.id_key]
        value = value.decode("utf-8") if isinstance(value, bytes) else str(value)
        return f"{self.split}/{value}" if self._spec.id_split_prefix else value


def get_source(
    name: str,
    split: str,
    data_dir: str | os.PathLike | None = None,
    manual_dir: str | os.PathLike | None = None,
    prepare: bool = True,
) -> Source | HFSource:
    """Resolve ``name`` to a :class:`Source` for ``split``.

    Args:
      name: one of :func:`known_names`, ``"image_folder:<path>"`` or ``"hf:<path>[?image=..&label=..
        &id=..]"`` (a local HF dataset; :mod:`vl_jax.data.hf`, which documents its errors).
      split: a TFDS split string of that dataset.
      data_dir: TFDS data dir (default: TFDS's, ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
      manual_dir: ILSVRC-2012 folder for ``imagenet_*`` (default ``<data_dir>/downloads/manual``).
      prepare: prepare our own datasets (imagenet subsets from ``manual_dir``, easy-VQA, image
        folders) when they are not prepared yet. Registered TFDS datasets are never prepared.

    Raises:
      ValueError: unknown name (the message lists the known ones) or unknown split.
      DatasetNotPreparedError: not prepared and ``prepare=False``, or a registered TFDS dataset
        that is not prepared as array_record in ``data_dir`` (the message says how to).
      FileNotFoundError: ILSVRC files missing from ``manual_dir`` (the message names them).
    """
    data_dir = None if data_dir is None else os.fspath(data_dir)
    if name.startswith(HF_PREFIX):  # a local HF dataset; its Arrow cache (if any) in data_dir
        s = HFSpec.parse(name)
        cache = None if data_dir is None else os.path.join(data_dir, "hf_cache")
        return hf_source(s.path, split, image_column=s.image_column,
                         label_column=s.label_column, id_column=s.id_column, cache_dir=cache)  # fmt: skip
    if name.startswith(IMAGE_FOLDER_PREFIX):
        builder = image_folder_builder(name[len(IMAGE_FOLDER_PREFIX) :], data_dir=data_dir)
        _ensure_prepared(builder, name, prepare, manual_dir)
        spec = _Spec("image_folder", id_key="file_name", local=True)
        return _open(builder, name, split, spec, builder.info.features["label"].names)

    key = ALIASES.get(name, name)
    if key not in _SPECS:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(known_names())}")
    spec = _SPECS[key]
    builder = tfds.builder(spec.tfds_name, data_dir=data_dir)
    if spec.local:
        _ensure_prepared(builder, name, prepare, manual_dir)
    else:
        _check_registered(builder, name)

    label_map = None
    if key.startswith("imagenet_subset/"):
        names = builder.info.metadata.get("class_names") or wordnet_ids.class_names(
            builder.info.features["label"].names
        )
    elif key == "stanford_dogs15":
        names, label_map = _stanford_dogs15_map(builder.info.features["label"].names)
    else:
        names = [n.replace("_", " ") for n in builder.info.features[spec.label_key].names]
    return _open(builder, name, split, spec, names, label_map)


def _open(builder, name, split, spec, class_names, label_map=None) -> Source:
    available = list(builder.info.splits)
    base = split.split("[", 1)[0].split("+", 1)[0]
    if base not in available:
        hint = ""
        if base == "validation" and name.removeprefix("imagenet_subset/") in _IMAGENET_CONFIGS:
            hint = " (it is only prepared when the manual dir has a val/ folder; see docs/data.md)"
        raise ValueError(f"{name} has no split {split!r}; prepared splits: {available}{hint}")
    records = builder.as_data_source(split=split, decoders={"image": tfds.decode.SkipDecoding()})
    return Source(name, split, records, spec, class_names, label_map)


def _ensure_prepared(builder, name, prepare, manual_dir) -> None:
    if builder.is_prepared():
        return
    if not prepare:
        raise DatasetNotPreparedError(
            f"{name} is not prepared in {builder.data_dir}; call get_source(..., prepare=True)"
        )
    config = tfds.download.DownloadConfig(
        manual_dir=None if manual_dir is None else os.fspath(manual_dir), try_download_gcs=False
    )
    builder.download_and_prepare(download_config=config)


def _check_registered(builder, name: str) -> None:
    """Registered TFDS datasets are read as prepared; we never download them."""
    tfds_name = builder.name
    how = (
        f'prepare it on a machine with network access: python -c "import tensorflow_datasets as '
        f"tfds; tfds.builder('{tfds_name}', data_dir='DIR', file_format='array_record')"
        f'.download_and_prepare()" and copy DIR/{tfds_name} into {builder.data_dir_root}'
    )
    if not builder.is_prepared():
        raise DatasetNotPreparedError(
            f"{name}: TFDS dataset {tfds_name!r} is not prepared in {builder.data_dir_root} "
            f"and is never downloaded here; {how}"
        )
    fmt = builder.info.file_format
    if fmt is not None and fmt != tfds.core.file_adapters.FileFormat.ARRAY_RECORD:
        raise DatasetNotPreparedError(
            f"{name}: {builder.data_dir} holds {fmt.value} files, but random access needs "
            f"array_record; convert with `tfds convert_format --dataset_dir {builder.data_dir} "
            f"--out_file_format array_record`, or {how}"
        )


def _stanford_dogs15_map(label_names: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Stanford Dogs labels (``"<wnid>-<breed>"``) -> index in IMAGENET_DOGS, else -1."""
    dogs = {w: i for i, w in enumerate(wordnet_ids.IMAGENET_DOGS)}
    label_map = np.asarray([dogs.get(n.split("-", 1)[0], -1) for n in label_names], np.int32)
    found = sorted(set(label_map.tolist()) - {-1})
    if len(found) != len(dogs):
        missing = [w for w, i in dogs.items() if i not in found]
        raise ValueError(f"stanford_dogs label names lack the ImageNet-Dogs WNIDs {missing}")
    return wordnet_ids.class_names(wordnet_ids.IMAGENET_DOGS), label_map
