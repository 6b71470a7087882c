"""Tests for vl_jax.images: decoding odd image files to RGB and walking image folders."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

from vl_jax.images import (
    IMAGE_EXTENSIONS,
    FolderListing,
    ImageError,
    load_rgb,
    pil_to_rgb,
    walk_image_folder,
)


def _save(img: Image.Image, path, **kwargs) -> str:
    img.save(path, **kwargs)
    return str(path)


def _gradient(h: int = 24, w: int = 32) -> np.ndarray:
    """uint8 [h, w, 3] with distinct channels, so channel mix-ups show."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), (x + y) % 256], -1).astype(np.uint8)


# --- modes -----------------------------------------------------------------------------


def test_rgb_roundtrip_png(tmp_path):
    rgb = _gradient()
    out = load_rgb(_save(Image.fromarray(rgb), tmp_path / "a.png"))
    assert out.dtype == np.uint8 and out.shape == (24, 32, 3)
    np.testing.assert_array_equal(out, rgb)


def test_grayscale_l(tmp_path):
    gray = _gradient()[..., 0]
    out = load_rgb(_save(Image.fromarray(gray, "L"), tmp_path / "g.png"))
    np.testing.assert_array_equal(out, np.repeat(gray[..., None], 3, -1))


def test_la_composited_on_white(tmp_path):
    la = np.zeros((2, 3, 2), np.uint8)
    la[..., 0] = 100
    la[0, :, 1] = [0, 255, 128]  # transparent, opaque, half
    la[1, :, 1] = 255
    out = load_rgb(_save(Image.fromarray(la, "LA"), tmp_path / "la.png"))
    assert out.shape == (2, 3, 3)
    np.testing.assert_array_equal(out[0, 0], [255, 255, 255])
    np.testing.assert_array_equal(out[0, 1], [100, 100, 100])
    assert abs(int(out[0, 2, 0]) - round(100 * 128 / 255 + 255 * 127 / 255)) <= 1
    np.testing.assert_array_equal(out[1], 100)


def test_palette_with_and_without_transparency(tmp_path):
    idx = np.array([[0, 1], [2, 1]], np.uint8)
    pal = Image.fromarray(idx, "P")
    pal.putpalette([10, 20, 30, 200, 0, 0, 0, 0, 250] + [0] * (3 * 253))
    plain = load_rgb(_save(pal, tmp_path / "p.png"))
    np.testing.assert_array_equal(plain[0, 0], [10, 20, 30])
    np.testing.assert_array_equal(plain[1, 0], [0, 0, 250])
    transparent = load_rgb(_save(pal, tmp_path / "pt.png", transparency=1))
    np.testing.assert_array_equal(transparent[0, 1], [255, 255, 255])  # index 1 -> white
    np.testing.assert_array_equal(transparent[0, 0], [10, 20, 30])
    gif = load_rgb(_save(pal, tmp_path / "pt.gif", transparency=1))
    np.testing.assert_array_equal(gif[1, 1], [255, 255, 255])


def test_rgba_matches_transformers_convert_to_rgb(tmp_path):
    from transformers.image_transforms import convert_to_rgb

    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (9, 7, 4), dtype=np.uint8)
    rgba[0, 0, 3], rgba[0, 1, 3] = 0, 255
    path = _save(Image.fromarray(rgba, "RGBA"), tmp_path / "rgba.png")
    out = load_rgb(path)
    with Image.open(path) as img:
        expected = convert_to_rgb(img, return_numpy=True)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(out[0, 0], [255, 255, 255])
    np.testing.assert_array_equal(out[0, 1], rgba[0, 1, :3])


def test_cmyk_jpeg(tmp_path):
    cmyk = np.zeros((16, 16, 4), np.uint8)
    cmyk[:, 8:, 0] = 255  # right half: full cyan -> (0, 255, 255)
    out = load_rgb(_save(Image.fromarray(cmyk, "CMYK"), tmp_path / "c.jpg", quality=95))
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
    np.testing.assert_allclose(out[4, 2], [255, 255, 255], atol=8)
    np.testing.assert_allclose(out[4, 13], [0, 255, 255], atol=8)


