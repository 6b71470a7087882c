"""Qwen2-VL / Qwen2.5-VL image preprocessing (dynamic resolution), as the checkpoint's
`Qwen2VLImageProcessor` does it, in numpy / PIL.

    pre = Qwen2VLPreprocess.from_hf_dir(checkpoint_dir)
    patches, grid = pre(image)        # uint8 [H, W, 3] -> float32 [L, P], (1, h, w)

1. `smart_resize`: each side rounded to a multiple of `factor = patch_size * merge_size`, then
   scaled (keeping the aspect ratio) into `[min_pixels, max_pixels]`, so the number of patches,
   hence of image tokens (`h * w / merge_size^2`), varies with the image;
2. resize, rescale and normalise exactly as transformers' PIL backend (`ClipPreprocess` with an
   exact size and no crop: bicubic PIL resize of the uint8 image, x/255 in float64, then
   (x - mean) / std in float32);
3. patchify into HF's flattened layout: patches ordered block-major over `merge x merge` blocks,
   each patch vector (channel, temporal, row, column) with the image repeated
   `temporal_patch_size` times (a still image is a one-frame video).

transformers' torchvision backend (`Qwen2VLImageProcessor` when torchvision is installed) resizes
with torchvision's antialiased bicubic kernel instead of PIL's, which differs by a few uint8 steps
at some pixels; the PIL backend (`Qwen2VLImageProcessorPil`) is reproduced value for value.
Shape letters: L = h * w patches, P = 3 * temporal_patch_size * patch_size^2.
"""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
from PIL import Image

from vl_jax.images import ImageError
from vl_jax.preprocess import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    ClipPreprocess,
    _as_rgb_uint8,
    hf_image_processor_config,
)

__all__ = [
    "CanvasTransform",
    "Qwen2VLPreprocess",
    "canvas",
    "image_sizes",
    "patchify",
    "smart_resize",
]


