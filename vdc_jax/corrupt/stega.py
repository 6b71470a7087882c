"""SSBA-style sample-specific invisible triggers (Li et al., ICCV 2021), without StegaStamp.

The original SSBA runs a StegaStamp encoder (a U-Net trained with a decoder, L2 / LPIPS and
critic losses) that hides a fixed string -- e.g. the target label's name -- in every image. The
result is an *additive, image-dependent residual* of small energy (PSNR about 27 dB on
ImageNet in the paper) from which the decoder reads the string back. We cannot download those
weights, and training a comparable encoder is far beyond a short CPU run, so this module builds
the residual deterministically, with the properties a cleanser has to face kept:

* **sample-specific**: the residual is a keyed spread-spectrum carrier for the message bits,
  modulated by the image's own local contrast (the std of the luminance in a 3x3 window),
  so textured regions carry most of the energy and flat ones little -- the way StegaStamp's
  learned residuals follow edges and texture. Every image gets a different residual.
* **invisible**: the residual is scaled so that the poisoned image has PSNR ``psnr`` (28 dB by
  default, at least that after rounding and clipping) against the clean one.
* **carries a message**: :func:`ssba_decode` reads the bits back *blindly* (from the poisoned
  image alone, correlating its high-pass with the keyed carrier), as StegaStamp's decoder does.
* **deterministic**: the carrier depends only on ``seed`` and the image size.

Shapes: images uint8 [H, W, 3]; bits uint8 [n] (values 0/1).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import numpy as np

from vdc_jax.corrupt.triggers import Attack, _check_image

__all__ = ["SSBA", "psnr", "ssba", "ssba_bits", "ssba_decode", "ssba_residual"]

_LUMA = np.asarray([0.299, 0.587, 0.114])


def ssba_bits(message: str) -> np.ndarray:
    """The message as bits, most significant first: uint8 [8 * len(utf-8 bytes)]."""
    data = np.frombuffer(message.encode("utf-8"), np.uint8)
    if data.size == 0:
        raise ValueError("the SSBA message must not be empty")
    return np.unpackbits(data)


def psnr(clean: np.ndarray, poisoned: np.ndarray) -> float:
    """PSNR in dB between two uint8 images (``inf`` when equal)."""
    mse = np.mean((np.asarray(clean, np.float64) - np.asarray(poisoned, np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def _box_mean(a: np.ndarray, r: int = 1) -> np.ndarray:
    """Mean over the (2r+1)^2 window around every pixel (edge-replicated), float64 [H, W, ...]."""
    k = 2 * r + 1
    p = np.pad(a, [(r + 1, r), (r + 1, r)] + [(0, 0)] * (a.ndim - 2), mode="edge")
    c = p.cumsum(0).cumsum(1)
    h, w = a.shape[:2]
    s = c[k:, k:] - c[:h, k:] - c[k:, :w] + c[:h, :w]  # summed-area table, one window each
    return s[:h, :w] / (k * k)


def _carrier(shape: tuple[int, int], n_bits: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Keyed carrier for an image size: ``(bit_of, chips)``, int64 [H, W] (which bit each pixel
    carries, uniformly spread) and float64 [H, W, 3] (i.i.d. +-1 chips)."""
    rng = np.random.default_rng([int(seed), 0x55BA, *shape])
    bit_of = rng.integers(0, n_bits, shape)
    chips = rng.integers(0, 2, (*shape, 3)) * 2.0 - 1.0
    return bit_of, chips


def ssba_residual(
    image: np.ndarray, bits: np.ndarray, seed: int = 0, psnr_db: float = 28.0
) -> np.ndarray:
    """The additive residual for one image: float64 [H, W, 3] with RMS ``255 * 10^(-psnr/20)``.

    ``residual = g * m(x) * chips * (2 b_{bit_of} - 1)``, where ``m(x)`` is the local luminance
    std (floored at 20 % of its mean, and at 1, so flat images still carry the message) and
    ``g`` sets the RMS.
    """
    image = _check_image(image)
    bits = np.asarray(bits, np.int64)
    x = image.astype(np.float64)
    y = x @ _LUMA
    local_std = np.sqrt(np.maximum(_box_mean(y * y) - _box_mean(y) ** 2, 0.0))
    m = np.maximum(local_std, max(0.2 * local_std.mean(), 1.0))
    bit_of, chips = _carrier(image.shape[:2], len(bits), seed)
    r = (m * (2.0 * bits[bit_of] - 1.0))[..., None] * chips
    return r * (255.0 * 10 ** (-psnr_db / 20) / np.sqrt(np.mean(r * r)))


def ssba(image: np.ndarray, bits: np.ndarray, seed: int = 0, psnr_db: float = 28.0) -> np.ndarray:
    """Embed ``bits`` into ``image``: uint8 [H, W, 3] with PSNR >= ``psnr_db`` against it.

    Rounding can lower the PSNR by a hair; clipping at 0 / 255 only raises it. The residual is
    shrunk by 5 % at a time in the rare case the rounded result falls below the bound.
    """
    image = _check_image(image)
    r = ssba_residual(image, bits, seed, psnr_db)
    x = image.astype(np.float64)
    for _ in range(50):
        out = np.clip(np.rint(x + r), 0, 255).astype(np.uint8)
        if psnr(image, out) >= psnr_db:
            return out
        r = 0.95 * r
    return image.copy()  # unreachable in practice: 0.95^50 leaves a sub-pixel residual


def ssba_decode(image: np.ndarray, n_bits: int, seed: int = 0) -> np.ndarray:
    """Read the bits back from a poisoned image alone: uint8 [n_bits].

    The image's high-pass (``x - box_mean_3x3(x)``) is mostly the residual in textured regions;
    its correlation with each bit's chips gives that bit's sign. Reliable when every bit has a
    few hundred pixels (e.g. 32 bits on 64x64 and larger images).
    """
    x = _check_image(image).astype(np.float64)
    high = x - _box_mean(x)
    bit_of, chips = _carrier(x.shape[:2], n_bits, seed)
    corr = np.bincount(bit_of.ravel(), (high * chips).sum(-1).ravel(), minlength=n_bits)
    return (corr > 0).astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class SSBA(Attack):
    """:func:`ssba` with the bits of ``message`` (SSBA encodes a fixed string, in the paper
    the target class's name) and a seeded carrier."""

    kind: ClassVar[str] = "ssba"
    message: str = "ssba"
    psnr: float = 28.0
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "bits", ssba_bits(self.message))

    def __call__(self, image):
        return ssba(image, self.bits, self.seed, self.psnr)

    def decode(self, image: np.ndarray) -> np.ndarray:
        """The bits read back from a poisoned image (compare with ``self.bits``)."""
        return ssba_decode(image, len(self.bits), self.seed)