def test_16bit_png_scaled_not_clipped(tmp_path):
    values = np.array([[0, 255, 256, 1000], [4095, 32768, 65280, 65535]], np.uint16)
    path = _save(Image.fromarray(values), tmp_path / "i16.png")
    with Image.open(path) as img:
        assert img.mode.startswith("I")  # I;16 in current Pillow
    out = load_rgb(path)
    expected = (values >> 8).astype(np.uint8)
    np.testing.assert_array_equal(out[..., 0], expected)
    np.testing.assert_array_equal(out[..., 1], out[..., 2])
    assert out[0, 3, 0] == 3  # 1000 >> 8; PIL's clipping convert would give 255


def test_16bit_pgm_mode_i(tmp_path):
    values = np.array([[0, 1000, 40000, 65535]], np.uint16)
    out = load_rgb(_save(Image.fromarray(values), tmp_path / "i16.pgm"))
    np.testing.assert_array_equal(out[..., 0], values >> 8)


def test_mode_i_full_int32_range_and_float():
    wide = Image.fromarray(np.array([[-(2**31), 0, 2**31 - 1]], np.int32), "I")
    np.testing.assert_array_equal(pil_to_rgb(wide)[0, :, 0], [0, 128, 255])
    unit = Image.fromarray(np.array([[0.0, 0.5, 1.0, np.nan]], np.float32), "F")
    np.testing.assert_array_equal(pil_to_rgb(unit)[0, :, 0], [0, 128, 255, 0])
    big = Image.fromarray(np.array([[-5.0, 2.0, 300.0]], np.float32), "F")
    np.testing.assert_array_equal(pil_to_rgb(big)[0, :, 0], [0, 2, 255])


def test_bilevel(tmp_path):
    bits = np.array([[0, 1, 1], [1, 0, 0]], bool)
    out = load_rgb(_save(Image.fromarray(bits), tmp_path / "b.png"))
    np.testing.assert_array_equal(out[..., 0], bits * 255)
    out_pbm = load_rgb(_save(Image.fromarray(bits), tmp_path / "b.pbm"))
    np.testing.assert_array_equal(out_pbm, out)


@pytest.mark.parametrize("mode", ["YCbCr", "HSV", "RGBX"])
def test_other_modes_use_pil_convert(mode):
    img = Image.fromarray(_gradient()).convert(mode)
    np.testing.assert_array_equal(pil_to_rgb(img), np.asarray(img.convert("RGB")))


def test_exif_orientation_applied(tmp_path):
    rgb = np.zeros((20, 40, 3), np.uint8)  # landscape: left half red, right half blue
    rgb[:, :20, 0] = 255
    rgb[:, 20:, 2] = 255
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    out = load_rgb(_save(Image.fromarray(rgb), tmp_path / "o.jpg", exif=exif, quality=95))
    assert out.shape == (40, 20, 3)
    assert out[5, 10, 0] > 200 and out[5, 10, 2] < 50  # former left (red) is now on top
    assert out[35, 10, 2] > 200 and out[35, 10, 0] < 50


# --- failures --------------------------------------------------------------------------


def _assert_image_error(path, fragment: str):
    with pytest.raises(ImageError) as info:
        load_rgb(path)
    assert str(path) in str(info.value)
    assert fragment in str(info.value)
    assert isinstance(info.value, ValueError) and info.value.path == str(path)


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    _assert_image_error(path, "empty file")


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("definitely not a JPEG\n" * 10)
    _assert_image_error(path, "not an image (cannot identify image file)")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_truncated_file(tmp_path, fmt):
    from skimage.data import astronaut

    buf = io.BytesIO()
    Image.fromarray(astronaut()).save(buf, fmt)
    data = buf.getvalue()
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: len(data) // 2])
    _assert_image_error(path, "truncated or corrupt")


