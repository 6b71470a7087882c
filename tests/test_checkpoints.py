"""Checkpoint loading: safetensors I/O, sharded checkpoints, hub ids, OpenCLIP, corrupt files."""

import copy
import json
import os
import shutil

import ml_dtypes
import numpy as np
import pytest
import torch
import transformers
from hf_reference import CONFIGS, hf_features, image_inputs, make_hf_clip, text_inputs
from safetensors.numpy import load_file as st_load_numpy
from safetensors.torch import save_file as st_save_torch

from vl_jax.checkpoints import CheckpointError, SafetensorsReader, save_safetensors
from vl_jax.models import clip

ATOL = 1e-4

# Same activation in both towers and argmax pooling: what the OpenCLIP format can express.
OPEN_CLIP_SPEC = dict(
    text=dict(vocab_size=64, hidden_size=32, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=4, max_position_embeddings=12, eos_token_id=2,
              bos_token_id=62, pad_token_id=0, hidden_act="quick_gelu"),
    vision=dict(hidden_size=48, intermediate_size=192, num_hidden_layers=2,
                num_attention_heads=3, image_size=32, patch_size=8, hidden_act="quick_gelu"),
    projection_dim=16,
)  # fmt: skip


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory):
    spec = CONFIGS["gelu_eos"]
    model = make_hf_clip(spec)
    path = tmp_path_factory.mktemp("hf")
    model.save_pretrained(path)
    return spec, model, str(path)


def _rewrite(src: str, dst: str, edit) -> str:
    """Copies a checkpoint dir, applying `edit(dict of arrays)` to its weights."""
    shutil.copytree(src, dst)
    tensors = st_load_numpy(os.path.join(dst, "model.safetensors"))
    edit(tensors)
    save_safetensors(tensors, os.path.join(dst, "model.safetensors"))
    return dst


# ---- safetensors I/O ---------------------------------------------------------------------------


def test_reader_reads_bf16_and_writer_is_compatible(tmp_path):
    t = {"w": torch.randn(3, 5).to(torch.bfloat16), "b": torch.arange(4, dtype=torch.int64)}
    st_save_torch(t, str(tmp_path / "a.safetensors"))
    r = SafetensorsReader([str(tmp_path / "a.safetensors")])
    assert r["w"].dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(r["w"].astype(np.float32), t["w"].float().numpy())
    np.testing.assert_array_equal(r["b"], np.arange(4))
    ours = {"x": np.arange(6, dtype=np.float32).reshape(2, 3) / 7, "s": np.float32(2.5)}
    save_safetensors(ours, str(tmp_path / "b.safetensors"))
    back = st_load_numpy(str(tmp_path / "b.safetensors"))  # the reference library reads ours
    np.testing.assert_array_equal(back["x"], ours["x"])
    assert back["s"].shape == () and back["s"] == 2.5


def test_truncated_or_garbage_safetensors(tmp_path, hf_dir):
    _, _, src = hf_dir
    dst = shutil.copytree(src, tmp_path / "trunc")
    f = dst / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        clip.from_pretrained(str(dst))
    f.write_bytes(b"\x00" * 4)
    with pytest.raises(CheckpointError, match="truncated safetensors"):
        clip.from_pretrained(str(dst))
    f.write_bytes(b"this is not a safetensors file at all")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        clip.from_pretrained(str(dst))


# ---- verification of the mapping table ---------------------------------------------------------


def test_missing_key_is_named(tmp_path, hf_dir):
    _, _, src = hf_dir
    key = "vision_model.encoder.layers.1.mlp.fc2.bias"
    dst = _rewrite(src, tmp_path / "missing", lambda t: t.pop(key))
    with pytest.raises(CheckpointError, match=f"missing key '{key}'"):
        clip.from_pretrained(str(dst))


def test_wrong_shape_is_named(tmp_path, hf_dir):
    _, _, src = hf_dir
    key = "text_model.encoder.layers.0.self_attn.k_proj.weight"
    dst = _rewrite(src, tmp_path / "shape", lambda t: t.update({key: t[key][:, :-1].copy()}))
    with pytest.raises(
        CheckpointError, match=rf"key '{key}' has shape \(32, 31\), expected \(32, 32\)"
    ):
        clip.from_pretrained(str(dst))


