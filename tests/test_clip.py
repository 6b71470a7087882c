"""Parity of our Flax CLIP with transformers' PyTorch CLIP on tiny random checkpoints.

Tolerance: fp32, atol 1e-4 on the projected embeddings (observed ~1e-6).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from hf_reference import CONFIGS, hf_features, image_inputs, make_hf_clip, text_inputs
from jax.sharding import PartitionSpec as P

from vl_jax import parallel
from vl_jax.models import clip

ATOL = 1e-4


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def hf_checkpoint(request, tmp_path_factory):
    spec = CONFIGS[request.param]
    model = make_hf_clip(spec)
    path = tmp_path_factory.mktemp(request.param)
    model.save_pretrained(path)
    return spec, model, str(path)


def test_image_and_text_features_match_hf(hf_checkpoint):
    spec, ref, path = hf_checkpoint
    ours = clip.from_pretrained(path)
    pixels = image_inputs(spec)
    ids, mask = text_inputs(spec)
    want = hf_features(ref, pixels, ids, mask)
    np.testing.assert_allclose(np.asarray(ours.encode_image(pixels)), want["image"], atol=ATOL)
    np.testing.assert_allclose(np.asarray(ours.encode_text(ids, mask)), want["text"], atol=ATOL)


def test_logits_and_jit_match_hf(hf_checkpoint):
    spec, ref, path = hf_checkpoint
    ours = clip.from_pretrained(path)
    pixels, (ids, mask) = image_inputs(spec), text_inputs(spec)
    with torch.no_grad():
        want = ref(
            pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2),
            input_ids=torch.from_numpy(ids).long(),
            attention_mask=torch.from_numpy(mask).long(),
        ).logits_per_image.numpy()
    got = jax.jit(lambda p, i, m: ours(p, i, m))(pixels, ids, mask)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-3)


def test_pooling_mode_follows_hf_config(hf_checkpoint):
    spec, _, path = hf_checkpoint
    text = clip.from_pretrained(path).config.text
    assert text.pooling == ("argmax" if spec["text"]["eos_token_id"] == 2 else "eos")


@pytest.mark.slow
def test_bfloat16_compute_is_close_to_fp32(hf_checkpoint):
    spec, ref, path = hf_checkpoint
    ours = clip.from_pretrained(path, dtype=jnp.bfloat16)
    assert ours.vision.encoder.layers[0].mlp.fc1.kernel[...].dtype == jnp.bfloat16
    assert ours.logit_scale[...].dtype == jnp.float32  # exponentiated: kept in fp32
    pixels = image_inputs(spec)
    got = np.asarray(ours.encode_image(pixels))
    assert got.dtype == np.float32
    want = hf_features(ref, pixels)["image"]
    cos = np.sum(got * want, 1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert np.all(cos > 0.99), cos


@pytest.mark.parametrize("tower", ["vision", "text"])
def test_single_tower_checkpoints(tmp_path, tower):
    spec = CONFIGS["gelu_eos"]
    if tower == "vision":
        cfg = transformers.CLIPVisionConfig(**spec["vision"], projection_dim=24)
        torch.manual_seed(0)
        ref = transformers.CLIPVisionModelWithProjection(cfg).eval()
    else:
        cfg = transformers.CLIPTextConfig(**spec["text"], projection_dim=24)
        torch.manual_seed(0)
        ref = transformers.CLIPTextModelWithProjection(cfg).eval()
    ref.save_pretrained(tmp_path)
    ours = clip.from_pretrained(str(tmp_path))
    with torch.no_grad():
        if tower == "vision":
            pixels = image_inputs(spec)
            want = ref(pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2)).image_embeds
            got = ours.encode_image(pixels)
            assert ours.text is None
            with pytest.raises(ValueError, match="no text tower"):
                ours.encode_text(np.zeros((1, 4), np.int32))
        else:
            ids, mask = text_inputs(spec)
            want = ref(
                input_ids=torch.from_numpy(ids).long(), attention_mask=torch.from_numpy(mask).long()
            ).text_embeds
            got = ours.encode_text(ids, mask)
            assert ours.vision is None
    np.testing.assert_allclose(np.asarray(got), want.numpy(), atol=ATOL)


def test_export_loads_in_transformers(tmp_path):
    """Our HF writer is read by transformers itself and gives the same features."""
    spec = CONFIGS["quickgelu_argmax"]
    ref = make_hf_clip(spec, seed=3)
    ref.save_pretrained(tmp_path / "src")
    ours = clip.from_pretrained(str(tmp_path / "src"))
    clip.save_pretrained(ours, str(tmp_path / "out"))
    again = transformers.CLIPModel.from_pretrained(tmp_path / "out").eval()
    pixels, (ids, mask) = image_inputs(spec), text_inputs(spec)
    want, got = hf_features(ref, pixels, ids, mask), hf_features(again, pixels, ids, mask)
    np.testing.assert_allclose(got["image"], want["image"], atol=1e-6)
    np.testing.assert_allclose(got["text"], want["text"], atol=1e-6)


def test_bad_inputs_raise():
    model = clip.init(
        clip.CLIPConfig(
            vision=clip.VisionConfig(clip.EncoderConfig(32, 1, 4, 64), image_size=30, patch_size=6),
            text=clip.TextConfig(
                clip.EncoderConfig(32, 1, 4, 64), vocab_size=99, context_length=16
            ),
            embed_dim=8,
        )
    )
    with pytest.raises(ValueError, match=r"\[B, 30, 30, 3\]"):
        model.encode_image(np.zeros((1, 3, 30, 30), np.float32))  # NCHW by mistake
    with pytest.raises(ValueError, match="exceeds context_length"):
        model.encode_text(np.zeros((1, 17), np.int32))


def test_load_directly_onto_a_tensor_parallel_mesh(hf_checkpoint, mesh_4x2):
    """Parameters placed on a (data=4, model=2) mesh while loading; results unchanged."""
    spec, ref, path = hf_checkpoint
    ours = clip.from_pretrained(path, shardings=lambda s: parallel.param_shardings(s, mesh_4x2))
    qkv = ours.vision.encoder.layers[0].attn.qkv[...]
    heads = spec["vision"]["num_attention_heads"]
    if heads % 2 == 0:  # heads are split over `model` when they divide evenly
        assert qkv.sharding.spec == P(None, None, parallel.MODEL, None)
        assert {s.data.shape[2] for s in qkv.addressable_shards} == {heads // 2}
    pixels = image_inputs(spec, batch=4)
    x = jax.device_put(pixels, parallel.batch_sharding(mesh_4x2))
    got = jax.jit(lambda m, x: m.encode_image(x))(ours, x)
    np.testing.assert_allclose(np.asarray(got), hf_features(ref, pixels)["image"], atol=ATOL)
