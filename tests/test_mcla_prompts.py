"""MCLA's prompt-learning text path (`mcla_jax.prompts`): parity with transformers' CLIP text
tower at the initial context, gradients only into the context (and adapter / heads), the
trainer with prompts on 1 and 8 devices."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.mcla.synthetic import get_config
from mcla_jax import prompts
from mcla_jax import train as T
from vl_jax.cluster import knn
from vl_jax.models.loaded import ClipCheckpoint

DEMO_CLIP = os.path.join(
    os.path.dirname(prompts.__file__), "..", "vl_jax", "assets", "demo", "clip"
)
NOUNS = ["circle", "rectangle", "triangle", "red", "blue", "green", "shape", "yellow"]


@pytest.fixture(scope="module")
def clip_ck(mesh8):
    return ClipCheckpoint(DEMO_CLIP, mesh=mesh8)


def _text(ck, mesh, nouns=NOUNS):
    tokens = prompts.prompt_tokens(ck.tokenizer, nouns, ck.config.text.context_length)
    return prompts.PromptText(ck.model.text, tokens, mesh)


def test_tokens_put_the_context_after_bos(clip_ck):
    tok = prompts.prompt_tokens(clip_ck.tokenizer, NOUNS, clip_ck.config.text.context_length)
    init = clip_ck.tokenizer("a photo of a", add_special_tokens=False)["input_ids"]
    assert tok.n_ctx == len(init) == 4 and tok.ids.shape[1] % 8 == 0
    assert (tok.ids[:, 1:5] == np.array(init)).all()
    with pytest.raises(ValueError, match="no tokens"):
        prompts.prompt_tokens(clip_ck.tokenizer, NOUNS, 16, init="")


def test_initial_context_equals_transformers_text_tower(clip_ck, mesh8):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    text = _text(clip_ck, mesh8)
    frozen, ctx = text.arrays(), jnp.asarray(text.init_context())
    rows = jnp.arange(len(NOUNS))
    ours = np.asarray(jax.jit(text.embed_rows)(frozen, ctx, rows))
    bank = np.asarray(jax.jit(lambda f, c: text.bank(f, c, chunk=8))(frozen, ctx))
    hf = transformers.CLIPModel.from_pretrained(DEMO_CLIP).eval()
    enc = clip_ck.tokenizer([f"a photo of a {w}." for w in NOUNS], padding=True,
                            return_tensors="pt")  # fmt: skip
    with torch.no_grad():
        ref = hf.get_text_features(**enc)
    ref = getattr(ref, "pooler_output", ref).numpy()
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    np.testing.assert_allclose(bank, ref, atol=1e-5)
    # A different context gives different embeddings (the context is really used). Not a
    # constant shift: every LayerNorm of a pre-LN tower removes that.
    noise = jax.random.normal(jax.random.key(0), ctx.shape)
    other = np.asarray(jax.jit(text.embed_rows)(frozen, ctx + noise, rows))
    assert np.abs(other - ref).max() > 1e-2


def test_noun_rows_cover_each_length_group():
    rng = np.random.default_rng(0)
    lengths = np.array([3] * 6 + [4] * 3 + [9])  # the 9's share (0.4) is raised to one noun
    groups = prompts.subset_groups(lengths, per_step=4, multiple=8)
    assert [g.count for g in groups] == [2, 1, 1] and all(g.width == 8 for g in groups)
    assert sorted(np.concatenate([g.rows for g in groups])) == list(range(10))
    assert all(g.length == lengths[g.rows].max() for g in groups)
    w = prompts.noun_rows(rng, groups, steps=5)
    assert w.shape == (5, 8 * len(groups))
    lo = 0
    for g in groups:  # each group's columns walk permutations of its rows only
        real = w[:, lo : lo + g.count].ravel()
        assert set(real) == set(g.rows.tolist())
        lo += g.width


def test_length_buckets_partition_with_least_padding():
    lengths = np.array([3, 3, 3, 4, 4, 6, 10, 3])
    one = prompts.length_buckets(lengths, 1)
    assert len(one) == 1 and one[0][1] == 10
    four = prompts.length_buckets(lengths, 4)
    assert sorted(np.concatenate([r for r, _ in four])) == list(range(8))
    assert [length for _, length in four] == [3, 4, 6, 10]
    two = prompts.length_buckets(lengths, 2)  # best cut: {3, 4} | {6, 10} (8 padded slots)
    assert [length for _, length in two] == [4, 10]


@pytest.mark.slow
def test_shared_prefix_path_equals_the_full_sequence_path(clip_ck, mesh8):
    """``pool_shared_prefix`` (prefix once, suffixes cut at end-of-text, buckets, stratified
    subsets) against ``prompts.embed`` (the whole padded sequence through ``from_embeddings``)
    at a context away from its initial value: embeddings and context gradients at 1e-5."""
    nouns = [*NOUNS, "dark olive green thing", "pale violet red"]
    tokens = prompts.prompt_tokens(clip_ck.tokenizer, nouns, clip_ck.config.text.context_length)
    text = prompts.PromptText(clip_ck.model.text, tokens, mesh8).with_subset(6)
    assert len(text.buckets) > 1 and len(text.subset) > 1
    frozen = text.arrays()
    tower = nnx.merge(text.graphdef, frozen["tower"])
    ids, mask = jnp.asarray(tokens.ids), jnp.asarray(tokens.mask)
    ctx = jnp.asarray(text.init_context()) + 0.3 * jax.random.normal(
        jax.random.key(1), (tokens.n_ctx, text.init_context().shape[1])
    )
    ref = np.asarray(prompts.embed(tower, ctx, ids, mask))
    rows = jnp.arange(len(nouns))
    np.testing.assert_allclose(jax.jit(text.embed_rows)(frozen, ctx, rows), ref, atol=1e-5)
    np.testing.assert_allclose(jax.jit(text.bank)(frozen, ctx), ref, atol=1e-5)
    w = text.noun_rows(np.random.default_rng(0), 1)[0]
    sub = jax.jit(text.embed_subset)(frozen, ctx, jnp.asarray(w))
    np.testing.assert_allclose(sub, ref[w], atol=1e-5)
    probe = jax.random.normal(jax.random.key(2), ref.shape)

    def plain(c):
        return jnp.sum(prompts.embed(tower, c, ids, mask) * probe)

    def fast(c):
        return jnp.sum(text.all_rows(frozen, c) * probe)

    g_ref, g = jax.jit(jax.grad(plain))(ctx), jax.jit(jax.grad(fast))(ctx)
    np.testing.assert_allclose(g, g_ref, atol=1e-5)
    assert np.abs(g_ref).max() > 1e-3


def _data(ck, n_per=64, seed=0):
    """Raw image features near the text embeddings of 4 nouns (4 classes), a common offset."""
    text = _text(ck, ck.mesh)
    ctx = jnp.asarray(text.init_context())
    emb = np.asarray(jax.jit(text.embed_rows)(text.arrays(), ctx, jnp.arange(len(NOUNS))))
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(4), n_per)
    raw = emb[y] + 0.15 * rng.normal(size=(len(y), emb.shape[1])) + 0.3
    return raw.astype(np.float32), y


def _run(ck, mesh, raw, epochs=2, per_step=0):
    cfg = get_config()
    cfg.epochs, cfg.model.adapter = epochs, True
    cfg.prompt.nouns_per_step = per_step
    text = _text(ck, mesh)
    emb = np.asarray(text.bank(text.arrays(), jnp.asarray(text.init_context())))
    t = T.prepare(T.build_text_counterparts(raw, emb, cfg.tau.text))
    u = T.prepare(raw)
    run = T.Trainer(u, t, knn(u, 10)[0], cfg, mesh, text=text, raw=raw)
    return run, text, [run.epoch() for _ in range(epochs)]


@pytest.mark.slow
def test_gradients_reach_only_the_context_adapter_and_heads(clip_ck, mesh8):
    raw, _ = _data(clip_ck)
    before = jax.device_get(nnx.to_pure_dict(_text(clip_ck, mesh8).state))
    run, text, hist = _run(clip_ck, mesh8, raw)
    assert all(np.isfinite(h["loss"]) and h["instance"] > 0 for h in hist)
    # One compiled program each for the epoch's steps and the targets pass: no recompiles.
    assert run._epoch_fn._cache_size() == 1 and run._targets_fn._cache_size() == 1
    after = jax.device_get(nnx.to_pure_dict(text.state))
    jax.tree.map(np.testing.assert_array_equal, before, after)  # CLIP bit-identical
    params = jax.device_get(run.params)
    assert set(params.keys()) == {"image_head", "text_head", "adapter", "context"}
    assert np.abs(params["context"][...] - text.init_context()).max() > 1e-4
    assert np.abs(params["adapter"]["kernel"][...]).max() > 1e-4


@pytest.mark.slow
def test_prompts_one_device_equals_eight(clip_ck, mesh1, mesh8):
    raw, _ = _data(clip_ck)
    r8, _, h8 = _run(clip_ck, mesh8, raw, per_step=3)
    r1, _, h1 = _run(clip_ck, mesh1, raw, per_step=3)
    np.testing.assert_array_equal(r8.assign, r1.assign)
    for a, b in zip(h8, h1):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-4)
    c8, c1 = jax.device_get(r8.params["context"][...]), jax.device_get(r1.params["context"][...])
    np.testing.assert_allclose(c8, c1, atol=1e-4)  # two epochs of Adam on reordered sums