def test_extra_key_is_named(tmp_path, hf_dir):
    _, _, src = hf_dir
    key = "vision_model.encoder.layers.2.mlp.fc1.weight"
    dst = _rewrite(src, tmp_path / "extra", lambda t: t.update({key: np.zeros((4, 4), np.float32)}))
    with pytest.raises(CheckpointError, match=f"unexpected key '{key}'"):
        clip.from_pretrained(str(dst))


@pytest.mark.slow
def test_position_ids_buffers_are_tolerated(tmp_path, hf_dir):
    spec, ref, src = hf_dir
    key = "text_model.embeddings.position_ids"  # older HF checkpoints carry this buffer
    dst = _rewrite(src, tmp_path / "pos", lambda t: t.update({key: np.arange(16)[None]}))
    pixels = image_inputs(spec)
    got = clip.from_pretrained(str(dst)).encode_image(pixels)
    np.testing.assert_allclose(np.asarray(got), hf_features(ref, pixels)["image"], atol=ATOL)


def test_config_that_does_not_match_weights(tmp_path, hf_dir):
    _, _, src = hf_dir
    dst = shutil.copytree(src, tmp_path / "cfg")
    cfg = json.loads((dst / "config.json").read_text())
    cfg["vision_config"]["intermediate_size"] = 40
    (dst / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(
        CheckpointError,
        match=r"vision_model.encoder.layers.0.mlp.fc1.weight' has shape \(37, 32\), expected \(40, 32\)",
    ):
        clip.from_pretrained(str(dst))


# ---- checkpoint layouts ------------------------------------------------------------------------


@pytest.mark.slow
def test_sharded_checkpoint_with_index(tmp_path, hf_dir):
    spec, ref, _ = hf_dir
    ref.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 2
    ours = clip.from_pretrained(str(tmp_path))
    pixels, (ids, mask) = image_inputs(spec), text_inputs(spec)
    want = hf_features(ref, pixels, ids, mask)
    np.testing.assert_allclose(np.asarray(ours.encode_image(pixels)), want["image"], atol=ATOL)
    np.testing.assert_allclose(np.asarray(ours.encode_text(ids, mask)), want["text"], atol=ATOL)
    shard = sorted(tmp_path.glob("model-*.safetensors"))[1]
    shard.unlink()
    with pytest.raises(CheckpointError, match=f"shard file.*missing: {shard.name}"):
        clip.from_pretrained(str(tmp_path))


def test_bf16_checkpoint(tmp_path, hf_dir):
    spec, ref, _ = hf_dir
    copy.deepcopy(ref).to(torch.bfloat16).save_pretrained(tmp_path)
    ours = clip.from_pretrained(str(tmp_path))  # bf16 weights, fp32 compute
    pixels = image_inputs(spec)
    want = hf_features(ref, pixels)["image"]
    np.testing.assert_allclose(np.asarray(ours.encode_image(pixels)), want, atol=0.05)


def test_pickle_checkpoints_are_refused(tmp_path, hf_dir):
    _, _, src = hf_dir
    dst = shutil.copytree(src, tmp_path / "bin")
    (dst / "model.safetensors").unlink()
    (dst / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(CheckpointError, match="only safetensors"):
        clip.from_pretrained(str(dst))


# ---- hub ids -----------------------------------------------------------------------------------


def _fake_hub_cache(cache: str, repo: str, files_from: str):
    """The layout huggingface_hub's cache uses: models--org--name/{refs/main, snapshots/<sha>}."""
    sha = "0123456789abcdef0123456789abcdef01234567"
    base = os.path.join(cache, "models--" + repo.replace("/", "--"))
    os.makedirs(os.path.join(base, "refs"))
    with open(os.path.join(base, "refs", "main"), "w") as f:
        f.write(sha)
    shutil.copytree(files_from, os.path.join(base, "snapshots", sha))


def test_hub_id_from_offline_cache(tmp_path, hf_dir):
    spec, ref, src = hf_dir
    _fake_hub_cache(str(tmp_path), "tiny-org/tiny-clip", src)
    ours = clip.from_pretrained("tiny-org/tiny-clip", cache_dir=str(tmp_path))
    pixels = image_inputs(spec)
    np.testing.assert_allclose(
        np.asarray(ours.encode_image(pixels)), hf_features(ref, pixels)["image"], atol=ATOL
    )


def test_hub_id_offline_and_not_cached_is_a_clear_error(tmp_path):
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # set by conftest: nothing may touch the network
    with pytest.raises(
        FileNotFoundError, match="HF_HUB_OFFLINE is set and it is not in the local cache"
    ):
        clip.from_pretrained("openai/clip-vit-base-patch32", cache_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no such checkpoint directory"):
        clip.from_pretrained("./no/such/dir")


# ---- OpenCLIP ----------------------------------------------------------------------------------


def _ln(x, w, b, eps=1e-5):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _open_clip_blocks(x, sd, prefix, layers, heads, mask):
    """OpenAI-CLIP residual attention blocks, written from the paper/code semantics in numpy."""
    b, t, d = x.shape
    hd = d // heads
    for i in range(layers):
        p = f"{prefix}.resblocks.{i}."
        h = _ln(x, sd[p + "ln_1.weight"], sd[p + "ln_1.bias"])
        q, k, v = np.split(h @ sd[p + "attn.in_proj_weight"].T + sd[p + "attn.in_proj_bias"], 3, -1)
        q, k, v = (a.reshape(b, t, heads, hd).transpose(0, 2, 1, 3) for a in (q, k, v))
        s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        a = (s / s.sum(-1, keepdims=True)) @ v
        a = a.transpose(0, 2, 1, 3).reshape(b, t, d)
        x = x + a @ sd[p + "attn.out_proj.weight"].T + sd[p + "attn.out_proj.bias"]
        h = _ln(x, sd[p + "ln_2.weight"], sd[p + "ln_2.bias"])
        h = h @ sd[p + "mlp.c_fc.weight"].T + sd[p + "mlp.c_fc.bias"]
        h = h / (1 + np.exp(-1.702 * h))  # QuickGELU
        x = x + h @ sd[p + "mlp.c_proj.weight"].T + sd[p + "mlp.c_proj.bias"]
    return x


def open_clip_reference(sd, cfg, pixels, ids):
    """Independent numpy forward of an OpenCLIP ViT state dict (no code shared with vl_jax)."""
    v, t = cfg["model_cfg"]["vision_cfg"], cfg["model_cfg"]["text_cfg"]
    p, width = v["patch_size"], v["width"]
    b, hh, ww, _ = pixels.shape
    x = pixels.transpose(0, 3, 1, 2).reshape(b, 3, hh // p, p, ww // p, p)
    x = x.transpose(0, 2, 4, 1, 3, 5).reshape(b, -1, 3 * p * p)  # conv1 as a matmul over patches
    x = x @ sd["visual.conv1.weight"].reshape(width, -1).T
    cls = np.broadcast_to(sd["visual.class_embedding"], (b, 1, width))
    x = np.concatenate([cls, x], 1) + sd["visual.positional_embedding"]
    x = _ln(x, sd["visual.ln_pre.weight"], sd["visual.ln_pre.bias"])
    x = _open_clip_blocks(x, sd, "visual.transformer", v["layers"], width // v["head_width"], 0.0)
    img = _ln(x[:, 0], sd["visual.ln_post.weight"], sd["visual.ln_post.bias"]) @ sd["visual.proj"]
    length = ids.shape[1]
    x = sd["token_embedding.weight"][ids] + sd["positional_embedding"][:length]
    causal = np.triu(np.full((length, length), -np.inf), 1)
    x = _open_clip_blocks(x, sd, "transformer", t["layers"], t["heads"], causal)
    x = _ln(x, sd["ln_final.weight"], sd["ln_final.bias"])
    txt = x[np.arange(len(ids)), ids.argmax(-1)] @ sd["text_projection"]
    return img, txt


@pytest.mark.slow
def test_open_clip_round_trip_and_reference(tmp_path):
    ref = make_hf_clip(OPEN_CLIP_SPEC, seed=5)
    ref.save_pretrained(tmp_path / "hf")
    ours = clip.from_pretrained(str(tmp_path / "hf"))
    clip.save_pretrained(ours, str(tmp_path / "oc"), fmt="open_clip")
    assert sorted(os.listdir(tmp_path / "oc")) == [
        "open_clip_config.json",
        "open_clip_model.safetensors",
    ]

    sd = {
        k: v.astype(np.float64)
        for k, v in st_load_numpy(str(tmp_path / "oc/open_clip_model.safetensors")).items()
    }
    cfg = json.loads((tmp_path / "oc/open_clip_config.json").read_text())
    # The format's layout: fused in_proj [3D, D], projections as [D, E] matrices, conv1 weights.
    assert sd["visual.transformer.resblocks.0.attn.in_proj_weight"].shape == (144, 48)
    assert sd["transformer.resblocks.1.attn.in_proj_bias"].shape == (96,)
    assert sd["visual.proj"].shape == (48, 16) and sd["text_projection"].shape == (32, 16)
    assert sd["visual.conv1.weight"].shape == (48, 3, 8, 8)
    assert sd["positional_embedding"].shape == (12, 32) and sd["logit_scale"].shape == ()
    assert cfg["model_cfg"]["quick_gelu"] is True

    pixels, (ids, mask) = image_inputs(OPEN_CLIP_SPEC), text_inputs(OPEN_CLIP_SPEC)
    want = hf_features(ref, pixels, ids, mask)
    ref_img, ref_txt = open_clip_reference(sd, cfg, pixels.astype(np.float64), ids)
    np.testing.assert_allclose(ref_img, want["image"], atol=ATOL)  # the export means what HF means
    np.testing.assert_allclose(ref_txt, want["text"], atol=ATOL)

    back = clip.from_pretrained(str(tmp_path / "oc"))
    assert back.config.text.pooling == "argmax"
    np.testing.assert_allclose(np.asarray(back.encode_image(pixels)), want["image"], atol=ATOL)
    np.testing.assert_allclose(np.asarray(back.encode_text(ids, mask)), want["text"], atol=ATOL)


@pytest.mark.parametrize(
    "edit, match",
    [
        (
            lambda c: c["model_cfg"]["vision_cfg"].update(timm_model_name="vit_base"),
            "timm_model_name",
        ),
        (
            lambda c: c["model_cfg"]["text_cfg"].update(hf_model_name="roberta-base"),
            "hf_model_name",
        ),
        (lambda c: c["model_cfg"]["vision_cfg"].update(layers=[3, 4, 6, 3]), "ResNet"),
        (lambda c: c["model_cfg"]["text_cfg"].update(pool_type="last"), "pool_type"),
    ],
)
@pytest.mark.slow
def test_unsupported_open_clip_configs_are_refused(tmp_path, edit, match):
    model = clip.init(
        clip.CLIPConfig(
            vision=clip.VisionConfig(clip.EncoderConfig(32, 1, 4, 64), image_size=16, patch_size=8),
            text=clip.TextConfig(clip.EncoderConfig(32, 1, 4, 64), vocab_size=50, context_length=8),
            embed_dim=8,
        )
    )
    clip.save_pretrained(model, str(tmp_path), fmt="open_clip")
    cfg = json.loads((tmp_path / "open_clip_config.json").read_text())
    edit(cfg)
    (tmp_path / "open_clip_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=match):
        clip.from_pretrained(str(tmp_path))


def test_transformers_is_never_asked_for_remote_code(monkeypatch, hf_dir):
    """Loading must not reach `trust_remote_code` paths."""
    seen = []
    orig = transformers.AutoConfig.from_pretrained

    def spy(*a, **kw):
        seen.append(kw.get("trust_remote_code"))
        return orig(*a, **kw)

    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", spy)
    clip.from_pretrained(hf_dir[2])
    assert seen and not any(seen)