def smart_resize(
    height: int, width: int, factor: int, min_pixels: int, max_pixels: int
) -> tuple[int, int]:
    """(h, w) multiples of `factor`, h * w within [min_pixels, max_pixels], aspect ratio kept as
    closely as that allows (transformers' `smart_resize`, the same arithmetic).

    Raises:
      ValueError: an aspect ratio above 200 (the processor refuses it too)."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(
            f"absolute aspect ratio must be smaller than 200, got {max(height, width) / min(height, width)}"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def patchify(pixels: np.ndarray, patch: int, merge: int, temporal: int) -> np.ndarray:
    """float32 [H, W, C] (sides multiples of patch * merge) -> [L, C * temporal * patch^2] in HF's
    order (block row, block column, row in block, column in block; vector (C, t, y, x))."""
    hh, ww, c = pixels.shape
    gh, gw = hh // patch, ww // patch
    x = pixels.reshape(gh // merge, merge, patch, gw // merge, merge, patch, c)
    x = x.transpose(0, 3, 1, 4, 6, 2, 5)  # (bh, bw, mh, mw, C, y, x)
    x = np.broadcast_to(x[:, :, :, :, :, None], (*x.shape[:5], temporal, patch, patch))
    return np.ascontiguousarray(x.reshape(gh * gw, c * temporal * patch * patch))


@dataclasses.dataclass(frozen=True)
class Qwen2VLPreprocess:
    """uint8 [H, W, 3] / PIL image -> (float32 patches [L, P], grid (1, h, w)).

    Attributes mirror `Qwen2VLImageProcessor`: `min_pixels` / `max_pixels` are its
    `size["shortest_edge"]` / `size["longest_edge"]` (a pixel budget, not edges)."""

    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    min_pixels: int = 56 * 56
    max_pixels: int = 28 * 28 * 1280
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    resample: int = int(Image.Resampling.BICUBIC)

    def __post_init__(self):
        if not 0 < self.min_pixels <= self.max_pixels:
            raise ValueError(
                f"need 0 < min_pixels <= max_pixels, got {self.min_pixels}, {self.max_pixels}"
            )

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size

    def resized_hw(self, height: int, width: int) -> tuple[int, int]:
        """(h, w) in pixels the image is resized to."""
        return smart_resize(height, width, self.factor, self.min_pixels, self.max_pixels)

    def grid(self, height: int, width: int) -> tuple[int, int, int]:
        """(1, h, w) patches of an image of (height, width) pixels (HF `image_grid_thw`)."""
        h, w = self.resized_hw(height, width)
        return 1, h // self.patch_size, w // self.patch_size

    def num_image_tokens(self, height: int, width: int) -> int:
        _, h, w = self.grid(height, width)
        return h * w // self.merge_size**2

    def resize(self, image) -> np.ndarray:
        """uint8 [H, W, 3] / PIL image -> float32 [h, w, 3] resized and normalised, before
        patchifying (the engine patchifies on device: `qwen2_vl.patchify_on_device`).

        Raises:
          ImageError: an aspect ratio the processor refuses (> 200)."""
        pixels = _as_rgb_uint8(image)
        try:
            size = self.resized_hw(*pixels.shape[:2])
        except ValueError as e:
            raise ImageError(f"{pixels.shape[1]}x{pixels.shape[0]} image", str(e)) from None
        resize = ClipPreprocess(
            size=size, do_center_crop=False, mean=self.mean, std=self.std, resample=self.resample
        )
        return resize(pixels)

    def __call__(self, image) -> tuple[np.ndarray, tuple[int, int, int]]:
        """uint8 [H, W, 3] / PIL image -> (patches [L, P], grid (1, h, w)), as the processor."""
        pixels = self.resize(image)
        patches = patchify(pixels, self.patch_size, self.merge_size, self.temporal_patch_size)
        return patches, (1, pixels.shape[0] // self.patch_size, pixels.shape[1] // self.patch_size)

    @classmethod
    def from_hf_dir(cls, path: str | os.PathLike) -> Qwen2VLPreprocess:
        """From a checkpoint's image processor settings (`preprocessor_config.json`, or
        `processor_config.json` as transformers 5 saves it). Options we cannot reproduce
        (no resize / rescale / normalise, another rescale factor) raise ValueError naming them."""
        cfg, file = hf_image_processor_config(path)
        for key in ("do_resize", "do_rescale", "do_normalize"):
            if cfg.get(key) is False:
                raise ValueError(f"{file}: unsupported {key}=false")
        if not math.isclose(float(cfg.get("rescale_factor", 1 / 255)), 1 / 255, rel_tol=1e-9):
            raise ValueError(f"{file}: unsupported rescale_factor={cfg['rescale_factor']!r}")
        size = dict(cfg.get("size") or {})
        # Top-level min/max_pixels override `size`, as the processor's constructor does; older
        # configs name the budget inside `size` min_pixels / max_pixels.
        pick = lambda *vals: next((int(v) for v in vals if v is not None), None)
        out = dict(
            min_pixels=pick(
                cfg.get("min_pixels"), size.get("shortest_edge"), size.get("min_pixels"),
                cls.min_pixels,
            ),
            max_pixels=pick(
                cfg.get("max_pixels"), size.get("longest_edge"), size.get("max_pixels"),
                cls.max_pixels,
            ),
        )  # fmt: skip
        for key in ("patch_size", "temporal_patch_size", "merge_size", "resample"):
            if cfg.get(key) is not None:
                out[key] = int(cfg[key])
        for key in ("mean", "std"):
            if cfg.get(f"image_{key}") is not None:
                out[key] = tuple(float(v) for v in cfg[f"image_{key}"])
        return cls(**out)


def canvas(images, factor: int, hw: tuple[int, int] | None = None) -> np.ndarray:
    """Resized images of different sizes (float32 [h_i, w_i, 3], sides multiples of `factor`)
    -> one float32 [N, Hc, Wc, 3] batch, each image at the top-left, NaN elsewhere (the
    engine's dynamic-resolution input; `image_sizes` reads the sizes back).

    The canvas is `hw`, or each side bucketed (`vl_jax.generate_inputs.bucket` in units of
    `factor`: four sizes per octave) so that new image sizes reuse a compiled canvas."""
    from vl_jax.generate_inputs import bucket

    images = [np.asarray(im, np.float32) for im in images]
    if hw is None:
        hw = tuple(bucket(-(-max(im.shape[k] for im in images) // factor)) * factor
                   for k in (0, 1))  # fmt: skip
    out = np.full((len(images), *hw, 3), np.nan, np.float32)
    for i, im in enumerate(images):
        h, w = im.shape[:2]
        if h > hw[0] or w > hw[1] or h % factor or w % factor:
            raise ValueError(f"image {h}x{w} does not fit a {hw[0]}x{hw[1]} canvas in "
                             f"multiples of {factor}")  # fmt: skip
        out[i, :h, :w] = im
    return out


def image_sizes(canvas, factor: int) -> np.ndarray:
    """[N, 2] (h, w) pixels of each image of a `canvas` batch [N, Hc, Wc, 3] (numpy): the
    non-NaN top-left block. A row of zeros (the input pipeline's padding or a skipped image)
    is no image: (0, 0)."""
    x = np.asarray(canvas)
    real = ~np.isnan(x[..., 0])
    sizes = np.stack([real[:, :, 0].sum(1), real[:, 0, :].sum(1)], axis=-1)
    sizes[(x == 0).reshape(len(x), -1).all(axis=1)] = 0
    if (sizes % factor).any():
        raise ValueError(
            f"canvas images of {sizes.tolist()} px: sides must be multiples of {factor}"
        )
    return sizes.astype(np.int32)


class CanvasTransform:
    """The input pipeline's transform for dynamic resolution: uint8 [H, W, 3] -> float32
    [Hc, Wc, 3], the image resized as the processor does (`Qwen2VLPreprocess.resize`) at the
    top-left of a fixed canvas, NaN elsewhere, so that a batch has one shape while its images
    keep their own sizes (the engine reads them back, `image_sizes`).

    An image whose resized sides do not fit the canvas (an aspect ratio beyond Hc : Wc's
    reach) is scaled down further to fit, sides multiples of the factor: the only departure
    from the processor. Picklable (the pipeline's workers)."""

    def __init__(self, pre: Qwen2VLPreprocess, hw: tuple[int, int]):
        if hw[0] % pre.factor or hw[1] % pre.factor:
            raise ValueError(f"canvas {hw}: sides must be multiples of {pre.factor}")
        self.pre, self.output_hw = pre, (int(hw[0]), int(hw[1]))

    @classmethod
    def for_budget(cls, pre: Qwen2VLPreprocess, aspect: float = 2.0) -> CanvasTransform:
        """A square canvas that holds every image of aspect ratio up to `aspect` at the
        processor's `max_pixels` unchanged (side sqrt(max_pixels * aspect), rounded up)."""
        f = pre.factor
        side = -(-math.ceil(math.sqrt(pre.max_pixels * aspect)) // f) * f
        return cls(pre, (side, side))

    def __call__(self, image) -> np.ndarray:
        pixels = _as_rgb_uint8(image)
        try:
            h, w = self.pre.resized_hw(*pixels.shape[:2])
        except ValueError as e:
            raise ImageError(f"{pixels.shape[1]}x{pixels.shape[0]} image", str(e)) from None
        hc, wc = self.output_hw
        if h > hc or w > wc:
            f, scale = self.pre.factor, min(hc / h, wc / w)
            h, w = (max(f, math.floor(s * scale / f) * f) for s in (h, w))
        p = self.pre
        resize = ClipPreprocess(size=(h, w), do_center_crop=False, mean=p.mean, std=p.std,
                                resample=p.resample)  # fmt: skip
        return canvas([resize(pixels)], p.factor, self.output_hw)[0]


class Qwen2VLProcessor:
    """The checkpoint's tokenizer (`AutoTokenizer`, with its chat template) and image
    preprocessing (:class:`Qwen2VLPreprocess`), doing for images and text what transformers'
    `Qwen2VLProcessor` does: each `<|image_pad|>` of a prompt becomes one token per merged patch
    of the next image, in order. Built directly because transformers' processor class cannot be
    instantiated without torchvision (its video processor needs it), and images are all VDC has.

    `__call__` returns numpy arrays: input_ids, attention_mask, mm_token_type_ids [B, T] (padded
    on the tokenizer's side), pixel_values [sum L, P] float32, image_grid_thw [N, 3]."""

    def __init__(self, tokenizer, image_processor: Qwen2VLPreprocess, image_token="<|image_pad|>"):
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.image_token = image_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)
        if self.image_token_id is None or self.image_token_id == tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer has no {image_token} token")

    @classmethod
    def from_pretrained(cls, path: str) -> Qwen2VLProcessor:
        import transformers

        tokenizer = transformers.AutoTokenizer.from_pretrained(path, trust_remote_code=False)
        return cls(tokenizer, Qwen2VLPreprocess.from_hf_dir(path))

    def __call__(self, images=None, text=None, padding=True, return_tensors="np"):
        if return_tensors not in (None, "np"):
            raise ValueError(f"return_tensors={return_tensors!r}: only numpy is returned")
        texts = [text] if isinstance(text, str) else list(text or [])
        out = {}
        if images is not None:
            done = [self.image_processor(im) for im in images]
            out["pixel_values"] = (
                np.concatenate([p for p, _ in done]) if done else np.zeros((0, 0), np.float32)
            )
            out["image_grid_thw"] = np.array([g for _, g in done], np.int64).reshape(-1, 3)
        counts = iter(
            int(np.prod(g)) // self.image_processor.merge_size**2
            for g in out.get("image_grid_thw", ())
        )
        expanded = []
        for t in texts:
            pieces = t.split(self.image_token)
            for i in range(1, len(pieces)):
                n = next(counts, None)
                if n is None:
                    raise ValueError("the prompts hold more image tokens than there are images")
                pieces[i] = self.image_token * n + pieces[i]
            expanded.append("".join(pieces))
        if next(counts, None) is not None:
            raise ValueError("there are more images than image tokens in the prompts")
        enc = self.tokenizer(expanded, padding=padding, return_tensors="np")
        ids = np.asarray(enc["input_ids"], np.int64)
        out = {
            "input_ids": ids,
            "attention_mask": np.asarray(enc["attention_mask"], np.int64),
            "mm_token_type_ids": (ids == self.image_token_id).astype(np.int64),
            **out,
        }
        return out

    def apply_chat_template(self, conversation, **kwargs):
        """The checkpoint's chat template through the tokenizer (`tokenize=False` by default)."""
        return self.tokenizer.apply_chat_template(conversation, **{"tokenize": False, **kwargs})

    def batch_decode(self, *args, **kwargs):
        return self.tokenizer.batch_decode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)
