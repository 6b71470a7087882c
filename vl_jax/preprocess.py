"""Image preprocessing as input-pipeline transforms: ``uint8 [H, W, 3] -> float32 [h, w, 3]``.

Every transform here maps one decoded image to a fixed-size, channels-last float array and
says its size (``output_hw``), which is what ``vl_jax.data.pipeline.make_pipeline`` needs to
build ``[B, h, w, 3]`` batches:

- :class:`ClipPreprocess` — CLIP's preprocessing in numpy/PIL (below); the transform of CLIP
  checkpoints and of LLaVA checkpoints whose image processor is CLIP's;
- :class:`HFImageProcessor` — any transformers image processor with a fixed output size (BLIP,
  SigLIP, ...) wrapped as a transform: the processor itself runs on each image.

Dynamic resolution (Qwen2-VL / Qwen2.5-VL: the output size, hence the number of image tokens,
varies per image) is the one exception to a fixed output size, and it lives with its family:
``vl_jax.models.qwen2_vl_preprocess.CanvasTransform`` resizes as the checkpoint's processor does
and places the image at the top-left of a fixed NaN canvas, so a batch keeps one shape; the
engine reads each image's size back from the border and pads its patches to a bucket
(docs/generation.md, the Qwen2-VL section).

CLIP preprocessing, channels-last:

:class:`ClipPreprocess` reproduces transformers' PIL-backend CLIP image processor
(``CLIPImageProcessorPil``; ``transformers/image_processing_backends.py::PilBackend``
and ``transformers/image_transforms.py``) value for value:

1. resize with PIL (``Image.resize``, no ``reducing_gap``) so the shortest edge equals
   ``size``; the long edge is ``int(size * long / short)`` (truncation, torchvision's
   rule) -- or to exactly ``(h, w)`` when ``size`` is a pair;
2. centre crop to ``crop_size``: offset ``(in - crop) // 2`` (floor, HF); if the image
   is smaller than the crop it is first zero-padded by ``ceil((crop - in) / 2)`` before
   the image, so the padding shows up as ``(0 - mean) / std`` after normalisation;
3. rescale: ``(x.astype(float64) * (1/255)).astype(float32)``;
4. normalise in float32: ``(x - mean) / std``.

The only deliberate difference is the layout: we return NHWC (our models are
channels-last) where HF returns NCHW. ``crop_rounding="round"`` switches step 2 to
torchvision's ``CenterCrop`` rule (``round((in - crop) / 2)``, pad ``(crop - in) // 2``
before), which is what OpenCLIP uses; :meth:`ClipPreprocess.from_open_clip_config`
selects it so that OpenCLIP checkpoints see the crops they were evaluated with.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
from PIL import Image

from vl_jax.errors import NotFoundError
from vl_jax.images import pil_to_rgb

__all__ = [
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "ClipPreprocess",
    "HFImageProcessor",
    "center_crop",
    "hf_image_processor_config",
    "shortest_edge_size",
]

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_RESAMPLE_MODES = {int(m) for m in Image.Resampling}
_OPEN_CLIP_INTERPOLATION = {
    "bicubic": int(Image.Resampling.BICUBIC),
    "bilinear": int(Image.Resampling.BILINEAR),
    # OpenCLIP's "random" only randomises training augmentation; eval uses bicubic.
    "random": int(Image.Resampling.BICUBIC),
}


def shortest_edge_size(height: int, width: int, size: int) -> tuple[int, int]:
    """Output ``(h, w)`` when resizing ``(height, width)`` so the shortest edge is ``size``.

    Same arithmetic as ``transformers.image_transforms.get_resize_output_image_size``
    (``default_to_square=False``) and torchvision ``Resize(int)``: the long edge is
    truncated, not rounded, and a square image keeps ``(size, size)``.
    """
    short, long = (width, height) if width <= height else (height, width)
    new_long = int(size * long / short)
    return (new_long, size) if width <= height else (size, new_long)


def center_crop(
    image: np.ndarray, crop_hw: tuple[int, int], rounding: Literal["floor", "round"] = "floor"
) -> np.ndarray:
    """Centre-crop ``[H, W, C]`` to ``[crop_h, crop_w, C]``, zero-padding if the image is smaller.

    ``rounding="floor"`` is transformers' ``center_crop``; ``"round"`` is torchvision's
    ``CenterCrop`` (Python ``round``, i.e. half-to-even). They differ by one pixel when
    ``in - crop`` is odd (and, for the padding, which side gets the extra zero row).
    """
    (in_h, in_w), (crop_h, crop_w) = image.shape[:2], crop_hw
    top = _crop_start(in_h, crop_h, rounding)
    left = _crop_start(in_w, crop_w, rounding)
    out = np.zeros((crop_h, crop_w, *image.shape[2:]), dtype=image.dtype)
    # Intersection of the crop window [top, top + crop) with the image [0, in), in
    # image coordinates; a negative start means padding before the image.
    src_h = slice(max(top, 0), min(top + crop_h, in_h))
    src_w = slice(max(left, 0), min(left + crop_w, in_w))
    dst_h = slice(src_h.start - top, src_h.stop - top)
    dst_w = slice(src_w.start - left, src_w.stop - left)
    out[dst_h, dst_w] = image[src_h, src_w]
    return out


def _crop_start(length: int, crop: int, rounding: str) -> int:
    """Crop offset along one axis; negative when the axis is padded."""
    if crop <= length:
        return (length - crop) // 2 if rounding == "floor" else round((length - crop) / 2.0)
    if rounding == "floor":
        return -math.ceil((crop - length) / 2)  # HF pads ceil(diff/2) before the image
    return -((crop - length) // 2)  # torchvision pads diff//2 before (left/top)


@dataclasses.dataclass(frozen=True)
class ClipPreprocess:
    """CLIP eval preprocessing: ``uint8 [H, W, 3]`` or PIL image -> ``float32 [crop_h, crop_w, 3]``.

    Attributes:
      size: shortest-edge length (int), or an exact ``(height, width)`` resize (HF
        ``{"height", "width"}`` configs, OpenCLIP ``resize_mode="squash"``).
      crop_size: ``(height, width)`` of the centre crop.
      mean, std: per-channel normalisation applied to values in [0, 1].
      resample: PIL resampling filter (``PIL.Image.Resampling`` value).
      do_center_crop: without it the output is ``[resized_h, resized_w, 3]``.
      crop_rounding: ``"floor"`` (transformers) or ``"round"`` (torchvision/OpenCLIP).
    """

    size: int | tuple[int, int] = 224
    crop_size: tuple[int, int] = (224, 224)
    mean: tuple[float, float, float] = OPENAI_CLIP_MEAN
    std: tuple[float, float, float] = OPENAI_CLIP_STD
    resample: int = int(Image.Resampling.BICUBIC)
    do_center_crop: bool = True
    crop_rounding: Literal["floor", "round"] = "floor"

    def __post_init__(self):
        # Normalise JSON-ish inputs (lists, numpy ints) so instances compare/hash sanely.
        size = _positive_ints(self.size, "size", allowed=(1, 2))
        object.__setattr__(self, "size", size[0] if len(size) == 1 else size)
        object.__setattr__(self, "crop_size", _positive_ints(self.crop_size, "crop_size", (2,)))
        object.__setattr__(self, "mean", _three_floats(self.mean, "mean"))
        object.__setattr__(self, "std", _three_floats(self.std, "std"))
        if any(s == 0 for s in self.std):
            raise ValueError(f"std must be non-zero, got {self.std}")
        if int(self.resample) not in _RESAMPLE_MODES:
            raise ValueError(f"resample must be a PIL.Image.Resampling value, got {self.resample}")
        object.__setattr__(self, "resample", int(self.resample))
        if self.crop_rounding not in ("floor", "round"):
            raise ValueError(
                f"crop_rounding must be 'floor' or 'round', got {self.crop_rounding!r}"
            )

    @property
    def output_hw(self) -> tuple[int, int] | None:
        """``(h, w)`` of every output, or None when it depends on the input (no crop)."""
        if self.do_center_crop:
            return self.crop_size
        return self.size if isinstance(self.size, tuple) else None

    def resized_hw(self, height: int, width: int) -> tuple[int, int]:
        """``(h, w)`` after the resize step for an input of ``(height, width)``."""
        if isinstance(self.size, tuple):
            return self.size
        return shortest_edge_size(height, width, self.size)

    def __call__(self, image: np.ndarray | Image.Image) -> np.ndarray:
        """Preprocess one image: ``uint8 [H, W, 3]`` / PIL (any mode) -> ``float32 [h, w, 3]``."""
        pixels = _as_rgb_uint8(image)
        out_h, out_w = self.resized_hw(*pixels.shape[:2])
        # uint8 -> PIL -> resize -> uint8, exactly as HF's PIL backend does (it also
        # round-trips through a uint8 PIL image, so intermediate values are quantised).
        resized = Image.fromarray(pixels).resize((out_w, out_h), resample=self.resample)
        pixels = np.asarray(resized)
        if self.do_center_crop:
            pixels = center_crop(pixels, self.crop_size, self.crop_rounding)
        # Rescale in float64 then downcast, then normalise in float32: HF's order, so
        # the result is bit-identical rather than merely close.
        scaled = (pixels.astype(np.float64) * (1 / 255)).astype(np.float32)
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        return (scaled - mean) / std

    def batch(self, images: Iterable[np.ndarray | Image.Image]) -> np.ndarray:
        """Preprocess images -> ``float32 [B, h, w, 3]`` (all outputs must share one size)."""
        outputs = [self(image) for image in images]
        if not outputs:
            if self.output_hw is None:
                raise ValueError("cannot build an empty batch without a fixed output size")
            return np.zeros((0, *self.output_hw, 3), dtype=np.float32)
        return np.stack(outputs)

    @classmethod
    def from_hf_dir(cls, path: str | os.PathLike) -> ClipPreprocess:
        """Build from a HF ``preprocessor_config.json`` (a model directory or the file itself;
        see :func:`hf_image_processor_config` for directories saved by newer transformers).

        Keys missing from the file take ``CLIPImageProcessor``'s defaults. Options we
        cannot reproduce (``do_resize``/``do_rescale``/``do_normalize`` false, another
        ``rescale_factor``, ``longest_edge`` sizes, padding, unknown keys) raise
        ValueError naming the key and the file.
        """
        cfg, file = hf_image_processor_config(path)
        return cls(**_parse_hf_config(cfg, file))

    @classmethod
    def from_open_clip_config(
        cls,
        cfg: Mapping[str, Any],
        image_size: int | Sequence[int] | None = None,
        *,
        source: str = "open_clip_config.json",
    ) -> ClipPreprocess:
        """Build from an OpenCLIP ``open_clip_config.json`` dict or just its ``preprocess_cfg``.

        ``image_size`` (int or ``[h, w]``) defaults to ``preprocess_cfg["size"]``, then
        ``model_cfg["vision_cfg"]["image_size"]``. Supported ``resize_mode``: "shortest"
        with a square size (Resize + CenterCrop, torchvision crop rounding) and "squash"
        (exact resize, no crop). ``source`` only labels error messages.
        """
        return cls(**_parse_open_clip_config(cfg, image_size, source))


def hf_image_processor_config(path: str | os.PathLike) -> tuple[dict[str, Any], str]:
    """``(image processor settings, the file they came from)`` of a HF checkpoint.

    ``path``: a JSON file, or a directory holding ``preprocessor_config.json`` or — as
    transformers >= 5 saves a multimodal processor — ``processor_config.json`` with the
    settings under ``"image_processor"``. NotFoundError (a FileNotFoundError and a user error)
    when the directory has neither.
    """
    path = os.fspath(path)
    if not os.path.isdir(path):
        file, nested = path, os.path.basename(path) == "processor_config.json"
    elif os.path.exists(os.path.join(path, "preprocessor_config.json")):
        file, nested = os.path.join(path, "preprocessor_config.json"), False
    elif os.path.exists(os.path.join(path, "processor_config.json")):
        file, nested = os.path.join(path, "processor_config.json"), True
    else:
        raise NotFoundError(f"{path}: no preprocessor_config.json or processor_config.json")
    with open(file, encoding="utf-8") as f:
        cfg = json.load(f)
    if nested and isinstance(cfg, dict):
        cfg = cfg.get("image_processor")
    if not isinstance(cfg, dict):
        what = "an image_processor object" if nested else "a JSON object"
        raise ValueError(f"{file}: expected {what}, got {type(cfg).__name__}")
    return cfg, file


class HFImageProcessor:
    """A transformers image processor with a fixed output size as a pipeline transform:
    ``uint8 [H, W, 3] -> float32 [h, w, 3]`` (the processor's NCHW output made channels-last).

    For checkpoints whose preprocessing :class:`ClipPreprocess` does not reproduce (BLIP,
    SigLIP, ...): the processor runs on every image, so the values are the checkpoint's own
    by construction. The output size is measured on two blank images of different aspect
    ratios; a processor whose size depends on the image (dynamic resolution, see the module
    docstring) is refused with a ValueError. Thread-safe as far as the processor is (the
    pipeline calls it from several threads); picklable when the processor is.

    Attributes:
      processor: e.g. ``AutoProcessor.from_pretrained(path).image_processor``.
      output_hw: ``(h, w)`` of every output.
    """

    def __init__(self, processor):
        self.processor = processor
        sizes = {self(np.zeros(shape, np.uint8)).shape for shape in ((64, 48, 3), (40, 96, 3))}
        if len(sizes) != 1:
            raise ValueError(
                f"{type(processor).__name__}: output size varies with the image ({sorted(sizes)});"
                " the input pipeline needs one size (see vl_jax.preprocess on dynamic resolution)"
            )
        self.output_hw: tuple[int, int] = sizes.pop()[:2]

    def __call__(self, image: np.ndarray | Image.Image) -> np.ndarray:
        pil = Image.fromarray(_as_rgb_uint8(image))  # RGB, so no processor converts modes
        px = np.asarray(self.processor(images=[pil], return_tensors="np")["pixel_values"])
        if px.ndim != 4 or px.shape[0] != 1 or 3 not in (px.shape[1], px.shape[3]):
            raise ValueError(
                f"{type(self.processor).__name__} gave pixel_values {px.shape}; expected one "
                "[1, 3, h, w] or [1, h, w, 3] image"
            )
        px = px[0].transpose(1, 2, 0) if px.shape[1] == 3 else px[0]  # NCHW -> HWC
        return np.ascontiguousarray(px, dtype=np.float32)

    def __repr__(self) -> str:
        return f"HFImageProcessor({type(self.processor).__name__}, output_hw={self.output_hw})"


def _as_rgb_uint8(image: np.ndarray | Image.Image) -> np.ndarray:
    """Validate/convert an input image to ``uint8 [H, W, 3]``."""
    if isinstance(image, Image.Image):
        return pil_to_rgb(image)
    pixels = np.asarray(image)
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[-1] != 3:
        raise ValueError(
            f"expected a uint8 [H, W, 3] array or a PIL image, got {pixels.dtype} {pixels.shape}"
        )
    if 0 in pixels.shape:
        raise ValueError(f"image has an empty dimension: {pixels.shape}")
    return pixels


def _positive_ints(value: Any, name: str, allowed: tuple[int, ...]) -> tuple[int, ...]:
    items = (value,) if isinstance(value, int | np.integer) else tuple(value)
    if len(items) not in allowed or not all(
        isinstance(v, int | np.integer) and not isinstance(v, bool) and v > 0 for v in items
    ):
        raise ValueError(
            f"{name} must be {' or '.join(map(str, allowed))} positive int(s), got {value!r}"
        )
    return tuple(int(v) for v in items)


def _three_floats(value: Any, name: str) -> tuple[float, float, float]:
    items = (value,) * 3 if isinstance(value, int | float) else tuple(value)
    if len(items) != 3:
        raise ValueError(f"{name} must have 3 values (one per RGB channel), got {value!r}")
    return tuple(float(v) for v in items)


# --- HF preprocessor_config.json --------------------------------------------------------

_HF_IGNORED = {"image_processor_type", "feature_extractor_type", "processor_class"}
# Keys that are fine when absent/null/false (or at their only supported value).
_HF_MUST_BE_OFF = {"do_pad", "pad_size", "use_square_size", "input_data_format"}
_HF_MUST_BE_ON = {"do_resize", "do_rescale", "do_normalize"}


def _parse_hf_config(cfg: Mapping[str, Any], file: str) -> dict[str, Any]:
    """``preprocessor_config.json`` dict -> ClipPreprocess kwargs (see from_hf_dir)."""
    out: dict[str, Any] = {}

    def bad(key: str, why: str) -> ValueError:
        return ValueError(f"{file}: unsupported {key}={cfg[key]!r} ({why})")

    for key, value in cfg.items():
        if key in _HF_IGNORED or key == "do_convert_rgb":  # we always produce RGB
            continue
        if key in _HF_MUST_BE_OFF:
            if value:
                raise bad(key, "not implemented")
        elif key in _HF_MUST_BE_ON:
            if value is False:
                raise bad(key, "ClipPreprocess always resizes, rescales and normalises")
        elif key == "rescale_factor":
            if not math.isclose(float(value), 1 / 255, rel_tol=1e-9):
                raise bad(key, "only 1/255 is supported")
        elif key in ("data_format", "return_tensors"):
            if value not in (None, "channels_first"):  # output layout: ours is always NHWC
                raise bad(key, "output layout is fixed")
        elif key in ("size", "crop_size"):
            out[key] = _hf_size(
                value, key, file, cfg.get("default_to_square") or key == "crop_size"
            )
        elif key == "default_to_square":
            continue  # consumed by "size"
        elif key in ("image_mean", "image_std"):
            out[key[len("image_") :]] = value
        elif key == "resample":
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or value not in _RESAMPLE_MODES
            ):
                raise bad(key, "expected a PIL resampling int")
            out[key] = value
        elif key == "do_center_crop":
            out[key] = bool(value)
        else:
            raise ValueError(f"{file}: unknown preprocessor option {key!r}")
    return out


def _hf_size(value: Any, key: str, file: str, square: bool) -> int | tuple[int, int]:
    """HF size/crop_size (int, [h, w] or dict) -> int shortest edge or (h, w)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return (value, value) if square else value  # CLIP: int size = shortest edge
    if isinstance(value, list | tuple) and len(value) in (1, 2):
        return tuple(value) if len(value) == 2 else _hf_size(value[0], key, file, square)
    if isinstance(value, Mapping):
        present = {k for k, v in value.items() if v is not None}
        if present == {"shortest_edge"} and key == "size":
            return int(value["shortest_edge"])
        if present == {"height", "width"}:
            return int(value["height"]), int(value["width"])
    raise ValueError(
        f"{file}: unsupported {key}={value!r} (expected {{'shortest_edge': n}}, "
        "{'height': h, 'width': w} or an int)"
    )


# --- OpenCLIP open_clip_config.json ------------------------------------------------------

_OPEN_CLIP_KEYS = {"size", "mode", "mean", "std", "interpolation", "resize_mode", "fill_color"}


def _parse_open_clip_config(
    cfg: Mapping[str, Any], image_size: int | Sequence[int] | None, source: str
) -> dict[str, Any]:
    """OpenCLIP config -> ClipPreprocess kwargs (see from_open_clip_config)."""
    is_full_file = "preprocess_cfg" in cfg or "model_cfg" in cfg
    pp = dict(cfg.get("preprocess_cfg") or {}) if is_full_file else dict(cfg)
    for key in pp:
        if key not in _OPEN_CLIP_KEYS:
            raise ValueError(f"{source}: unknown preprocess_cfg option {key!r}")
    if pp.get("mode", "RGB") != "RGB":
        raise ValueError(f"{source}: unsupported preprocess_cfg.mode={pp['mode']!r}")

    if image_size is None:
        image_size = pp.get("size")
    if image_size is None and is_full_file:
        image_size = (cfg.get("model_cfg") or {}).get("vision_cfg", {}).get("image_size")
    if image_size is None:
        raise ValueError(f"{source}: no image size (model_cfg.vision_cfg.image_size)")
    if isinstance(image_size, int):
        height = width = image_size
    elif len(image_size) == 2:
        height, width = image_size
    else:
        raise ValueError(f"{source}: image_size must be an int or [h, w], got {image_size!r}")

    interpolation = pp.get("interpolation") or "bicubic"
    if interpolation not in _OPEN_CLIP_INTERPOLATION:
        raise ValueError(f"{source}: unsupported preprocess_cfg.interpolation={interpolation!r}")
    common = {
        "mean": pp.get("mean") or OPENAI_CLIP_MEAN,
        "std": pp.get("std") or OPENAI_CLIP_STD,
        "resample": _OPEN_CLIP_INTERPOLATION[interpolation],
    }
    resize_mode = pp.get("resize_mode") or "shortest"
    if resize_mode == "squash":
        return {
            **common,
            "size": (height, width),
            "crop_size": (height, width),
            "do_center_crop": False,
        }
    if resize_mode == "shortest" and height == width:
        return {**common, "size": height, "crop_size": (height, width), "crop_rounding": "round"}
    why = (
        "non-square 'shortest' (ResizeKeepRatio)"
        if resize_mode == "shortest"
        else "not implemented"
    )
    raise ValueError(f"{source}: unsupported preprocess_cfg.resize_mode={resize_mode!r} ({why})")
