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


def test_noun_rows_cover_the_nouns():
    rng = np.random.default_rng(0)
    w = prompts.noun_rows(rng, 10, steps=5, per_step=4, multiple=8)
    assert w.shape == (5, 8) and w.max() < 10
    assert set(w[:, :4].ravel()) == set(range(10))  # 20 draws walk two permutations of 10
    every = prompts.noun_rows(rng, 10, steps=3, per_step=0, multiple=8)
    assert every.shape == (3, 16) and (every[:, :10] == np.arange(10)).all()


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
