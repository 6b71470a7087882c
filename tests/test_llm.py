"""Parity of our Llama-family decoder with transformers on tiny random checkpoints.

Tolerance: fp32, atol 1e-4 on the logits of real (unpadded) tokens (observed ~1e-6).
"""

import json

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
import torch
import transformers

from vl_jax.checkpoints import CheckpointError, SafetensorsReader, save_safetensors
from vl_jax.models import llm

ATOL = 1e-4
VOCAB = 97

# Jitted entry points (one compile per shape, instead of one per eager op: much faster here).
_call = jax.jit(lambda m, ids, mask: m(ids, mask))


@jax.jit
def _step(model, x, positions, kv_mask, cache, index):
    """forward (+ cache) -> logits, as the generation engine runs it."""
    hidden, cache = model.forward(x, positions, kv_mask, cache, index)
    return model.logits(hidden), cache


_COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-5,
               max_position_embeddings=64)  # fmt: skip

# Llama 3.1 scaling: with head_dim 8 and original length 64 the four rotary frequencies fall in
# the kept, smoothed and slowed bands.
LLAMA3_ROPE = dict(rope_type="llama3", rope_theta=10000.0, factor=8.0, low_freq_factor=1.0,
                   high_freq_factor=4.0, original_max_position_embeddings=64)  # fmt: skip

# Each differs from the others in what the loader and the decoder must get right.
CONFIGS = {
    "llama_gqa": (transformers.LlamaConfig, dict(_COMMON)),
    "llama3_rope": (transformers.LlamaConfig, dict(_COMMON, rope_parameters=LLAMA3_ROPE)),
    "qwen2_tied": (
        transformers.Qwen2Config,
        dict(_COMMON, num_key_value_heads=1, tie_word_embeddings=True),
    ),
    "mistral_window": (transformers.MistralConfig, dict(_COMMON, sliding_window=4)),
}


def make_hf(name: str, seed: int = 0):
    cls, kw = CONFIGS[name]
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cls(**kw)).eval()
    with torch.no_grad():  # non-trivial norms and biases, so that a swapped key would show
        for pname, p in model.named_parameters():
            if "norm" in pname or pname.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def checkpoint(request, tmp_path_factory):
    ref = make_hf(request.param)
    path = tmp_path_factory.mktemp(request.param)
    ref.save_pretrained(path)
    return request.param, ref, str(path)


def right_padded(batch=3, length=12, seed=1):
    rng = np.random.RandomState(seed)
    ids = rng.randint(0, VOCAB, size=(batch, length)).astype(np.int32)
    mask = np.ones_like(ids)
    for row, n in enumerate([length, 7, 3][:batch]):
        mask[row, n:] = 0
    return ids, mask


def left_padded(batch=3, length=12, seed=2):
    ids, mask = right_padded(batch, length, seed)
    return ids, mask[:, ::-1].copy()


def hf_logits(ref, ids, mask, positions=None):
    with torch.no_grad():
        return ref(
            input_ids=torch.from_numpy(ids).long(),
            attention_mask=torch.from_numpy(mask).long(),
            position_ids=None if positions is None else torch.from_numpy(positions).long(),
        ).logits.numpy()


def test_logits_match_hf(checkpoint):
    name, ref, path = checkpoint
    model = llm.from_pretrained(path)
    assert (model.lm_head is None) == (name == "qwen2_tied")
    ids, mask = right_padded()
    got, want = np.asarray(_call(model, ids, mask)), hf_logits(ref, ids, mask)
    real = mask.astype(bool)
    np.testing.assert_allclose(got[real], want[real], atol=ATOL)


