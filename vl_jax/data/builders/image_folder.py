"""TFDS builder ``image_folder``: any ``root/<class>/**/<image>`` folder, prepared without TensorFlow.

TFDS configs are static, so a folder gets its own config made at run time by
:func:`image_folder_builder`: name ``<folder name>_<12 hex digits>``, the digits hashing the
folder's real path and every listed file's relative path, size and mtime. The same unchanged
folder therefore maps to the same prepared copy in ``data_dir`` (prepared once), and a
changed folder to a new one -- a stale copy is never read.

Layout: class = first-level subfolder (files nested deeper belong to it; ``walk_image_folder``).
If *every* first-level subfolder is a split name (``train``, ``validation``, ``val``, ``test``),
each is a split with its own class subfolders and one shared, sorted class list; otherwise the
whole folder is the split ``train``. Files outside a class folder and files without an image
extension are listed in ``skipped.tsv`` like unreadable images.

Features: ``image`` (``uint8 [H, W, 3]`` when decoded), ``label`` (ClassLabel, names = class
folder names), ``file_name`` (path relative to the root, ``/``-separated).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re

import tensorflow_datasets as tfds

from vl_jax.data.builders._common import ArrayRecordBuilder
from vl_jax.images import walk_image_folder

__all__ = ["SPLIT_FOLDERS", "ImageFolder", "ImageFolderConfig", "image_folder_builder"]

SPLIT_FOLDERS = ("train", "validation", "val", "test")


@dataclasses.dataclass
class ImageFolderConfig(tfds.core.BuilderConfig):
    """``root``: the folder; ``splits``: split name -> subfolder ("" = the root itself)."""

    root: str = ""
    splits: tuple[tuple[str, str], ...] = ()
    class_names: tuple[str, ...] = ()


class ImageFolder(ArrayRecordBuilder):
    """A local image folder; build instances with :func:`image_folder_builder`."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self) -> tfds.core.DatasetInfo:
        cfg = self.builder_config
        return self.dataset_info_from_configs(
            description=f"Image folder {cfg.root}",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(None, None, 3)),
                    "label": tfds.features.ClassLabel(names=list(cfg.class_names)),
                    "file_name": tfds.features.Text(),
                }
            ),
            supervised_keys=("image", "label"),
            metadata=tfds.core.MetadataDict(root=cfg.root, num_skipped={}),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {
            name: self._generate_examples(name, sub) for name, sub in self.builder_config.splits
        }

    def _generate_examples(self, split: str, subfolder: str):
        """Yields ``(relative path, example)`` for every readable image of one split."""
        root = self.builder_config.root
        listing = walk_image_folder(os.path.join(root, subfolder))
        index = {n: i for i, n in enumerate(self.builder_config.class_names)}
        for path, reason in listing.ignored:
            self._skips.add(split, path, reason)
        for path, label in zip(listing.paths, listing.labels.tolist()):
            if label < 0:
                self._skips.add(split, path, "not in a class subfolder")
                continue
            data = self._skips.try_image(split, path)
            if data is not None:
                rel = os.path.relpath(path, root).replace(os.sep, "/")
                yield (
                    rel,
                    {
                        "image": data,
                        "label": index[listing.class_names[label]],
                        "file_name": rel,
                    },
                )


def image_folder_builder(root: str | os.PathLike, data_dir: str | None = None) -> ImageFolder:
    """The :class:`ImageFolder` builder for ``root`` (not yet prepared: call
    ``download_and_prepare()``, or use ``vl_jax.data.get_source("image_folder:" + root)``).

    Raises:
      FileNotFoundError / NotADirectoryError: ``root`` is missing / not a directory.
      ValueError: no image files, or no class subfolders.
    """
    root = os.path.realpath(os.fspath(root))
    subdirs = _subdirs(root) if os.path.isdir(root) else []
    split_mode = bool(subdirs) and all(d in SPLIT_FOLDERS for d in subdirs)
    splits = tuple((d, d) for d in subdirs) if split_mode else (("train", ""),)

    digest = hashlib.sha256(root.encode())
    classes = set()
    for _, sub in splits:
        listing = walk_image_folder(os.path.join(root, sub))
        classes.update(listing.class_names)
        for path in listing.paths + [p for p, _ in listing.ignored]:
            st = os.stat(path)
            rel = os.path.relpath(path, root)
            digest.update(f"\0{rel}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    if not classes:
        raise ValueError(f"{root} has no class subfolders (expected root/<class>/<image>)")

    slug = re.sub(r"[^a-z0-9]+", "_", os.path.basename(root).lower()).strip("_") or "root"
    config = ImageFolderConfig(
        name=f"{slug}_{digest.hexdigest()[:12]}",
        description=f"image folder {root}",
        root=root,
        splits=splits,
        class_names=tuple(sorted(classes)),
    )
    return ImageFolder(config=config, data_dir=data_dir)


def _subdirs(root: str) -> list[str]:
    with os.scandir(root) as it:
        return sorted(e.name for e in it if not e.name.startswith(".") and e.is_dir())
