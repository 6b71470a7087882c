"""Backdoor triggers as pure numpy functions ``uint8 [H, W, 3] -> uint8 [H, W, 3]``.

Each function takes the image plus every parameter explicitly (seeded randomness is drawn
*before*, by :func:`noise_pattern` / :func:`wanet_noise_grid`, and passed in), so applying a trigger
is deterministic and can run lazily in a data loader. The :class:`Attack` dataclasses bundle the
parameters (and the seeded pattern / grid) for :class:`vdc_jax.corrupt.CorruptedSource`.

Defaults are BackdoorBench's (the benchmark library whose attacks VDC, Zhu et al. ICLR 2024,
evaluates against; all-to-one: a poisoned sample is relabelled to the target class); the table
in docs/vdc_corrupt.md lists each default beside BackdoorBench's and the options:

* BadNets (Gu et al., 2017): BackdoorBench's trigger image -- a white 3x3 square in the
  bottom-right corner of a black 32x32 image -- resized bilinearly (PIL) to the image and pasted
  wherever it is non-zero (soft-edged above 32 px). A crisp checkerboard patch whose side scales
  with the image is an option (``trigger_size=None``).
* Blended (Chen et al., 2017): ``(1 - alpha) x + alpha p``, alpha 0.2, with a fixed pattern ``p``
  (a seeded uniform-noise image by default: BackdoorBench's Hello-Kitty photo is not ours to ship).
* SIG (Barni et al., 2019): ``x + delta sin(2 pi j f / W)`` along the columns, delta 40, f 6.
* WaNet (Nguyen & Tran, 2021): a smooth warp from a seeded ``k x k`` field (k 4, s 0.5,
  grid_rescale 1) upsampled bicubically and applied with bilinear sampling.

BackdoorBench turns its float results into uint8 with ``np.clip(v, 0, 255).astype(np.uint8)``,
which truncates; Blended and SIG do the same by default (``rounding="truncate"``; ``"nearest"``
rounds instead), so their pixels equal BackdoorBench's (tested).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, ClassVar

import numpy as np
from PIL import Image

__all__ = [
    "Attack",
    "BadNets",
    "Blended",
    "Sig",
    "WaNet",
    "badnets",
    "badnets_patch",
    "badnets_patch_side",
    "badnets_trigger",
    "blended",
    "corner_box",
    "load_trigger",
    "noise_pattern",
    "sig",
    "sig_signal",
    "wanet",
    "wanet_displacement",
    "wanet_noise_grid",
]

ROUNDINGS = ("truncate", "nearest")


def _check_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected uint8 [H, W, 3], got {image.dtype} {image.shape}")
    return image


def _to_uint8(x: np.ndarray, rounding: str = "nearest") -> np.ndarray:
    """The float -> uint8 step shared by all triggers: ``"nearest"`` rounds half to even
    (np.rint) then clips; ``"truncate"`` clips then truncates, as BackdoorBench does
    (``np.clip(x, 0, 255).astype(np.uint8)``; after the clip this is the floor)."""
    if rounding == "nearest":
        x = np.rint(x)
    elif rounding != "truncate":
        raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
    return np.clip(x, 0, 255).astype(np.uint8)


def _resize(image: np.ndarray, height: int, width: int, resample=Image.Resampling.BILINEAR):
    """uint8 [h, w, C] -> [height, width, C] with PIL (what torchvision's ``Resize`` runs on a
    PIL image, as BackdoorBench uses it); the input itself when the size already matches."""
    if image.shape[:2] == (height, width):
        return image
    return np.asarray(Image.fromarray(image).resize((width, height), resample))


def load_trigger(trigger: str | os.PathLike | np.ndarray) -> np.ndarray:
    """A user-given trigger image: a ``.npy`` file (no pickle), an image file (PNG, ...;
    converted to RGB) or an array. Returns uint8 [h, w, 3]."""
    if isinstance(trigger, np.ndarray):
        return _check_image(trigger)
    path = os.fspath(trigger)
    if path.endswith(".npy"):
        return _check_image(np.load(path, allow_pickle=False))
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def corner_box(height: int, width: int, p: int, corner: str, margin: int) -> tuple[int, int]:
    """``(top, left)`` of a ``p x p`` square in ``corner`` (``"bottom_right"`` |
    ``"bottom_left"`` | ``"top_right"`` | ``"top_left"``), ``margin`` pixels from the borders
    (reduced so that the square stays inside the image)."""
    vert, _, horiz = corner.partition("_")
    if vert not in ("top", "bottom") or horiz not in ("left", "right"):
        raise ValueError(f"unknown corner {corner!r}")
    m = max(0, min(margin, height - p, width - p))
    return (m if vert == "top" else height - p - m), (m if horiz == "left" else width - p - m)


# --------------------------------------------------------------------------- BadNets


def badnets_patch_side(height: int, width: int, size_frac: float = 3 / 32) -> int:
    """Side in pixels of a square patch: ``max(1, round(size_frac * min(H, W)))``."""
    return max(1, min(height, width, round(size_frac * min(height, width))))


def _badnets_pattern(pattern: str, p: int, dark: int) -> np.ndarray:
    """uint8 [p, p]: all 255 (``"white"``) or a checkerboard, pixel ``(r, c)`` 255 if ``r + c``
    is even (white corners) else ``dark``."""
    if pattern == "white":
        return np.full((p, p), 255, np.uint8)
    if pattern == "checkerboard":
        r, c = np.indices((p, p))
        return np.where((r + c) % 2 == 0, 255, dark).astype(np.uint8)
    raise ValueError(f"unknown BadNets pattern {pattern!r}")


def badnets_trigger(
    pattern: str = "white",
    size: int = 32,
    size_frac: float = 3 / 32,
    corner: str = "bottom_right",
    margin: int = 0,
) -> np.ndarray:
    """BackdoorBench's BadNets trigger image: uint8 [size, size, 3], black except a
    ``p x p`` pattern (``p = badnets_patch_side(size, size, size_frac)``: 3 at the defaults) in
    ``corner``. The checkerboard's dark cells are 1, not 0, because only non-zero trigger pixels
    are pasted (BackdoorBench's ``trigger_image_grid.png`` does the same)."""
    p = badnets_patch_side(size, size, size_frac)
    top, left = corner_box(size, size, p, corner, margin)
    out = np.zeros((size, size, 3), np.uint8)
    out[top : top + p, left : left + p] = _badnets_pattern(pattern, p, dark=1)[..., None]
    return out


def badnets(image: np.ndarray, trigger: np.ndarray | None = None) -> np.ndarray:
    """BadNets as BackdoorBench applies it (``AddMaskPatchTrigger``).

    Args:
      image: uint8 [H, W, 3].
      trigger: uint8 [h, w, 3] trigger image, black where the image is kept; default
        :func:`badnets_trigger` (a white 3x3 square at the bottom-right of 32x32). Resized to
        ``(H, W)`` with PIL bilinear (torchvision ``Resize``'s default on a PIL image), so the
        square covers the same fraction of any image, with soft edges above 32 px.

    Returns:
      uint8 [H, W, 3] = ``image * (t == 0) + t * (t > 0)`` per pixel and channel, ``t`` the
      resized trigger: every non-zero trigger value replaces the image's, the rest is unchanged.
    """
    image = _check_image(image)
    trigger = badnets_trigger() if trigger is None else _check_image(trigger)
    t = _resize(trigger, *image.shape[:2])
    return np.where(t > 0, t, image)


def badnets_patch(
    image: np.ndarray,
    size_frac: float = 3 / 32,
    pattern: str = "checkerboard",
    corner: str = "bottom_right",
    margin: int = 0,
) -> np.ndarray:
    """A crisp square patch drawn at the image's own resolution (an option; not BackdoorBench's).

    Args:
      image: uint8 [H, W, 3].
      size_frac: patch side relative to ``min(H, W)``; 3/32 gives 3x3 on CIFAR, 21x21 at 224.
      pattern: ``"checkerboard"`` (pixel ``(r, c)`` of the patch is 255 if ``r + c`` is even,
        else 0, in all channels; corners are white) or ``"white"`` (all 255).
      corner, margin: see :func:`corner_box`.

    Returns:
      uint8 [H, W, 3]: a copy with the ``p x p`` patch written (see :func:`badnets_patch_side`);
      every other pixel unchanged.
    """
    image = _check_image(image)
    h, w = image.shape[:2]
    p = badnets_patch_side(h, w, size_frac)
    patch = _badnets_pattern(pattern, p, dark=0)
    top, left = corner_box(h, w, p, corner, margin)
    out = image.copy()
    out[top : top + p, left : left + p] = patch[..., None]
    return out


# --------------------------------------------------------------------------- Blended


def noise_pattern(seed: int, size: tuple[int, int] = (224, 224)) -> np.ndarray:
    """A fixed random-noise trigger: uint8 [size[0], size[1], 3], i.i.d. uniform over 0..255."""
    rng = np.random.default_rng([int(seed), 0xB1E4D])
    return rng.integers(0, 256, (*size, 3), dtype=np.uint8)


def blended(
    image: np.ndarray, pattern: np.ndarray, alpha: float = 0.2, rounding: str = "truncate"
) -> np.ndarray:
    """Blend a pattern into the image (Blended, Chen et al. 2017).

    Args:
      image: uint8 [H, W, 3].
      pattern: uint8 [h, w, 3]; resized to ``(H, W)`` with PIL bilinear when the size differs
        (as BackdoorBench resizes its pattern; the same pattern then serves images of any size).
      alpha: blend weight of the pattern (0.2 in the paper and BackdoorBench).
      rounding: ``"truncate"`` (BackdoorBench) or ``"nearest"``; see :func:`_to_uint8`.

    Returns:
      uint8 [H, W, 3] from ``(1 - alpha) * image + alpha * pattern``. The pattern term is
      computed in float32 and the sum in float64, BackdoorBench's precisions (its pattern is a
      float32 array), so that truncation gives BackdoorBench's pixels exactly.
    """
    image = _check_image(image)
    pattern = _resize(_check_image(pattern), *image.shape[:2])
    term = (np.float32(alpha) * pattern.astype(np.float32)).astype(np.float64)
    return _to_uint8((1.0 - alpha) * image.astype(np.float64) + term, rounding)


# --------------------------------------------------------------------------- SIG


def sig_signal(width: int, delta: float = 40.0, freq: float = 6.0) -> np.ndarray:
    """The SIG signal per column: float64 [W], ``delta * sin(2 pi j freq / W)``."""
    j = np.arange(width, dtype=np.float64)
    return delta * np.sin(2.0 * np.pi * j * freq / width)


def sig(
    image: np.ndarray, delta: float = 40.0, freq: float = 6.0, rounding: str = "truncate"
) -> np.ndarray:
    """Add a horizontal sinusoid (SIG, Barni et al. 2019).

    Args:
      image: uint8 [H, W, 3].
      delta: amplitude in pixel values (40, BackdoorBench's default).
      freq: number of periods across the image width (6).
      rounding: ``"truncate"`` (BackdoorBench) or ``"nearest"``; see :func:`_to_uint8`.

    Returns:
      uint8 [H, W, 3] from ``image + sig_signal(W)[None, :, None]``, clipped to 0..255; the
      signal is the same for every row and channel.
    """
    image = _check_image(image)
    return _to_uint8(image + sig_signal(image.shape[1], delta, freq)[None, :, None], rounding)


# --------------------------------------------------------------------------- WaNet


def wanet_noise_grid(seed: int, k: int = 4) -> np.ndarray:
    """WaNet's random control grid: float64 [k, k, 2] (x, y), uniform in [-1, 1] then divided
    by its mean absolute value (as in the official code), so ``mean(|grid|) == 1``."""
    rng = np.random.default_rng([int(seed), 0x3A4E7])
    grid = rng.uniform(-1.0, 1.0, (k, k, 2))
    return grid / np.mean(np.abs(grid))


def _bicubic_matrix(n_out: int, n_in: int, a: float = -0.75) -> np.ndarray:
    """[n_out, n_in] weights of PyTorch's 1-D bicubic upsampling with align_corners=True."""
    src = np.arange(n_out) * ((n_in - 1) / (n_out - 1)) if n_out > 1 else np.zeros(1)
    i0 = np.floor(src).astype(int)
    t = src - i0

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    weights = np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=1)
    m = np.zeros((n_out, n_in))
    for k in range(4):  # border taps are clamped onto the edge sample, as in PyTorch
        np.add.at(m, (np.arange(n_out), np.clip(i0 + k - 1, 0, n_in - 1)), weights[:, k])
    return m


