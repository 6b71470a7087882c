"""Accelerator paths on CPU: the fused-attention route and the prepared device check.

Attention: `transformer.attention` (jax.nn.dot_product_attention, XLA on CPU, cuDNN on a GPU for
bf16/fp16) equals the explicit einsum + float32 softmax it replaced (`llm.grouped_attention`):
float32 atol 1e-5, bfloat16 atol 2e-2 (one bf16 rounding of probabilities and output), on
grouped-query heads, a causal + left-padding mask and fully masked (padding) rows.
"""

import jax.numpy as jnp
import numpy as np
import pytest

from vl_jax.models import llm, transformer


def _qkv(b=3, t=6, s=6, h=4, kv=2, e=8, seed=0):
    r = np.random.default_rng(seed)
    q = r.normal(size=(b, t, h, e)).astype(np.float32)
    k = r.normal(size=(b, kv, s, e)).astype(np.float32)
    v = r.normal(size=(b, kv, s, e)).astype(np.float32)
    # Causal over slots, rows left-padded by 0, 2 and 5 (row 2's first 5 queries see nothing).
    pad = np.arange(s)[None, :] >= np.array([[0], [2], [5]])[:b]
    causal = np.arange(s)[None, :] <= np.arange(t)[:, None] + (s - t)
    mask = causal[None, None] & pad[:, None, None, :]
    return q, k, v, mask


@pytest.mark.parametrize("dtype, atol", [(jnp.float32, 1e-5), (jnp.bfloat16, 2e-2)])
def test_fused_attention_equals_grouped_einsum(dtype, atol):
    q, k, v, mask = _qkv()
    q, k, v = (jnp.asarray(a, dtype) for a in (q, k, v))
    want = llm.grouped_attention(q, k, v, jnp.asarray(mask))
    got = transformer.attention(q, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), mask)
    assert got.dtype == want.dtype == dtype
    np.testing.assert_allclose(np.float32(got), np.float32(want), atol=atol, rtol=0)
    # Fully masked rows (left padding) average v uniformly on both paths, never NaN.
    assert np.isfinite(np.float32(got)).all()


def test_attention_implementation_choice():
    pick = transformer.attention_implementation
    assert pick(jnp.bfloat16, 64, 577, platform="gpu") == "cudnn"  # ViT-L/14-336 encoder
    assert pick(jnp.float16, 128, 600, platform="gpu") == "cudnn"  # a 7B decoder's prefill
    assert pick(jnp.bfloat16, 128, 1, platform="gpu") == "xla"  # a decode step
    assert pick(jnp.float32, 64, 577, platform="gpu") == "xla"  # no fused float32 kernel
    assert pick(jnp.bfloat16, 72, 577, platform="gpu") == "cudnn"  # SigLIP so400m: 1152 / 16
    assert pick(jnp.bfloat16, 160, 577, platform="gpu") == "xla"  # head dim the kernel refuses
    assert pick(jnp.bfloat16, 64, 577, platform="cpu") == "xla"
    assert pick(jnp.bfloat16, 64, 577, platform="tpu") == "xla"


def test_llm_prefill_with_static_start_reads_only_written_slots():
    """A prefill at a static cache start attends slots [0, start + T) only; the result equals
    the traced-start path that attends all S slots (the rest are masked by causality)."""
    cfg = llm.LLMConfig(vocab_size=50, hidden_size=32, intermediate_size=48, num_layers=2,
                        num_heads=4, num_kv_heads=2, head_dim=8)  # fmt: skip
    model = llm.init(cfg, seed=0)
    b, t, s = 2, 5, 12
    ids = jnp.asarray(np.random.default_rng(0).integers(0, 50, (b, t)))
    mask = jnp.asarray(np.arange(t)[None] >= np.array([[0], [2]]))
    pos = jnp.maximum(jnp.cumsum(mask, -1) - 1, 0)
    kv_mask = jnp.concatenate([mask, jnp.ones((b, s - t), bool)], 1)
    x = model.embed(ids)
    static, cache_a = model.forward(x, pos, kv_mask, model.init_cache(b, s), 0)
    traced, cache_b = model.forward(x, pos, kv_mask, model.init_cache(b, s), jnp.int32(0))
    real = np.asarray(mask)
    np.testing.assert_allclose(np.asarray(static)[real], np.asarray(traced)[real], atol=1e-5)
    # Cache slots of real tokens agree (padding slots hold garbage no query ever attends).
    for a, c in zip(cache_a.k + cache_a.v, cache_b.k + cache_b.v):
        a, c = np.asarray(a)[:, :, :t].transpose(0, 2, 1, 3), np.asarray(c)[:, :, :t]
        np.testing.assert_allclose(a[real], c.transpose(0, 2, 1, 3)[real], atol=1e-5)


# ---- the prepared device check (benchmarks.accelerator) ----------------------------------------


@pytest.mark.slow
def test_device_check_tiny_runs_every_section(tmp_path):
    """`--tiny` runs every section's code path on the 8 fake CPU devices: both sides built
    from one random state dict, outputs checked (CLIP within bf16 rounding, first answer
    tokens, kNN recall and equality with `knn()`), records in the common figure format."""
    import json

    from benchmarks import accelerator
    from benchmarks.common import FIELDS

    out = tmp_path / "check"
    assert accelerator.main(["--tiny", "--out", str(out)]) == 0
    figs = [json.loads(line) for line in (out / "accelerator.jsonl").read_text().splitlines()]
    assert all(tuple(f) == FIELDS for f in figs)
    metrics = {f["metric"] for f in figs}
    assert {"clip_images_per_second", "clip_fraction_of_bf16_peak", "llava_answers_per_second",
            "llava_decode_tokens_per_second", "instructblip_answers_per_second",
            "instructblip_decode_tokens_per_second",
            "mcla_epoch_seconds", "sic_epoch_seconds", "knn_seconds_n2048"} == metrics  # fmt: skip
    assert all(f["params"]["mesh"] == {"data": 8, "model": 1} for f in figs)
    clip = next(f for f in figs if f["metric"] == "clip_images_per_second")
    assert clip["params"]["relative_diff_vs_torch"] < 0.05
    for f in figs:
        if "answers" in f["metric"]:
            assert f["params"]["first_token_agreement"] >= 0.5
    machine = json.loads((out / "machine.json").read_text())
    assert machine["measured_bf16_flops"] > 0 and machine["nominal_bf16_flops"] is None
    assert not (out / "errors.txt").exists()


def test_device_check_bad_input(tmp_path, capsys):
    from benchmarks import accelerator

    assert accelerator.main(["--out", str(tmp_path), "--only", "clip,nope"]) == 2
    assert accelerator.main(["--out", str(tmp_path), "--only", "clip"]) == 2  # no GPU here
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "unknown section(s) ['nope']; known: clip, llava, instructblip, mcla, knn",
        "no accelerator: the full sizes need a GPU (use --tiny on CPU)",
    ]
