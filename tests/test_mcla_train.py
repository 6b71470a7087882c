"""MCLA training on synthetic frozen features with known structure.

The data are built so that image features alone mislead k-means and the text counterparts
disambiguate: classes A and B differ only along one low-noise image direction (linearly separable,
but 0.08 apart while the isotropic noise elsewhere is ~0.2, so Euclidean neighbours mix them),
class C has two far-apart visual modes that share one text anchor, and 10% of the text
counterparts point at a wrong class. k-means (K = 4) splits C and merges A + B; the same training
without the cross-modal terms stays below 0.9 ACC; MCLA should recover all four classes.
"""

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from configs.mcla.synthetic import get_config
from mcla_jax import train as T
from vl_jax.cluster import kmeans, knn
from vl_jax.metrics import clustering_metrics
from vl_jax.parallel import batch_sharding, replicated


def synthetic(n_per=256, e=32, seed=0, misalign=0.1, sep=0.08, sigma=0.035):
    """``(features [N, E], texts [N, E], labels [N], misaligned [N] bool)``, N = 4 n_per."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(e, e)))
    d = q[:, :6].T  # orthonormal directions
    offset = 3.0 * q[:, 6]  # shared offset, like CLIP's cone (prepare() removes it)

    def noise(n):  # sigma in every direction but d[1], where A and B differ: there only 0.01
        z = sigma * rng.normal(size=(n, e))
        return z + np.outer(0.01 * rng.normal(size=n) - z @ d[1], d[1])

    modes = [  # (mean, class, share of n_per)
        (d[0] + sep / 2 * d[1], 0, 1.0),  # A  } `sep` apart along d[1] only:
        (d[0] - sep / 2 * d[1], 1, 1.0),  # B  } k-means merges them
        (d[2] + 0.9 * d[4], 2, 0.5),  # C, first visual mode
        (d[2] - 0.9 * d[4], 2, 0.5),  # C, second mode, 1.8 away: k-means splits C
        (d[3], 3, 1.0),  # D
    ]
    x = np.concatenate([m + offset + noise(int(s * n_per)) for m, _, s in modes])
    y = np.concatenate([np.full(int(s * n_per), c) for _, c, s in modes])
    # Text anchors agree with the image means but put A and B far apart (text disambiguates).
    anchors = np.stack([d[0] + d[1], d[0] - d[1], d[2], d[3]]) + 0.5 * d[5]
    anchors /= np.linalg.norm(anchors, axis=1, keepdims=True)
    bad = rng.random(len(y)) < misalign
    ty = np.where(bad, (y + rng.integers(1, 4, size=len(y))) % 4, y)
    t = anchors[ty] + 0.05 * rng.normal(size=x.shape)
    t /= np.linalg.norm(t, axis=1, keepdims=True)
    return x.astype(np.float32), t.astype(np.float32), y, bad


@pytest.fixture(scope="module")
def data():
    return synthetic()


@pytest.fixture(scope="module")
def run8(data, mesh8):
    x, t, y, _ = data
    idx, _ = knn(x, 10, mesh=mesh8)
    assign, history = T.train(x, idx, t, config=get_config(), mesh=mesh8, labels=y)
    return idx, assign, history


@pytest.mark.slow
def test_recovers_clusters_and_beats_kmeans(data, run8, mesh8):
    x, _, y, bad = data
    _, assign, history = run8
    km = clustering_metrics(y, kmeans(x, 4, seed=0, mesh=mesh8)[1])["acc"]
    acc = clustering_metrics(y, assign)["acc"]
    assert km < 0.8, f"k-means should be confused by construction, got ACC {km}"
    assert acc >= 0.95 and acc > km + 0.15, (acc, km)
    # misaligned text anchors do not drag their images along: the image evidence wins
    assert clustering_metrics(y[bad], assign[bad], ignore_label=None)["acc"] >= 0.9
    assert history[-1]["acc"] == pytest.approx(acc)
    # without the text side (cross-modal terms off) the same training does not get there
    cfg = get_config()
    for name in ("instance", "consistency", "prototype", "semantic", "cluster"):
        cfg.weights[name] = 0.0
    image_only, _ = T.train(x, run8[0], x, config=cfg, mesh=mesh8)
    assert clustering_metrics(y, image_only)["acc"] < 0.9 < acc
    assert len(history) == get_config().epochs
    assert history[-1]["loss"] < history[0]["loss"]
    assert set(T.LOSS_TERMS) <= set(history[0])  # the adapter is on by default: instance too


def test_one_device_equals_eight(data, run8, mesh1):
    x, t, _, _ = data
    idx, assign8, _ = run8
    assign1, _ = T.train(x, idx, t, config=get_config(), mesh=mesh1)
    np.testing.assert_array_equal(assign1, assign8)


def test_adapter_mlp_nouns_and_disabled_terms(data, mesh1):
    x, _, _, _ = data
    rng = np.random.default_rng(1)
    nouns = rng.normal(size=(40, x.shape[1])).astype(np.float32)
    nouns /= np.linalg.norm(nouns, axis=1, keepdims=True)
    cfg = get_config()
    cfg.epochs, cfg.model.adapter, cfg.model.hidden = 2, True, 16
    cfg.weights.cluster = 0.0
    cfg.weights.prototype = 0.0
    idx = rng.integers(0, len(x), size=(len(x), 5))
    assign, history = T.train(x, idx, nouns=nouns, config=cfg, mesh=mesh1)
    assert assign.shape == (len(x),) and assign.dtype == np.int32
    assert "instance" in history[0] and "cluster" not in history[0]
    assert "prototype" not in history[0]
    assert all(np.isfinite(v) for rec in history for v in rec.values())


def test_bad_inputs(data, mesh1):
    x, t, _, _ = data
    idx = np.zeros((len(x), 3), np.int64)
    with pytest.raises(ValueError, match="texts"):
        T.train(x, idx, config=get_config(), mesh=mesh1)
    with pytest.raises(ValueError, match="shapes differ"):
        T.train(x, idx, t[:-1], config=get_config(), mesh=mesh1)


@pytest.mark.slow
def test_sharded_step_sees_the_global_batch(data, mesh8):
    # The batch statistics (entropy balance, prototypes, cluster contrast) must be global means:
    # one step with the batch split over 8 devices equals the same step on one device.
    x, t, _, _ = data
    u, tt = T.prepare(x)[:64], T.prepare(t)[:64]
    batch = dict(u=u, t=tt, u_nb=u[::-1], t_nb=tt[::-1])
    rng = np.random.default_rng(0)
    unit = lambda: (lambda a: a / np.linalg.norm(a, axis=1, keepdims=True))(
        rng.normal(size=(4, 32))
    )
    targets = {k: unit().astype(np.float32) for k in ("proto_img", "proto_txt", "centres")}
    model = T.MCLAModel(32, 4, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    tx, cfg = optax.adam(1e-2), get_config()
    step = jax.jit(T.make_train_step(graphdef, tx, dict(cfg.weights), dict(cfg.tau)))
    p1, _, m1 = step(params, tx.init(params), batch, targets, 1.0)
    rep = replicated(mesh8)
    sharded = jax.device_put(batch, batch_sharding(mesh8, 2))
    assert len(sharded["u"].sharding.device_set) == 8
    p8, _, m8 = step(jax.device_put(params, rep), jax.device_put(tx.init(params), rep), sharded,
                     jax.device_put(targets, rep), 1.0)  # fmt: skip
    _, li, lt = model(u, tt)
    want = T.L.entropy_balance(jax.nn.softmax(li)) + T.L.entropy_balance(jax.nn.softmax(lt))
    np.testing.assert_allclose(m8["entropy"], want, atol=1e-5)
    for k in m1:
        np.testing.assert_allclose(m8[k], m1[k], atol=1e-5, err_msg=k)
    for a, b in zip(jax.tree.leaves(p1), jax.tree.leaves(p8)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_embed_lr_is_a_second_parameter_group():
    """``embed_lr``: the adapter and the prompt context step with it, the heads with ``lr``
    (Adam's first step moves every parameter with a non-zero gradient by its group's lr)."""
    cfg = get_config()
    cfg.lr, cfg.embed_lr = 0.03, 0.002
    model = T.MCLAModel(8, 3, adapter=True, rngs=nnx.Rngs(0))
    model.context = nnx.Param(np.zeros((2, 4), np.float32))
    params = nnx.split_state(nnx.state(model), nnx.Param, ...)[0]
    tx = T.make_optimizer(cfg)
    grads = jax.tree.map(lambda p: np.ones_like(p), params)
    updates, _ = tx.update(grads, tx.init(params), params)
    step = {k: np.abs(np.concatenate([np.ravel(x) for x in jax.tree.leaves(v)])).max()
            for k, v in nnx.to_pure_dict(updates).items()}  # fmt: skip
    assert step["image_head"] == pytest.approx(0.03) and step["text_head"] == pytest.approx(0.03)
    assert step["adapter"] == pytest.approx(0.002) and step["context"] == pytest.approx(0.002)
    cfg.embed_lr = 0.0  # one group: everything at lr
    one = T.make_optimizer(cfg)
    updates, _ = one.update(grads, one.init(params), params)
    assert max(np.abs(x).max() for x in jax.tree.leaves(updates)) == pytest.approx(0.03)