def wanet_displacement(
    shape: tuple[int, int], noise_grid: np.ndarray, s: float = 0.5, grid_rescale: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """Source pixel coordinates of the WaNet warp.

    The official code (square images) samples at ``clamp((identity + s * noise / H) *
    grid_rescale, -1, 1)`` in grid_sample's [-1, 1] coordinates; for ``H != W`` we divide the
    x component by W and the y component by H, so the displacement is ``~ s * noise / 2``
    pixels on both axes whatever the size.

    Args:
      shape: ``(H, W)``.
      noise_grid: float [k, k, 2] from :func:`wanet_noise_grid`, upsampled bicubically
        (align_corners) to [H, W, 2].

    Returns:
      ``(py, px)``: float64 [H, W] each, the row / column each output pixel is read from.
    """
    h, w = shape
    noise = np.asarray(noise_grid, np.float64)
    kh, kw = noise.shape[:2]
    field = np.einsum("hk,klc,wl->hwc", _bicubic_matrix(h, kh), noise, _bicubic_matrix(w, kw))
    gx = (np.linspace(-1.0, 1.0, w)[None, :] + s * field[..., 0] / w) * grid_rescale
    gy = (np.linspace(-1.0, 1.0, h)[:, None] + s * field[..., 1] / h) * grid_rescale
    gx, gy = np.clip(gx, -1.0, 1.0), np.clip(gy, -1.0, 1.0)
    return (gy + 1.0) / 2.0 * (h - 1), (gx + 1.0) / 2.0 * (w - 1)  # align_corners=True


def _bilinear(image: np.ndarray, py: np.ndarray, px: np.ndarray) -> np.ndarray:
    """Sample float64 [H', W', 3] at in-range coordinates ``(py, px)`` (bilinear)."""
    h, w = image.shape[:2]
    y0 = np.clip(np.floor(py).astype(int), 0, max(h - 2, 0))
    x0 = np.clip(np.floor(px).astype(int), 0, max(w - 2, 0))
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = (py - y0)[..., None], (px - x0)[..., None]
    img = image.astype(np.float64)
    top = img[y0, x0] * (1 - fx) + img[y0, x1] * fx
    bottom = img[y1, x0] * (1 - fx) + img[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def wanet(
    image: np.ndarray, noise_grid: np.ndarray, s: float = 0.5, grid_rescale: float = 1.0
) -> np.ndarray:
    """Warp the image with a smooth random field (WaNet, Nguyen & Tran 2021).

    Args:
      image: uint8 [H, W, 3].
      noise_grid: float [k, k, 2] control grid (:func:`wanet_noise_grid`, k = 4).
      s: warp strength (0.5); ``s = 0`` with ``grid_rescale = 1`` is the identity.
      grid_rescale: scales the sampling grid (1).

    Returns:
      uint8 [H, W, 3]: bilinear samples at :func:`wanet_displacement`, rounded.
    """
    image = _check_image(image)
    py, px = wanet_displacement(image.shape[:2], noise_grid, s, grid_rescale)
    return _to_uint8(_bilinear(image, py, px))


# --------------------------------------------------------------------------- Attack objects


class Attack:
    """A trigger with its parameters bound: ``attack(image) -> image`` (uint8 [H, W, 3]).

    ``kind`` is the manifest's name for it. Subclasses with a ``seed`` field draw their random
    pattern / grid from it once, in ``__post_init__``.
    """

    kind: ClassVar[str]

    def __call__(self, image: np.ndarray) -> np.ndarray:
        raise NotImplementedError


@dataclasses.dataclass(frozen=True, eq=False)
class BadNets(Attack):
    """BadNets with bound parameters.

    By default BackdoorBench's: :func:`badnets` with :func:`badnets_trigger` (``pattern``,
    ``size_frac``, ``corner`` and ``margin`` drawn on a ``trigger_size`` = 32 px black image) or
    with ``trigger`` (an image path or uint8 array, BackdoorBench's ``patch_mask_path``).
    ``trigger_size=None`` draws a crisp patch at each image's own resolution instead
    (:func:`badnets_patch`); ``BadNets(pattern="checkerboard", trigger_size=None)`` is the
    checkerboard this package used before it followed BackdoorBench.
    """

    kind: ClassVar[str] = "badnets"
    pattern: str = "white"
    trigger_size: int | None = 32
    size_frac: float = 3 / 32
    corner: str = "bottom_right"
    margin: int = 0
    trigger: Any = None

    def __post_init__(self):
        if self.trigger is not None:
            if self.trigger_size is None:
                raise ValueError("a BadNets trigger image is resized: leave trigger_size set")
            object.__setattr__(self, "trigger", load_trigger(self.trigger))
        elif self.trigger_size is not None:
            trig = badnets_trigger(
                self.pattern, self.trigger_size, self.size_frac, self.corner, self.margin
            )
            object.__setattr__(self, "trigger", trig)
        else:
            _badnets_pattern(self.pattern, 1, 0)  # a bad pattern name fails here, not per image

    def __call__(self, image):
        if self.trigger is None:
            return badnets_patch(image, self.size_frac, self.pattern, self.corner, self.margin)
        return badnets(image, self.trigger)


@dataclasses.dataclass(frozen=True, eq=False)
class Blended(Attack):
    """:func:`blended` with a fixed pattern: ``pattern`` if given (an image path or uint8 array,
    resized bilinearly to each image, as BackdoorBench does with its Hello-Kitty image), else ``noise_pattern(seed, pattern_size)`` resized with *nearest* neighbour, which
    keeps it i.i.d. pixel noise at every size (bilinear downsampling would average it to grey
    and weaken the trigger on small images)."""

    kind: ClassVar[str] = "blended"
    alpha: float = 0.2
    pattern: Any = None
    seed: int = 0
    pattern_size: tuple[int, int] = (224, 224)
    rounding: str = "truncate"

    def __post_init__(self):
        object.__setattr__(self, "_noise", self.pattern is None)
        if self.pattern is None:
            object.__setattr__(self, "pattern", noise_pattern(self.seed, self.pattern_size))
        else:
            object.__setattr__(self, "pattern", load_trigger(self.pattern))

    def __call__(self, image):
        pattern = self.pattern
        h, w = np.shape(image)[:2]
        if self._noise and pattern.shape[:2] != (h, w):
            rows = np.arange(h) * pattern.shape[0] // h
            cols = np.arange(w) * pattern.shape[1] // w
            pattern = pattern[rows[:, None], cols[None, :]]
        return blended(image, pattern, self.alpha, self.rounding)


@dataclasses.dataclass(frozen=True)
class Sig(Attack):
    """:func:`sig` with bound parameters."""

    kind: ClassVar[str] = "sig"
    delta: float = 40.0
    freq: float = 6.0
    rounding: str = "truncate"

    def __call__(self, image):
        return sig(image, self.delta, self.freq, self.rounding)


@dataclasses.dataclass(frozen=True, eq=False)
class WaNet(Attack):
    """:func:`wanet` with the control grid ``wanet_noise_grid(seed, k)`` (or ``noise_grid``)."""

    kind: ClassVar[str] = "wanet"
    k: int = 4
    s: float = 0.5
    grid_rescale: float = 1.0
    seed: int = 0
    noise_grid: np.ndarray | None = None

    def __post_init__(self):
        if self.noise_grid is None:
            object.__setattr__(self, "noise_grid", wanet_noise_grid(self.seed, self.k))

    def __call__(self, image):
        return wanet(image, self.noise_grid, self.s, self.grid_rescale)
