"""Noun embeddings on a tiny random CLIP written as a HF checkpoint: values, cache, sharding, resume."""

import os
import shutil

import numpy as np
import pytest

from mcla_jax import noun_embeddings as ne
from mcla_jax import wordnet
from vl_jax.models import clip, tiny
from vl_jax.models.clip_tokenizer import load_tokenizer, tokenize
from vl_jax.models.tiny import save_clip as write_checkpoint

_MAKE_ENCODER = ne.make_noun_encoder  # the real one, also while a test has patched it


def _tiny_clip():
    """The tiny CLIP (vl_jax.models.tiny) at 32 px with a 1-layer image tower, filled from numpy
    (no XLA compilation)."""
    return tiny.random_clip(tiny.clip_config(image_size=32, width=32, layers=1, heads=2))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tiny_clip"))
    write_checkpoint(_tiny_clip(), path)
    return path


@pytest.fixture(scope="module")
def nouns():
    # 201 WordNet lemmas spread over the table, plus a repeat (encoded once, returned twice).
    lemmas = list(wordnet.load().lemmas[::410])
    return [*lemmas, lemmas[3]]


@pytest.fixture(scope="module")
def per_prompt(ckpt, nouns):
    """Direct CLIP.encode_text of every (template, noun) for TAC's 7 templates then the single
    one: [8, N, E] (one eager call: each new shape costs ~40 small compilations)."""
    model = clip.from_pretrained(ckpt)
    templates = [*ne.TAC_PROMPTS, *ne.SINGLE_PROMPT]
    texts = [t.format(n) for t in templates for n in nouns]
    ids, mask = tokenize(load_tokenizer(ckpt), texts, context_length=32)
    return np.asarray(model.encode_text(ids, mask)).reshape(len(templates), len(nouns), -1)


def _combine(e, combine="normalized"):
    """[P, N, E] -> [N, E]: normalise each prompt (unless "raw"), average, normalise."""
    if combine == "normalized":
        e = e / np.linalg.norm(e, axis=-1, keepdims=True)
    m = e.mean(0)
    return m / np.linalg.norm(m, axis=-1, keepdims=True)


class _Killed(Exception):
    """Stands in for a kill (not KeyboardInterrupt: pytest would stop the whole session)."""


class _Counter:
    """Wraps make_noun_encoder: counts encoder calls; optionally raises after `fail_after`."""

    def __init__(self, monkeypatch, fail_after=None):
        self.calls, self.fail_after, real = 0, fail_after, _MAKE_ENCODER

        def make(*args, **kwargs):
            enc = real(*args, **kwargs)
            self.encoder = enc

            def counted(*a):
                if self.fail_after is not None and self.calls >= self.fail_after:
                    raise _Killed
                self.calls += 1
                return enc(*a)

            return counted

        monkeypatch.setattr(ne, "make_noun_encoder", make)


@pytest.mark.slow
def test_equals_encode_text_per_prompt(ckpt, nouns, per_prompt, mesh8, monkeypatch):
    counter = _Counter(monkeypatch)
    emb, out = ne.embed_nouns(
        ckpt, nouns, "tac", batch_size=64, cache=False, mesh=mesh8, progress=False
    )
    assert out == nouns and emb.shape == (len(nouns), 32) and emb.dtype == np.float32
    np.testing.assert_allclose(emb, _combine(per_prompt[:7]), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1, atol=1e-6)
    np.testing.assert_array_equal(emb[-1], emb[3])
    assert counter.calls == 4  # 201 distinct nouns in batches of 64
    assert counter.encoder.func._cache_size() == 1  # padded last batch: no recompilation


