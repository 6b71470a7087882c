"""Parity of vl_jax.preprocess.ClipPreprocess with transformers' PIL-backend CLIP processor."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import skimage.data
from PIL import Image

from vl_jax.preprocess import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    ClipPreprocess,
    center_crop,
    shortest_edge_size,
)


@pytest.fixture(scope="module", autouse=True)
def _offline():
    """Never touch the network: processors are built locally, nothing is downloaded."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        yield


def _hf_processor(**kwargs):
    # The PIL backend needs no torchvision (the default CLIPImageProcessor would).
    from transformers import CLIPImageProcessorPil

    return CLIPImageProcessorPil(**kwargs)


def _hf_nhwc(processor, image: np.ndarray) -> np.ndarray:
    pixels = processor(images=[Image.fromarray(image)], return_tensors="np")["pixel_values"]
    return pixels[0].transpose(1, 2, 0)  # NCHW -> HWC


def _images() -> dict[str, np.ndarray]:
    rocket = skimage.data.rocket()
    return {
        "astronaut": skimage.data.astronaut(),  # 512x512 square
        "chelsea": skimage.data.chelsea(),  # 300x451
        "coffee": skimage.data.coffee(),  # 400x600
        "rocket": rocket,  # 427x640
        "tall_narrow": np.ascontiguousarray(rocket[:, 300:337]),  # 427x37
        "tiny": np.ascontiguousarray(skimage.data.chelsea()[100:117, 200:209]),  # 17x9
    }


IMAGES = _images()

CONFIGS = {
    "openai_224": ({}, ClipPreprocess()),
    "336": (
        {"size": {"shortest_edge": 336}, "crop_size": {"height": 336, "width": 336}},
        ClipPreprocess(size=336, crop_size=(336, 336)),
    ),
    "nonsquare_crop": (
        {"size": {"shortest_edge": 224}, "crop_size": {"height": 200, "width": 256}},
        ClipPreprocess(size=224, crop_size=(200, 256)),
    ),
    "crop_bigger_than_resize": (  # exercises the zero-padding branch on both axes
        {"size": {"shortest_edge": 100}, "crop_size": {"height": 121, "width": 111}},
        ClipPreprocess(size=100, crop_size=(121, 111)),
    ),
    "exact_hw_no_crop_bilinear": (
        {"size": {"height": 96, "width": 160}, "do_center_crop": False, "resample": 2},
        ClipPreprocess(size=(96, 160), do_center_crop=False, resample=Image.Resampling.BILINEAR),
    ),
    "custom_mean_std": (
        {"image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.25, 0.125]},
        ClipPreprocess(mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 0.125)),
    ),
}


@pytest.mark.parametrize("config", list(CONFIGS))
def test_matches_transformers(config):
    hf_kwargs, ours = CONFIGS[config]
    processor = _hf_processor(**hf_kwargs)
    for name, image in IMAGES.items():
        expected = _hf_nhwc(processor, image)
        got = ours(image)
        assert got.dtype == np.float32 and got.shape == expected.shape, name
        np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0, err_msg=name)
        np.testing.assert_allclose(ours(Image.fromarray(image)), expected, atol=1e-5, rtol=0)


def test_batch_shape_and_values():
    pre = ClipPreprocess()
    images = list(IMAGES.values())
    batch = pre.batch(images)
    assert batch.shape == (len(images), 224, 224, 3) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch[1], pre(images[1]))
    assert pre.batch([]).shape == (0, 224, 224, 3)


def test_rgba_pil_input_matches_transformers():
    rng = np.random.default_rng(0)
    rgba = rng.integers(0, 256, (40, 30, 4), dtype=np.uint8)
    processor = _hf_processor()
    image = Image.fromarray(rgba, "RGBA")
    expected = processor(images=[image], return_tensors="np")["pixel_values"][0]
    np.testing.assert_allclose(ClipPreprocess()(image), expected.transpose(1, 2, 0), atol=1e-5)


@pytest.mark.parametrize("config", ["336", "nonsquare_crop", "exact_hw_no_crop_bilinear"])
def test_from_hf_dir_roundtrip(tmp_path, config):
    hf_kwargs, ours = CONFIGS[config]
    processor = _hf_processor(**hf_kwargs)
    processor.save_pretrained(tmp_path)
    loaded = ClipPreprocess.from_hf_dir(tmp_path)
    assert loaded == ours
    assert ClipPreprocess.from_hf_dir(tmp_path / "preprocessor_config.json") == ours
    image = IMAGES["chelsea"]
    np.testing.assert_allclose(loaded(image), _hf_nhwc(processor, image), atol=1e-5, rtol=0)


def _write_cfg(tmp_path, **cfg):
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(cfg))
    return tmp_path


def test_from_hf_dir_int_sizes_and_defaults(tmp_path):
    loaded = ClipPreprocess.from_hf_dir(_write_cfg(tmp_path, size=288, crop_size=256))
    assert loaded == ClipPreprocess(size=288, crop_size=(256, 256))
    assert ClipPreprocess.from_hf_dir(_write_cfg(tmp_path)) == ClipPreprocess()


