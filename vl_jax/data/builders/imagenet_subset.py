"""TFDS builder ``imagenet_subset``: class subsets of a local ILSVRC-2012 copy, no TensorFlow needed.

Configs: ``imagenet_dogs`` (15), ``imagenet10`` (10), ``imagenet_dog10`` (10, plus the seeded
VDC ``train_800`` split), ``imagenet100`` (CMC's 100). Class lists: :mod:`vl_jax.data.wordnet_ids`.

The manual directory (``--manual_dir`` / ``download_config.manual_dir``, default
``<data_dir>/downloads/manual``) holds an ILSVRC-2012 tree, either the plain layout or the
Kaggle one (``ILSVRC/Data/CLS-LOC/{train,val}`` + ``LOC_val_solution.csv``)::

    train/<wnid>/*.JPEG                       required for every class of the config
    val/<wnid>/*.JPEG                         validation in class folders, or
    val/ILSVRC2012_val_00000001.JPEG ...      flat validation + one label file (VAL_LABEL_FILES)

Splits: ``train`` (all train images of the classes), ``validation`` (the 50 val images per
class; only if ``val/`` exists) and, for ``imagenet_dog10``, ``train_800``.
Features per example: ``image`` (``uint8 [H, W, 3]`` when decoded), ``label`` (ClassLabel,
names = WNIDs in sorted order), ``wnid`` and ``file_name`` (text); human-readable class names
are ``info.metadata["class_names"]``.
"""

from __future__ import annotations

import csv
import dataclasses
import os

import numpy as np
import tensorflow_datasets as tfds

from vl_jax.data import wordnet_ids
from vl_jax.data.builders._common import ArrayRecordBuilder, log, stored_image_bytes
from vl_jax.data.wnid_names import ILSVRC2012_WNIDS
from vl_jax.errors import NotFoundError
from vl_jax.images import ImageError

__all__ = ["VAL_LABEL_FILES", "ImagenetSubset", "ImagenetSubsetConfig", "per_class_order"]

# Label files accepted for a flat val/ folder, searched in this order in the manual dir, the
# ILSVRC root and val/ itself:
#   val_labels.txt: "<file name> <wnid>" per line (extension optional; '#' starts a comment);
#   LOC_val_solution.csv: Kaggle release, "ImageId,PredictionString", the first token of
#     PredictionString is the WNID;
#   ILSVRC2012_validation_ground_truth.txt: devkit, line i = ILSVRC2012_ID (1..1000) of
#     ILSVRC2012_val_<i:08d>, mapped to WNIDs with the devkit order in wnid_names.py.
VAL_LABEL_FILES = (
    "val_labels.txt",
    "LOC_val_solution.csv",
    "ILSVRC2012_validation_ground_truth.txt",
)
_KAGGLE_ROOT = os.path.join("ILSVRC", "Data", "CLS-LOC")
_HOW = (
    " Pass the ILSVRC-2012 folder that contains train/ (and val/) as manual_dir"
    " (get_source(..., manual_dir=...) or DownloadConfig(manual_dir=...)); see docs/data.md."
)
_MANUAL_INSTRUCTIONS = __doc__[__doc__.index("The manual directory") :]


@dataclasses.dataclass
class ImagenetSubsetConfig(tfds.core.BuilderConfig):
    """A class subset. ``train_per_class``: size of the extra seeded ``train_<n>`` split."""

    wnids: tuple[str, ...] = ()
    train_per_class: int | None = None
    sample_seed: int = 0


_CONFIGS = [
    ImagenetSubsetConfig(
        name="imagenet_dogs",
        description="ImageNet-Dogs: 15 dog breeds (DAC 2017); train 15 x 1,300, validation 750.",
        wnids=wordnet_ids.IMAGENET_DOGS,
    ),
    ImagenetSubsetConfig(
        name="imagenet10",
        description="ImageNet-10 (DAC 2017): 10 classes; train 13,000, validation 500.",
        wnids=wordnet_ids.IMAGENET10,
    ),
    ImagenetSubsetConfig(
        name="imagenet_dog10",
        description=(
            "VDC's ImageNet-Dog stand-in: its 10 breeds are unpublished, so these are the first "
            "10 ImageNet-Dogs breeds in ImageNet label order. Split train_800 = 800 train "
            "images per class drawn with seed 0 (VDC's sampling), 8,000 in all."
        ),
        wnids=wordnet_ids.IMAGENET_DOG10,
        train_per_class=800,
    ),
    ImagenetSubsetConfig(
        name="imagenet100",
        description="ImageNet-100, CMC's class list (HobbitLong/CMC imagenet100.txt).",
        wnids=wordnet_ids.IMAGENET100,
    ),
]


