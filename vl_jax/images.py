"""Robust image reading and image-folder walking: files -> uint8 RGB arrays.

Everything that touches image *files* lives here; resizing/normalising for a
model lives in :mod:`vl_jax.preprocess`.

* :func:`load_rgb` decodes one file (:func:`decode_rgb`: in-memory bytes) to
  ``uint8 [H, W, 3]`` with EXIF orientation applied and every PIL mode mapped to
  RGB deliberately (see :func:`pil_to_rgb`).
  Anything wrong with the *content* of a file (empty, not an image, truncated,
  decompression bomb, unsupported mode) raises :class:`ImageError`, so a data
  loader can catch exactly one exception type to skip bad files.
* :func:`walk_image_folder` lists an ``root/<class>/.../<file>`` tree
  (torchvision ``ImageFolder`` layout) deterministically.

Transparency policy: images with alpha (RGBA, LA, PA, RGBa, La, or a ``tRNS`` /
``transparency`` key) are alpha-composited onto a **white** background. This
is what ``transformers.image_transforms.convert_to_rgb`` does (``PIL.Image.
alpha_composite`` over an opaque white RGBA canvas), so features computed from
our arrays match the HF processors; dropping alpha instead would expose the
arbitrary colour stored under fully transparent pixels (often black).
"""

from __future__ import annotations

import dataclasses
import io
import os

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vl_jax.errors import NotFoundError, UserError

__all__ = [
    "IMAGE_EXTENSIONS",
    "FolderListing",
    "ImageError",
    "decode_rgb",
    "load_rgb",
    "pil_to_rgb",
    "walk_image_folder",
]

IMAGE_EXTENSIONS: frozenset[str] = frozenset(
    ".jpg .jpeg .png .bmp .gif .webp .tif .tiff .ppm .pgm .pbm .pnm .jfif".split()
)

_WHITE = (255, 255, 255, 255)
# Modes whose samples are wider than 8 bits; PIL's own convert("L"/"RGB") clips
# them to 0..255 instead of rescaling, which turns most 16-bit photos white.
_HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


