"""MCLA losses against direct numpy transcriptions of their equations (docs/mcla.md)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mcla_jax import losses as L

B, E, K, M = 24, 8, 5, 30


def _norm(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _softmax(s, axis=-1):
    s = s - s.max(axis=axis, keepdims=True)
    e = np.exp(s)
    return e / e.sum(axis=axis, keepdims=True)


def _probs(rng, b=B, k=K, scale=2.0):
    return _softmax(scale * rng.normal(size=(b, k)))


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def np_infonce(x, y, tau):
    s = _norm(x) @ _norm(y).T / tau
    row = -np.mean([np.log(np.exp(s[i, i]) / np.exp(s[i]).sum()) for i in range(len(s))])
    col = -np.mean([np.log(np.exp(s[i, i]) / np.exp(s[:, i]).sum()) for i in range(len(s))])
    return 0.5 * (row + col)


def test_text_counterpart(rng):
    u, t = rng.normal(size=(B, E)), _norm(rng.normal(size=(M, E)))
    a = _softmax(_norm(u) @ t.T / 0.05)
    want = _norm(a @ t)
    np.testing.assert_allclose(L.text_counterpart(u, t, 0.05), want, atol=1e-5)


def test_instance_alignment(rng):
    x, y = rng.normal(size=(B, E)), rng.normal(size=(B, E))
    np.testing.assert_allclose(L.instance_alignment(x, y, 0.3), np_infonce(x, y, 0.3), atol=1e-5)


def test_neighbour_and_cross_modal_consistency(rng):
    p, q = _probs(rng), _probs(rng)
    want = -np.mean(np.log(np.sum(p * q, axis=1)))
    np.testing.assert_allclose(L.neighbour_consistency(p, q), want, atol=1e-5)
    np.testing.assert_allclose(L.cross_modal_consistency(p, q), want, atol=1e-5)
    onehot = np.eye(K)[rng.integers(0, K, B)]
    assert float(L.neighbour_consistency(onehot, onehot)) == pytest.approx(0.0, abs=1e-6)


def test_entropy_balance(rng):
    p = _probs(rng)
    pbar = p.mean(0)
    np.testing.assert_allclose(L.entropy_balance(p), np.sum(pbar * np.log(pbar)), atol=1e-5)
    uniform = np.full((B, K), 1.0 / K)
    np.testing.assert_allclose(L.entropy_balance(uniform), -np.log(K), atol=1e-5)


def test_soft_prototypes_and_prototype_alignment(rng):
    p, x = _probs(rng), rng.normal(size=(B, E))
    c = np.stack([_norm(sum(p[i, k] * x[i] for i in range(B))) for k in range(K)])
    np.testing.assert_allclose(L.soft_prototypes(p, x), c, atol=1e-5)
    c2 = _norm(rng.normal(size=(K, E)))
    np.testing.assert_allclose(L.prototype_alignment(c, c2, 0.5), np_infonce(c, c2, 0.5), atol=1e-5)


def test_semantic_alignment(rng):
    logits, t, h = rng.normal(size=(B, K)), rng.normal(size=(B, E)), _norm(rng.normal(size=(K, E)))
    y = np.argmax(t @ h.T, axis=1)
    logp = np.log(_softmax(logits))
    want = -np.mean(logp[np.arange(B), y])
    np.testing.assert_allclose(L.semantic_alignment(logits, t, h), want, atol=1e-5)


def test_cluster_contrastive_matches_torch(rng):
    import torch  # the test extra installs it: this reference must run in CI

    pa, pb = _probs(rng), _probs(rng)
    tau = 0.5
    # Contrastive Clustering / TAC's ClusterLoss, transcribed in torch
    a, b = torch.tensor(pa.T), torch.tensor(pb.T)
    v = torch.nn.functional.normalize(torch.cat([a, b]), dim=1)
    s = v @ v.T / tau
    n = 2 * K
    total = 0.0
    for m in range(n):
        pos = (m + K) % n
        others = [j for j in range(n) if j != m]
        total += -(s[m, pos] - torch.logsumexp(s[m, others], 0))
    want = float(total / n)
    np.testing.assert_allclose(L.cluster_contrastive(pa, pb, tau), want, atol=1e-5)


@pytest.mark.slow
def test_gradients_finite_even_at_one_hot(rng):
    # one-hot logits drive p.q to ~0 for disagreeing pairs: the eps floor must keep grads finite
    x, y = jnp.asarray(rng.normal(size=(B, E))), jnp.asarray(rng.normal(size=(B, E)))
    la, lb = jnp.asarray(60.0 * rng.normal(size=(B, K))), jnp.asarray(rng.normal(size=(B, K)))
    h = jnp.asarray(_norm(rng.normal(size=(K, E))))

    def total(x, la, lb):
        pa, pb = jax.nn.softmax(la), jax.nn.softmax(lb)
        return (
            L.instance_alignment(x, y)
            + L.neighbour_consistency(pa, pb)
            + L.cross_modal_consistency(pa, pa[::-1])
            + L.entropy_balance(pa)
            + L.prototype_alignment(L.soft_prototypes(pa, x), L.soft_prototypes(pb, y))
            + L.semantic_alignment(la, y, h)
            + L.cluster_contrastive(pa, pb)
        )

    grads = jax.grad(total, argnums=(0, 1, 2))(x, la, lb)
    for g in grads:
        assert np.all(np.isfinite(np.asarray(g)))
        assert float(jnp.abs(g).max()) > 0