def per_class_order(n: int, label: int, seed: int) -> np.ndarray:
    """Seeded permutation of ``range(n)`` for the class with index ``label``: ``int64 [n]``.

    Seeded by ``(seed, label)`` so a class's sample does not depend on the other classes.
    The ``train_<k>`` split takes, for each class, the files (sorted by name) in this order
    until ``k`` usable ones are found -- so a bad file is replaced by the next one.
    """
    return np.random.default_rng([seed, label]).permutation(n)


class ImagenetSubset(ArrayRecordBuilder):
    """Class subsets of ILSVRC-2012 read from a local copy (``manual_dir``)."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = _CONFIGS
    MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL_INSTRUCTIONS

    def _info(self) -> tfds.core.DatasetInfo:
        wnids = list(self.builder_config.wnids)
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "label": tfds.features.ClassLabel(names=wnids),
                    "wnid": tfds.features.Text(),
                    "file_name": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            metadata=tfds.core.MetadataDict(
                wnids=wnids, class_names=wordnet_ids.class_names(wnids), num_skipped={}
            ),
        )

    def _split_generators(self, dl_manager):
        try:
            manual_dir = os.fspath(dl_manager.manual_dir)
        except AssertionError as exc:  # TFDS asserts that the manual dir exists and is not empty
            raise NotFoundError(str(exc).split(" Create it")[0] + _HOW) from None
        root = _ilsvrc_root(manual_dir)
        cfg = self.builder_config
        train = _train_files(root, cfg.wnids)
        splits = {"train": self._generate_examples(train, "train")}
        if cfg.train_per_class:
            name = f"train_{cfg.train_per_class}"
            splits[name] = self._generate_examples(train, name, cfg.train_per_class)
        val_dir = os.path.join(root, "val")
        if os.path.isdir(val_dir):
            val = _val_files(root, manual_dir, cfg.wnids, self._skips)
            splits["validation"] = self._generate_examples(val, "validation")
        else:
            log.warning("no %s: preparing without a validation split", val_dir)
        return splits

    def _generate_examples(self, files: list[tuple[str, int]], split: str, per_class=None):
        """Yields ``(file_name, example)``; ``files`` are ``(path, label)`` sorted by path."""
        wnids = self.builder_config.wnids
        if per_class is not None:
            files = self._sample(files, split, per_class)
        for path, label in files:
            data = self._skips.try_image(split, path)
            if data is None:
                continue
            name = os.path.basename(path)
            yield name, {"image": data, "label": label, "wnid": wnids[label], "file_name": name}

    def _sample(self, files, split, per_class):
        """Per class, the first ``per_class`` usable files in :func:`per_class_order`."""
        seed = self.builder_config.sample_seed
        out = []
        for label in range(len(self.builder_config.wnids)):
            paths = [p for p, y in files if y == label]
            chosen = []
            for i in per_class_order(len(paths), label, seed):
                if len(chosen) == per_class:
                    break
                # Validated again when yielded; a failure here is recorded there, not twice.
                if _probe(paths[i]):
                    chosen.append(paths[i])
            if len(chosen) < per_class:
                log.warning(
                    "%s: class %s has only %d usable images (< %d)",
                    split, self.builder_config.wnids[label], len(chosen), per_class,
                )  # fmt: skip
            out += [(p, label) for p in sorted(chosen)]
        return out


def _probe(path: str) -> bool:
    try:
        stored_image_bytes(path)
        return True
    except (ImageError, OSError):
        return False


def _ilsvrc_root(manual_dir: str) -> str:
    """The directory that holds ``train/`` (plain or Kaggle layout)."""
    for root in (manual_dir, os.path.join(manual_dir, _KAGGLE_ROOT)):
        if os.path.isdir(os.path.join(root, "train")):
            return root
    raise NotFoundError(
        f"no ILSVRC-2012 train/ folder in the manual directory {manual_dir!r}: expected "
        f"{os.path.join(manual_dir, 'train', '<wnid>', '*.JPEG')} (or the Kaggle layout "
        f"{os.path.join(manual_dir, _KAGGLE_ROOT, 'train', '<wnid>')})." + _HOW
    )


def _list_images(directory: str) -> list[str]:
    """Sorted non-hidden files of ``directory`` (non-image extensions are kept: they get
    skipped with a reason rather than ignored silently)."""
    with os.scandir(directory) as it:
        return sorted(e.path for e in it if not e.name.startswith(".") and not e.is_dir())


def _train_files(root: str, wnids: tuple[str, ...]) -> list[tuple[str, int]]:
    missing = [w for w in wnids if not os.path.isdir(os.path.join(root, "train", w))]
    if missing:
        raise NotFoundError(
            f"{len(missing)} of the {len(wnids)} class folders are missing under "
            f"{os.path.join(root, 'train')}: {', '.join(missing[:10])}"
            f"{' ...' if len(missing) > 10 else ''} (expected train/<wnid>/*.JPEG)"
        )
    out = []
    for label, w in enumerate(wnids):
        out += [(p, label) for p in _list_images(os.path.join(root, "train", w))]
    return out


def _val_files(root: str, manual_dir: str, wnids, skips) -> list[tuple[str, int]]:
    """``(path, label)`` of the validation images of ``wnids``, class-folder or flat layout."""
    val_dir = os.path.join(root, "val")
    present = [w for w in wnids if os.path.isdir(os.path.join(val_dir, w))]
    if present:
        missing = sorted(set(wnids) - set(present))
        if missing:
            raise NotFoundError(
                f"{val_dir} has class folders but not {', '.join(missing[:10])} "
                "(expected val/<wnid>/*.JPEG for every class, or a flat val/)"
            )
        out = []
        for label, w in enumerate(wnids):
            out += [(p, label) for p in _list_images(os.path.join(val_dir, w))]
        return out

    labels_file, stem_to_wnid = _read_val_labels([manual_dir, root, val_dir])
    index = {w: i for i, w in enumerate(wnids)}
    by_stem = {os.path.splitext(os.path.basename(p))[0]: p for p in _list_images(val_dir)}
    out = []
    for stem, wnid in sorted(stem_to_wnid.items()):
        if wnid not in index:
            continue
        if stem not in by_stem:
            skips.add(
                "validation", os.path.join(val_dir, stem), f"listed in {labels_file}, no such file"
            )
            continue
        out.append((by_stem[stem], index[wnid]))
    return sorted(out)


def _read_val_labels(dirs: list[str]) -> tuple[str, dict[str, str]]:
    """First accepted label file found in ``dirs`` -> ``(path, {file stem: wnid})``."""
    for name in VAL_LABEL_FILES:
        for d in dirs:
            path = os.path.join(d, name)
            if os.path.isfile(path):
                return path, _PARSERS[name](path)
    raise NotFoundError(
        f"{os.path.join(dirs[-1])} is a flat folder (no val/<wnid>/ class folders), so a label "
        f"file is needed: one of {', '.join(VAL_LABEL_FILES)} in {' or '.join(dict.fromkeys(dirs))}"
        " (formats in docs/data.md)"
    )


def _parse_val_labels_txt(path: str) -> dict[str, str]:
    out = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            fields = line.split("#", 1)[0].split()
            if not fields:
                continue
            if len(fields) != 2 or not _is_wnid(fields[1]):
                raise ValueError(f"{path}:{n}: expected '<file name> <wnid>', got {line!r}")
            out[os.path.splitext(os.path.basename(fields[0]))[0]] = fields[1]
    return out


def _parse_loc_solution(path: str) -> dict[str, str]:
    out = {}
    with open(path, newline="", encoding="utf-8") as f:
        for n, row in enumerate(csv.DictReader(f), 2):
            try:
                wnid = row["PredictionString"].split()[0]
                out[os.path.splitext(row["ImageId"])[0]] = wnid
            except (KeyError, IndexError, AttributeError):
                raise ValueError(
                    f"{path}:{n}: expected columns ImageId,PredictionString ('<wnid> x y x y ...')"
                ) from None
    return out


def _parse_devkit_ground_truth(path: str) -> dict[str, str]:
    out = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                ilsvrc_id = int(line)
                if not 1 <= ilsvrc_id <= 1000:
                    raise ValueError(f"{path}:{n}: ILSVRC2012_ID {ilsvrc_id} not in 1..1000")
                out[f"ILSVRC2012_val_{n:08d}"] = ILSVRC2012_WNIDS[ilsvrc_id - 1]
    return out


def _is_wnid(s: str) -> bool:
    return len(s) == 9 and s[0] == "n" and s[1:].isdigit()


_PARSERS = {
    "val_labels.txt": _parse_val_labels_txt,
    "LOC_val_solution.csv": _parse_loc_solution,
    "ILSVRC2012_validation_ground_truth.txt": _parse_devkit_ground_truth,
}