@pytest.mark.parametrize(
    ("cfg", "key"),
    [
        ({"crop_pct": 0.9}, "crop_pct"),
        ({"do_resize": False}, "do_resize"),
        ({"rescale_factor": 1.0}, "rescale_factor"),
        ({"size": {"shortest_edge": 224, "longest_edge": 448}}, "size"),
        ({"resample": "bicubic"}, "resample"),
        ({"do_pad": True}, "do_pad"),
    ],
)
def test_from_hf_dir_rejects_unsupported(tmp_path, cfg, key):
    path = _write_cfg(tmp_path, **cfg)
    with pytest.raises(ValueError, match=key) as info:
        ClipPreprocess.from_hf_dir(path)
    assert "preprocessor_config.json" in str(info.value)


def test_from_open_clip_config():
    cfg = {
        "model_cfg": {"embed_dim": 768, "vision_cfg": {"image_size": 336, "patch_size": 14}},
        "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": 0.5, "interpolation": "bilinear"},
    }
    pre = ClipPreprocess.from_open_clip_config(cfg)
    assert pre == ClipPreprocess(
        size=336,
        crop_size=(336, 336),
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        resample=Image.Resampling.BILINEAR,
        crop_rounding="round",
    )
    assert ClipPreprocess.from_open_clip_config(cfg, image_size=224).size == 224
    bare = ClipPreprocess.from_open_clip_config({}, image_size=224)
    assert (bare.mean, bare.std, bare.resample) == (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, 3)
    squash = {"preprocess_cfg": {"resize_mode": "squash"}, "model_cfg": {}}
    pre = ClipPreprocess.from_open_clip_config(squash, image_size=[256, 192])
    assert (pre.size, pre.do_center_crop) == ((256, 192), False)
    assert pre(IMAGES["coffee"]).shape == (256, 192, 3)


@pytest.mark.parametrize(
    ("pp", "size", "key"),
    [
        ({"resize_mode": "longest"}, 224, "resize_mode"),
        ({}, [224, 256], "resize_mode"),  # non-square 'shortest' is ResizeKeepRatio
        ({"interpolation": "lanczos"}, 224, "interpolation"),
        ({"color_jitter": 0.4}, 224, "color_jitter"),
        ({}, None, "image_size"),
    ],
)
def test_from_open_clip_config_rejects_unsupported(pp, size, key):
    with pytest.raises(ValueError, match=key) as info:
        ClipPreprocess.from_open_clip_config({"preprocess_cfg": pp}, size, source="cfg.json")
    assert "cfg.json" in str(info.value)


def _hf_center_crop(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    from transformers.image_transforms import center_crop as hf_center_crop

    return hf_center_crop(image, hw, input_data_format="channels_last")


def _torchvision_center_crop(image: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """torchvision.transforms.functional.center_crop, re-stated in numpy (no torchvision here)."""
    (h, w), (ch, cw) = image.shape[:2], hw
    if ch > h or cw > w:
        top, left = max(ch - h, 0) // 2, max(cw - w, 0) // 2
        bottom, right = max(ch - h + 1, 0) // 2, max(cw - w + 1, 0) // 2
        image = np.pad(image, ((top, bottom), (left, right), (0, 0)))
        h, w = image.shape[:2]
    top, left = round((h - ch) / 2.0), round((w - cw) / 2.0)
    return image[top : top + ch, left : left + cw]


def test_center_crop_rules_exhaustive():
    rng = np.random.default_rng(1)
    for h, w in [(7, 7), (8, 5), (5, 9), (12, 3), (1, 1)]:
        image = rng.integers(1, 256, (h, w, 3), dtype=np.uint8)
        for ch in range(1, 13):
            for cw in (1, 4, 7, 10, 13):
                floor = center_crop(image, (ch, cw))
                np.testing.assert_array_equal(floor, _hf_center_crop(image, (ch, cw)))
                rounded = center_crop(image, (ch, cw), rounding="round")
                np.testing.assert_array_equal(rounded, _torchvision_center_crop(image, (ch, cw)))


def test_shortest_edge_size_truncates():
    assert shortest_edge_size(512, 512, 224) == (224, 224)
    assert shortest_edge_size(300, 451, 224) == (224, int(224 * 451 / 300))
    assert shortest_edge_size(427, 37, 224) == (int(224 * 427 / 37), 224)
    assert shortest_edge_size(3, 1000, 224)[1] == math.floor(224 * 1000 / 3)


def test_rejects_bad_inputs_and_fields():
    pre = ClipPreprocess()
    with pytest.raises(ValueError, match="uint8"):
        pre(np.zeros((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        pre(np.zeros((8, 8, 4), np.uint8))
    with pytest.raises(ValueError, match="crop_size"):
        ClipPreprocess(crop_size=(224,))
    with pytest.raises(ValueError, match="std"):
        ClipPreprocess(std=(0.5, 0.0, 0.5))
    with pytest.raises(ValueError, match="mean"):
        ClipPreprocess(mean=(0.5, 0.5))
