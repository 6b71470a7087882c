"""Shared parts of our TFDS builders: validated image bytes, the skip record, array_record default.

Policy for every image a builder stores (see docs/data.md):

* It is decoded with :func:`vl_jax.images.load_rgb` at preparation time. A file that cannot
  be read (corrupt/truncated, empty, not an image, no permission, decompression bomb, vanished)
  is **skipped**: it is logged, counted in ``info.metadata["num_skipped"]`` and listed with
  its reason in ``skipped.tsv`` next to the prepared data (``<data_dir>/<name>/<config>/<ver>/``).
  Preparation never crashes on an image and never drops one silently.
* The stored bytes decode, with any plain decoder (PIL, TF, OpenCV), to exactly
  ``load_rgb(path)`` (``uint8 [H, W, 3]``): an 8-bit RGB JPEG without an EXIF rotation -- the
  bulk of ImageNet -- is stored as its original bytes (no re-compression); anything else
  (grayscale, CMYK, palette, alpha, 16-bit, EXIF-rotated, PNG/GIF/...) is re-encoded as a
  lossless RGB PNG of the ``load_rgb`` array.
"""

from __future__ import annotations

import io
import logging
import os
import sys

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from vl_jax.fileio import atomic_open
from vl_jax.images import ImageError, load_rgb

__all__ = ["SKIPPED_TSV", "ArrayRecordBuilder", "SkipRecord", "read_skipped", "stored_image_bytes"]

SKIPPED_TSV = "skipped.tsv"
_EXIF_ORIENTATION = 0x0112
log = logging.getLogger("vl_jax.data")


def stored_image_bytes(path: str) -> bytes:
    """Validated, storable encoding of the image at ``path`` (decodes to ``load_rgb(path)``).

    Raises:
      ImageError: the content is not a usable image (see ``load_rgb``).
      OSError: the file cannot be read (permissions, vanished, I/O error).
    """
    rgb = load_rgb(path)  # full decode: the only reliable validity check
    with open(path, "rb") as f:
        raw = f.read()
    with Image.open(io.BytesIO(raw)) as img:
        keep = (
            img.format == "JPEG"
            and img.mode == "RGB"
            and img.getexif().get(_EXIF_ORIENTATION, 1) == 1
            and img.size == (rgb.shape[1], rgb.shape[0])
        )
    return raw if keep else encode_png(rgb)


def encode_png(rgb: np.ndarray) -> bytes:
    """``uint8 [H, W, 3]`` -> PNG bytes (lossless)."""
    buf = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buf, format="PNG")
    return buf.getvalue()


class SkipRecord:
    """Collects ``(split, path, reason)`` of skipped files during one preparation."""

    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str]] = []

    def add(self, split: str, path: str, reason: str) -> None:
        log.warning("skipping %s (%s split): %s", path, split, reason)
        self.rows.append((split, path, reason))

    def try_image(self, split: str, path: str) -> bytes | None:
        """:func:`stored_image_bytes`, or None after recording why the file was skipped."""
        try:
            return stored_image_bytes(path)
        except ImageError as exc:
            self.add(split, path, exc.reason)
        except OSError as exc:  # PermissionError, FileNotFoundError, EIO, ...
            self.add(split, path, f"{type(exc).__name__}: {exc.strerror or exc}")
        return None

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for split, _, _ in self.rows:
            out[split] = out.get(split, 0) + 1
        return out

    def write(self, directory: str) -> str:
        """Write ``directory/skipped.tsv`` (header ``split path reason``; always written)."""
        path = os.path.join(os.fspath(directory), SKIPPED_TSV)
        with atomic_open(path, "w", encoding="utf-8") as f:
            f.write("split\tpath\treason\n")
            for row in self.rows:
                f.write("\t".join(_clean(x) for x in row) + "\n")
        if self.rows:
            log.warning("skipped %d unreadable files; listed in %s", len(self.rows), path)
        return path


def _clean(field: str) -> str:
    return str(field).replace("\t", " ").replace("\n", " ").replace("\r", " ")


def read_skipped(directory: str | os.PathLike) -> list[tuple[str, str, str]]:
    """Rows ``(split, path, reason)`` of ``directory/skipped.tsv``."""
    with open(os.path.join(os.fspath(directory), SKIPPED_TSV), encoding="utf-8") as f:
        lines = f.read().splitlines()[1:]
    return [tuple(line.split("\t", 2)) for line in lines if line]


class ArrayRecordBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """GeneratorBasedBuilder that writes array_record (readable without TensorFlow) by default
    and writes the skip record next to the prepared data.

    Subclasses call ``self._skips.try_image(split, path)`` in ``_generate_examples`` and list
    ``num_skipped`` in their ``MetadataDict``.
    """

    def __init__(self, *, file_format: str | None = None, **kwargs):
        super().__init__(file_format=file_format or "array_record", **kwargs)
        self._skips = SkipRecord()

    # TFDS prints "Downloading and preparing dataset ..." and "... downloaded and prepared"
    # (termcolor, straight to stdout) around every build: our builders read local files and
    # download nothing, so one stage line on stderr says what actually happens instead.
    def _log_download_bytes(self) -> None:
        print(
            f"preparing {self.name} from local files into {self.data_dir} (once)", file=sys.stderr
        )

    def _log_download_done(self) -> None:
        log.info("%s prepared in %s", self.name, self.data_dir)

    def _download_and_prepare(self, dl_manager, download_config, **kwargs):
        self._skips = SkipRecord()
        super()._download_and_prepare(dl_manager, download_config, **kwargs)
        # Still inside TFDS's incomplete_dir: self.data_dir is the temporary directory that is
        # renamed to the final one on success, so the TSV lands next to the array_record files.
        self._skips.write(self.data_dir)
        self.info.metadata["num_skipped"] = self._skips.counts()