def test_kv_cache_decode_matches_full_forward(checkpoint):
    """Left-padded prefill + one-token decode steps with positions cumsum(mask) - 1 (as HF
    generate uses) = the full forward of HF with the same positions."""
    _, ref, path = checkpoint
    model = llm.from_pretrained(path)
    ids, mask = left_padded()
    b, t = ids.shape
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)
    x = model.embed(ids)
    prefill = 5
    cache = model.init_cache(b, t)
    kv_mask = mask.astype(bool)  # slots of left padding stay masked; decoded tokens are real
    logits, cache = _step(model, x[:, :prefill], positions[:, :prefill], kv_mask, cache, 0)
    steps = [np.asarray(logits)]
    for i in range(prefill, t):
        i32 = np.int32(i)  # traced: one compile for all decode steps
        logits, cache = _step(model, x[:, i : i + 1], positions[:, i : i + 1], kv_mask, cache, i32)
        steps.append(np.asarray(logits))
    cached = np.concatenate(steps, axis=1)
    real = mask.astype(bool)
    want = hf_logits(ref, ids, mask, positions)
    np.testing.assert_allclose(cached[real], want[real], atol=ATOL)


# ---- checkpoints -------------------------------------------------------------------------------


def _rewrite(src: str, dst, edit) -> str:
    """Copies a checkpoint directory with its tensors passed through `edit(dict) -> dict`."""
    dst.mkdir()
    reader = SafetensorsReader.from_dir(src)
    tensors = edit({k: np.array(reader[k]) for k in reader})
    save_safetensors(tensors, str(dst / "model.safetensors"))
    with open(f"{src}/config.json") as f:
        (dst / "config.json").write_text(f.read())
    return str(dst)


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    ref = make_hf("llama_gqa")
    path = tmp_path_factory.mktemp("llama")
    ref.save_pretrained(path)
    return ref, str(path)


def test_missing_extra_and_misshaped_keys_are_named(llama_dir, tmp_path):
    _, path = llama_dir
    key = "model.layers.1.mlp.up_proj.weight"

    def drop(t):
        del t[key]
        return t

    with pytest.raises(CheckpointError, match=f"missing key '{key}'"):
        llm.from_pretrained(_rewrite(path, tmp_path / "missing", drop))
    extra = lambda t: {**t, "model.layers.0.mlp.extra.weight": np.zeros(3, np.float32)}
    with pytest.raises(CheckpointError, match=r"unexpected key 'model\.layers\.0\.mlp\.extra"):
        llm.from_pretrained(_rewrite(path, tmp_path / "extra", extra))
    shrink = lambda t: {**t, key: t[key][:-1]}
    with pytest.raises(
        CheckpointError, match=rf"'{key}' has shape \(39, 32\), expected \(40, 32\)"
    ):
        llm.from_pretrained(_rewrite(path, tmp_path / "shape", shrink))


@pytest.mark.parametrize(
    "config", [transformers.GPT2Config(n_layer=1), transformers.GemmaConfig(num_hidden_layers=1)]
)
def test_unsupported_architecture_is_named(tmp_path, config):
    config.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=f"unsupported architecture '{config.model_type}'"):
        llm.from_pretrained(str(tmp_path))


def test_sharded_checkpoint_with_index(llama_dir, tmp_path):
    ref, _ = llama_dir
    ref.save_pretrained(tmp_path, max_shard_size="20KB")
    with open(tmp_path / "model.safetensors.index.json") as f:
        assert len(set(json.load(f)["weight_map"].values())) > 1
    ids, mask = right_padded()
    got = np.asarray(_call(llm.from_pretrained(str(tmp_path)), ids, mask))
    want = hf_logits(ref, ids, mask)
    np.testing.assert_allclose(got[mask == 1], want[mask == 1], atol=ATOL)


def test_bfloat16_weights_load(llama_dir, tmp_path):
    ref, _ = llama_dir
    ref.to(torch.bfloat16).save_pretrained(tmp_path)
    ref = ref.float()  # now holds the bf16-rounded values in fp32
    assert SafetensorsReader.from_dir(str(tmp_path))["lm_head.weight"].dtype == ml_dtypes.bfloat16
    ids, mask = right_padded()
    got = np.asarray(_call(llm.from_pretrained(str(tmp_path)), ids, mask))  # upcast to fp32 on load
    np.testing.assert_allclose(got[mask == 1], hf_logits(ref, ids, mask)[mask == 1], atol=ATOL)
    bf16 = llm.from_pretrained(str(tmp_path), dtype=jnp.bfloat16)
    assert bf16.layers[0].attn.q[...].dtype == jnp.bfloat16
    assert np.isfinite(np.asarray(_call(bf16, ids, mask))).all()