def test_decompression_bomb(tmp_path, monkeypatch):
    warn_size = _save(Image.new("RGB", (12, 12)), tmp_path / "warn.png")  # 144 px: PIL warns
    error_size = _save(Image.new("RGB", (20, 20)), tmp_path / "err.png")  # 400 px: PIL raises
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.warns(Image.DecompressionBombWarning):
        _assert_image_error(warn_size, "decompression bomb")
    _assert_image_error(error_size, "decompression bomb")


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_rgb(tmp_path / "nope.png")


# --- folder walking --------------------------------------------------------------------


def _touch_png(path) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (2, 2)).save(path, "PNG")


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "data"
    for rel in ["cat/b.png", "cat/a.jpg", "cat/sub/deep/z.jpeg", "dog/x.JPG", "top.png"]:
        _touch_png(root / rel)
    _touch_png(root / "cat/.hidden.jpg")
    _touch_png(root / ".git/inside.jpg")
    _touch_png(root / "dog/.cache/y.png")
    (root / "cat/notes.txt").write_text("hello")
    (root / "README").write_text("readme")
    (root / "empty_class").mkdir()
    return root


def test_walk_labels_and_order(tree):
    listing = walk_image_folder(tree)
    assert isinstance(listing, FolderListing)
    rel = [os.path.relpath(p, tree) for p in listing.paths]
    assert rel == [
        os.path.join("cat", "a.jpg"),
        os.path.join("cat", "b.png"),
        os.path.join("cat", "sub", "deep", "z.jpeg"),
        os.path.join("dog", "x.JPG"),
        "top.png",
    ]
    assert listing.class_names == ["cat", "dog", "empty_class"]
    assert listing.labels.dtype == np.int32
    np.testing.assert_array_equal(listing.labels, [0, 0, 0, 1, -1])
    assert len(listing) == 5
    assert all(p.startswith(str(tree)) for p in listing.paths)


def test_walk_ignored_and_hidden(tree):
    listing = walk_image_folder(tree)
    ignored = {os.path.relpath(p, tree): reason for p, reason in listing.ignored}
    assert ignored == {
        os.path.join("cat", "notes.txt"): "not an image extension (.txt)",
        "README": "not an image extension (no extension)",
    }
    rel = [os.path.relpath(p, tree) for p in listing.paths]
    assert not any(".hidden" in r or ".git" in r or ".cache" in r for r in rel)


def test_walk_is_deterministic(tree):
    first, second = walk_image_folder(tree), walk_image_folder(str(tree))
    assert first.paths == second.paths and first.ignored == second.ignored
    np.testing.assert_array_equal(first.labels, second.labels)


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks")
def test_walk_follows_symlinks_and_cuts_cycles(tree, tmp_path):
    outside = tmp_path / "outside"
    _touch_png(outside / "o.png")
    os.symlink(outside, tree / "dog" / "linked")
    os.symlink(tree / "cat", tree / "cat" / "sub" / "loop")  # cycle
    os.symlink(tree / "missing.png", tree / "dog" / "broken.png")
    listing = walk_image_folder(tree)
    rel = [os.path.relpath(p, tree) for p in listing.paths]
    assert os.path.join("dog", "linked", "o.png") in rel
    assert not any("loop" in r for r in rel)
    assert dict(listing.ignored)[str(tree / "dog" / "broken.png")].startswith("not a regular file")


def test_walk_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing_dir"):
        walk_image_folder(tmp_path / "missing_dir")
    file_root = tmp_path / "file.png"
    _touch_png(file_root)
    with pytest.raises(NotADirectoryError, match=r"file\.png"):
        walk_image_folder(file_root)
    no_images = tmp_path / "no_images"
    (no_images / "cls").mkdir(parents=True)
    (no_images / "cls" / "a.txt").write_text("x")
    with pytest.raises(ValueError, match="no_images"):
        walk_image_folder(no_images)


def test_extension_set():
    expected = "jpg jpeg png bmp gif webp tif tiff ppm pgm pbm pnm jfif"
    assert {"." + e for e in expected.split()} == set(IMAGE_EXTENSIONS)