class ImageError(UserError, ValueError):
    """A file could not be turned into an RGB image; ``str()`` is ``"<path>: <reason>"``."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")

    def __reduce__(self):
        # Keep it rebuildable when a worker process (multiprocessing data loader)
        # sends it back: the default reduce would call ImageError(message) and fail.
        return type(self), (self.path, self.reason)


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """Decode an image file to a ``uint8 [H, W, 3]`` RGB array (EXIF orientation applied).

    Only the first frame of animated/multi-page files is read.

    Raises:
      FileNotFoundError / IsADirectoryError: ``path`` is not an existing file.
      ImageError: empty file, not an image, truncated/corrupt data, decompression
        bomb (more than ``PIL.Image.MAX_IMAGE_PIXELS`` pixels) or an unsupported mode.
    """
    path = os.fspath(path)
    if os.path.getsize(path) == 0:  # also raises FileNotFoundError for a missing path
        raise ImageError(path, "empty file")
    return _decode(path, path)


def decode_rgb(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """:func:`load_rgb` for an encoded image held in memory (e.g. a dataset record).

    ``name`` (an id or path) only labels the :class:`ImageError` raised for bad data.
    """
    if not data:
        raise ImageError(name, "empty image data")
    return _decode(io.BytesIO(data), name)


def _decode(fp: str | io.BytesIO, name: str) -> np.ndarray:
    """Shared body of load_rgb/decode_rgb: open, check, decode, orient, convert to RGB."""
    try:
        with Image.open(fp) as img:
            _check_pixel_count(name, img)
            # Decode everything now: PIL is lazy, and a truncated file would otherwise
            # only fail (or, with LOAD_TRUNCATED_IMAGES, silently go grey) much later.
            img.load()
            img = _apply_exif_orientation(img)
    except UnidentifiedImageError as exc:
        raise ImageError(name, "not an image (cannot identify image file)") from exc
    except Image.DecompressionBombError as exc:
        raise ImageError(name, f"decompression bomb: {exc}") from exc
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as exc:  # decoders raise OSError, SyntaxError, struct.error, ...
        raise ImageError(name, f"truncated or corrupt: {type(exc).__name__}: {exc}") from exc
    try:
        return pil_to_rgb(img)
    except ValueError as exc:
        raise ImageError(name, str(exc)) from exc


def _apply_exif_orientation(img: Image.Image) -> Image.Image:
    # A damaged EXIF block says nothing about the pixels, which decoded fine: keep the
    # stored orientation rather than reject an otherwise valid photo.
    try:
        return ImageOps.exif_transpose(img)
    except Exception:
        return img.copy()  # the caller closes the original


def _check_pixel_count(path: str, img: Image.Image) -> None:
    # Image.open only *warns* between MAX_IMAGE_PIXELS and 2x that; we refuse the whole
    # range ourselves instead of turning warnings into errors, because
    # warnings.catch_warnings mutates process-global state and is unsafe in threaded loaders.
    limit = Image.MAX_IMAGE_PIXELS
    width, height = img.size
    if limit is not None and width * height > limit:
        raise ImageError(
            path, f"decompression bomb: {width}x{height} pixels exceeds MAX_IMAGE_PIXELS={limit}"
        )


def pil_to_rgb(img: Image.Image) -> np.ndarray:
    """Convert a PIL image of any mode to a ``uint8 [H, W, 3]`` RGB array.

    * RGB: as is. L, P, 1 (0/255), CMYK, YCbCr, LAB, HSV, RGBX: ``PIL.convert("RGB")``.
    * With transparency (RGBA, LA, PA, RGBa, La, P/L/RGB + ``transparency``):
      composited onto white, exactly like transformers' ``convert_to_rgb``.
    * I;16* (16-bit): ``value >> 8``. I (32-bit int): ``>> 8`` when all values fit
      in 0..65535 (Pillow decodes 16-bit PGM/TIFF to "I"), else the full int32 range
      is mapped linearly onto 0..255. F (float): ``x * 255`` if all finite values
      lie in [0, 1], else clipped to [0, 255] (PIL's convention); NaN -> 0.

    Raises:
      ValueError: the mode cannot be converted (``load_rgb`` turns it into ImageError).
    """
    if img.mode == "RGB" and "transparency" not in img.info:
        return np.asarray(img, dtype=np.uint8).copy()
    if img.mode in _HIGH_DEPTH_MODES:
        return _high_depth_to_rgb(img)
    if img.has_transparency_data:
        if img.mode == "La":  # premultiplied; PIL has no direct La -> RGBA path
            img = img.convert("LA")
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, _WHITE)
        return np.asarray(Image.alpha_composite(background, rgba).convert("RGB")).copy()
    try:
        rgb = img.convert("RGB")
    except ValueError as exc:
        raise ValueError(f"unsupported image mode {img.mode!r}: {exc}") from exc
    return np.asarray(rgb, dtype=np.uint8).copy()


def _high_depth_to_rgb(img: Image.Image) -> np.ndarray:
    """I;16*/I/F image -> ``uint8 [H, W, 3]`` by the mode's value range (see pil_to_rgb)."""
    raw = np.asarray(img)
    if img.mode == "F":
        values = np.nan_to_num(raw.astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        if values.size and values.min() >= 0.0 and values.max() <= 1.0:
            values = values * 255.0
        gray = np.rint(np.clip(values, 0.0, 255.0)).astype(np.uint8)
    else:
        wide = raw.astype(np.int64)
        fits_16_bit = wide.size == 0 or (wide.min() >= 0 and wide.max() < 65536)
        if img.mode.startswith("I;16") or fits_16_bit:
            gray = (wide >> 8).astype(np.uint8)
        else:
            gray = ((wide + 2**31) >> 24).astype(np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    transparent = img.info.get("transparency")
    if isinstance(transparent, int) and img.mode != "F":
        # 16-bit grayscale PNG tRNS: one sample value marks fully transparent pixels.
        rgb[raw == transparent] = 255
    return rgb


@dataclasses.dataclass
class FolderListing:
    """Result of :func:`walk_image_folder`.

    Attributes:
      paths: ``root``-joined image paths, sorted by their relative path components.
      labels: ``int32 [N]`` index into ``class_names``; ``-1`` for files directly in root.
      class_names: sorted names of the first-level subfolders.
      ignored: ``(path, reason)`` for non-hidden files that were not returned.
    """

    paths: list[str]
    labels: np.ndarray
    class_names: list[str]
    ignored: list[tuple[str, str]]

    def __len__(self) -> int:
        return len(self.paths)


def walk_image_folder(root: str | os.PathLike) -> FolderListing:
    """List images under ``root`` in ImageFolder layout (class = first-level subfolder).

    Files nested deeper in a class folder belong to that class; files directly in
    ``root`` get label -1. Every non-hidden first-level folder is a class, even one
    without images, so label ids stay stable across splits that share a class list.
    Entries whose name starts with '.' are skipped silently; symlinks are followed
    (directory cycles are cut). Extensions are matched case-insensitively.

    Raises:
      FileNotFoundError / NotADirectoryError: ``root`` is missing / not a directory.
      ValueError: no image file anywhere under ``root``.
    """
    root = os.fspath(root)
    if not os.path.exists(root):
        raise NotFoundError(f"image folder does not exist: {root}")
    if not os.path.isdir(root):
        raise NotADirectoryError(f"image folder is not a directory: {root}")

    class_names, root_files = [], []
    with os.scandir(root) as it:
        for entry in it:
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=True):
                class_names.append(entry.name)
            else:
                root_files.append((entry.name,))
    class_names.sort()

    found: list[tuple[tuple[str, ...], int]] = [(rel, -1) for rel in root_files]
    for label, name in enumerate(class_names):
        found += [((name, *rel), label) for rel in _walk_class(os.path.join(root, name))]
    found.sort(key=lambda item: item[0])

    paths, labels, ignored = [], [], []
    for rel, label in found:
        path = os.path.join(root, *rel)
        reason = _reject_reason(path)
        if reason is None:
            paths.append(path)
            labels.append(label)
        else:
            ignored.append((path, reason))
    if not paths:
        raise ValueError(f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {root}")
    return FolderListing(paths, np.asarray(labels, dtype=np.int32), class_names, ignored)


def _walk_class(class_dir: str) -> list[tuple[str, ...]]:
    """Relative path components of every non-hidden file below ``class_dir``."""
    out = []
    seen = {os.path.realpath(class_dir)}
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        keep = []
        for d in sorted(dirnames):
            real = os.path.realpath(os.path.join(dirpath, d))
            if not d.startswith(".") and real not in seen:  # hidden, or a symlink cycle
                seen.add(real)
                keep.append(d)
        dirnames[:] = keep
        rel_dir = os.path.relpath(dirpath, class_dir)
        prefix = () if rel_dir == os.curdir else tuple(rel_dir.split(os.sep))
        out += [(*prefix, f) for f in filenames if not f.startswith(".")]
    return out


def _reject_reason(path: str) -> str | None:
    """Why ``path`` is not listed as an image, or None if it is."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in IMAGE_EXTENSIONS:
        return f"not an image extension ({ext or 'no extension'})"
    if not os.path.isfile(path):  # broken symlink, fifo, socket, ...
        return "not a regular file (broken symlink?)"
    return None