@pytest.mark.slow
def test_single_prompt_raw_mean_and_templates(ckpt, nouns, per_prompt, mesh8):
    few = nouns[:20]
    single, _ = ne.embed_nouns(ckpt, few, "single", cache=False, mesh=mesh8, progress=False)
    np.testing.assert_allclose(single, _combine(per_prompt[7:, :20]), atol=1e-5)
    raw, _ = ne.embed_nouns(
        ckpt, few, "tac", combine="raw", cache=False, mesh=mesh8, progress=False
    )
    np.testing.assert_allclose(raw, _combine(per_prompt[:7, :20], "raw"), atol=1e-5)
    assert raw.shape == single.shape == (20, 32)
    # "none": the plain mean of the raw prompt embeddings, not normalised (SIC's raw text rows)
    none, _ = ne.embed_nouns(
        ckpt, few, "tac", combine="none", cache=False, mesh=mesh8, progress=False
    )
    np.testing.assert_allclose(none, per_prompt[:7, :20].mean(0), atol=1e-5)
    assert ne.resolve_prompts("sic") == ("a photo of a {}",)  # SIC's code: no full stop
    assert ne.resolve_prompts(["a photo of a {}."]) == ne.resolve_prompts("single")
    assert len(ne.resolve_prompts("tac")) == 7
    for bad in (["a photo"], ["{} and {}"], ["a {0}"], [], "nope"):
        with pytest.raises(ValueError):
            ne.resolve_prompts(bad)


def test_eight_devices_equal_one(ckpt, nouns, mesh8, mesh1):
    e8, _ = ne.embed_nouns(ckpt, nouns, batch_size=64, cache=False, mesh=mesh8, progress=False)
    e1, _ = ne.embed_nouns(ckpt, nouns, batch_size=64, cache=False, mesh=mesh1, progress=False)
    np.testing.assert_allclose(e8, e1, atol=1e-6)


def test_cache_hit_and_key(ckpt, nouns, mesh8, tmp_path, monkeypatch):
    kw = dict(batch_size=64, cache_dir=str(tmp_path), mesh=mesh8, progress=False)
    first, _ = ne.embed_nouns(ckpt, nouns, "tac", **kw)
    (name,) = os.listdir(tmp_path)  # the final file only: batch parts are removed
    with np.load(tmp_path / name, allow_pickle=False) as z:
        assert z["emb"].shape == (len(nouns) - 1, 32)  # distinct nouns
    counter = _Counter(monkeypatch)
    monkeypatch.setattr(clip, "from_pretrained", lambda *a, **k: pytest.fail("model loaded"))
    again, out = ne.embed_nouns(ckpt, nouns, "tac", **kw)
    np.testing.assert_array_equal(again, first)
    assert out == nouns and counter.calls == 0

    texts = sorted(set(nouns))
    key = ne.cache_key(ckpt, ne.TAC_PROMPTS, texts, "normalized", "float32")
    assert name.startswith(f"nouns-{key[:24]}")
    other_keys = {
        ne.cache_key(ckpt, ne.SINGLE_PROMPT, texts, "normalized", "float32"),
        ne.cache_key(ckpt, ne.TAC_PROMPTS, texts, "raw", "float32"),
        ne.cache_key(ckpt, ne.TAC_PROMPTS, texts[1:], "normalized", "float32"),
        ne.cache_key(ckpt, ne.TAC_PROMPTS, texts, "normalized", "bfloat16"),
    }
    assert key not in other_keys and len(other_keys) == 4
    # The same files elsewhere, then rewritten weights (new mtime): both count as other models.
    other = str(tmp_path / "other")
    shutil.copytree(ckpt, other)
    k_other = ne.cache_key(other, ne.TAC_PROMPTS, texts, "normalized", "float32")
    weights = os.path.join(other, "model.safetensors")
    st = os.stat(weights)
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    k_new = ne.cache_key(other, ne.TAC_PROMPTS, texts, "normalized", "float32")
    assert len({key, k_other, k_new}) == 3


@pytest.mark.slow
def test_resume_after_kill(ckpt, nouns, mesh8, tmp_path, monkeypatch):
    kw = dict(prompts="tac", batch_size=64, mesh=mesh8, progress=False)
    full, _ = ne.embed_nouns(ckpt, nouns, cache=False, **kw)
    killer = _Counter(monkeypatch, fail_after=2)
    with pytest.raises(_Killed):
        ne.embed_nouns(ckpt, nouns, cache_dir=str(tmp_path), **kw)
    (parts,) = os.listdir(tmp_path)
    assert parts.endswith(".parts") and len(os.listdir(tmp_path / parts)) == killer.calls == 2
    resumed = _Counter(monkeypatch)
    emb, _ = ne.embed_nouns(ckpt, nouns, cache_dir=str(tmp_path), **kw)
    assert resumed.calls == 2  # 201 - 2 * 64 = 73 nouns left: two more batches, not four
    np.testing.assert_allclose(emb, full, atol=1e-6)
    assert [p for p in os.listdir(tmp_path) if not p.endswith(".npz")] == []
