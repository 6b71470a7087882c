"""SIC and TAC in the framework: their loss terms and targets against direct PyTorch
transcriptions of the official losses (docs/mcla.md), and short training runs."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx

from configs.mcla.synthetic import get_config
from mcla_jax import methods
from mcla_jax import train as T
from mcla_jax.rowpass import Blocks

TOL = dict(rtol=1e-5, atol=1e-5)


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(0)
    b, e = 48, 16
    f = lambda: rng.normal(size=(b, e)).astype(np.float32)
    return dict(u=f(), t=_unit(f()), u_nb=f(), t_nb=_unit(f()), u_nbt=f(), t_nbt=_unit(f()))


def _torch_linear(layer: nnx.Linear) -> torch.nn.Linear:
    w = np.asarray(layer.kernel.value)
    lin = torch.nn.Linear(*w.shape)
    with torch.no_grad():
        lin.weight.copy_(torch.from_numpy(w.T.copy()))
        lin.bias.copy_(torch.from_numpy(np.array(layer.bias.value)))
    return lin


def test_sic_loss_equals_torch_transcription(batch):
    model = methods.SICModel(16, 5, rngs=nnx.Rngs(0))
    centres = _unit(np.random.default_rng(1).normal(size=(5, 16))).astype(np.float32)
    w = dict(neighbour=1.0, entropy=5.0, semantic=0.1)
    total, terms = methods.sic_loss_terms(model, batch, {"centres": centres}, w, {}, 1.0)

    head = _torch_linear(model.head)  # SIC's official step, restated in torch
    u, u_nb = torch.from_numpy(batch["u"]), torch.from_numpy(batch["u_nb"])
    logits = head(u)
    p, p_nb = logits.softmax(-1), head(u_nb).softmax(-1)
    cons = -torch.log((p * p_nb).sum(-1).clamp_min(1e-8)).mean()
    pbar = p.mean(0)
    ent = -(pbar * torch.log(pbar)).sum()
    y = (u @ torch.from_numpy(centres).T).argmax(-1)
    want = cons - 5.0 * ent + 0.1 * F.cross_entropy(logits, y)
    np.testing.assert_allclose(float(total), want.item(), **TOL)
    np.testing.assert_allclose(float(terms["neighbour"]), cons.item(), **TOL)
    np.testing.assert_allclose(float(terms["entropy"]), -ent.item(), **TOL)


@pytest.mark.parametrize("block_rows", [64, 16])  # one block; three, the last overlapping
def test_sic_semantic_centres_follow_sic(batch, block_rows):
    # h_k = n(mean of the 3 nouns nearest to the mean raw feature of cluster k's top-m rows)
    rng = np.random.default_rng(2)
    u = rng.normal(size=(40, 16)).astype(np.float32)
    nouns = _unit(rng.normal(size=(30, 16))).astype(np.float32)
    model = methods.SICModel(16, 4, rngs=nnx.Rngs(0))
    cfg = get_config()
    cfg.semantic_nouns, cfg.num_clusters = 3, 4
    blocks = Blocks.plan(40, block_rows)
    got = methods._sic_targets(model, u, u, blocks, {"nouns": nouns}, 6, cfg)
    logits = u @ np.asarray(model.head.kernel.value) + np.asarray(model.head.bias.value)
    for k in range(4):
        top = np.argsort(-logits[:, k], kind="stable")[:6]
        v = _unit(u[top].mean(0))
        near = np.argsort(-(nouns @ v), kind="stable")[:3]
        np.testing.assert_allclose(got["centres"][k], _unit(nouns[near].mean(0)), **TOL)
    np.testing.assert_array_equal(got["assign"], logits.argmax(1))


def _torch_cc(p_a, p_b, tau):  # TAC's cluster-level contrastive loss, as in its code
    k = p_a.shape[1]
    v = F.normalize(torch.cat([p_a.T, p_b.T]), dim=1)
    s = v @ v.T / tau
    s = s.masked_fill(torch.eye(2 * k, dtype=torch.bool), float("-inf"))
    pos = torch.cat([torch.arange(k, 2 * k), torch.arange(k)])
    return F.cross_entropy(s, pos)


def test_tac_loss_equals_torch_transcription(batch):
    model = methods.TACModel(16, 5, hidden=8, rngs=nnx.Rngs(0))
    w = dict(cluster=1.0, consistency=1.0, entropy=5.0)
    total, terms = methods.tac_loss_terms(model, batch, {}, w, {"cluster": 0.5}, 1.0)

    def head(seq):
        lin1, lin2 = _torch_linear(seq.layers[0]), _torch_linear(seq.layers[2])
        return lambda x: lin2(torch.relu(lin1(x)))

    hi, ht = head(model.image_head), head(model.text_head)
    b = {k: torch.from_numpy(v) for k, v in batch.items()}
    pi, pt = hi(b["u"]).softmax(-1), ht(b["t"]).softmax(-1)
    pi_nb, pt_nbt = hi(b["u_nb"]).softmax(-1), ht(b["t_nbt"]).softmax(-1)
    dis = _torch_cc(pi, pt_nbt, 0.5) + _torch_cc(pt, pi_nb, 0.5)
    con = -torch.log((pi * pt).sum(-1)).mean()
    h = lambda p: -(p.mean(0) * torch.log(p.mean(0))).sum()
    want = dis + con - 5.0 * (h(pi) + h(pt))
    np.testing.assert_allclose(float(total), want.item(), **TOL)
    np.testing.assert_allclose(float(terms["cluster"]), dis.item(), **TOL)


def _blobs(seed=0, n=512, k=4, e=32):
    rng = np.random.default_rng(seed)
    centres = _unit(rng.normal(size=(k, e)))
    y = rng.integers(0, k, n)
    x = _unit(centres[y] + 0.35 * rng.normal(size=(n, e)) / np.sqrt(e)).astype(np.float32)
    t = _unit(centres[y] + 0.5 * rng.normal(size=(n, e)) / np.sqrt(e)).astype(np.float32)
    return x, t, y, centres


@pytest.mark.parametrize("method", ["sic", "tac"])
@pytest.mark.slow
def test_sic_and_tac_train_on_8_devices_like_1(method, mesh1, mesh8):
    from vl_jax.cluster import knn
    from vl_jax.metrics import clustering_metrics

    x, t, y, centres = _blobs()
    cfg = get_config()
    cfg.method, cfg.epochs, cfg.warmup_epochs = method, 4, 0
    if method == "sic":
        cfg.weights = dict(neighbour=1.0, entropy=5.0, semantic=0.1)
        aux, knn_txt = {"nouns": _unit(centres + 0.1).astype(np.float32)}, None
    else:
        cfg.model.hidden = 16
        cfg.weights = dict(cluster=1.0, consistency=1.0, entropy=5.0)
        aux, knn_txt = None, knn(t, 10)[0]
    idx = knn(x, 10)[0]
    runs = []
    for mesh in (mesh1, mesh8):
        run = T.Trainer(x, t, idx, cfg, mesh, knn_txt=knn_txt, aux=aux)
        hist = [run.epoch() for _ in range(cfg.epochs)]
        runs.append((run.assign, hist))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_allclose(runs[0][1][-1]["loss"], runs[1][1][-1]["loss"], rtol=1e-4)
    assert clustering_metrics(y, runs[1][0])["acc"] > 0.9  # well separated blobs


def test_tac_needs_text_neighbours(mesh1):
    x, t, _, _ = _blobs(n=64)
    cfg = get_config()
    cfg.method = "tac"
    cfg.weights = dict(cluster=1.0, consistency=1.0, entropy=5.0)
    with pytest.raises(ValueError, match="knn_txt"):
        T.Trainer(x, t, np.zeros((64, 3), np.int64), cfg, mesh1)


def test_prepare_uses_the_train_mean():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(20, 4)) + 3, rng.normal(size=(5, 4)) + 3
    pa, mean = methods.prepare(a, "centre")
    pb, _ = methods.prepare(b, "centre", mean)
    np.testing.assert_allclose(pb, _unit(b - a.mean(0)), atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(pa, axis=1), 1.0, atol=1e-6)
    assert methods.prepare(a, "raw")[1] is None
    with pytest.raises(ValueError):
        methods.prepare(a, "whiten")


@pytest.mark.slow
def test_centre_init_starts_at_the_nearest_centre(mesh1):
    x, t, _, _ = _blobs(n=256)
    from vl_jax.cluster import kmeans

    c, assign, _ = kmeans(x, 4, n_init=3, seed=0)
    model = methods.MCLAModel(32, 4, rngs=nnx.Rngs(0))
    methods.init_from_centres(model, np.asarray(c), np.asarray(c), scale=5.0)
    np.testing.assert_array_equal(np.argmax(model(x, t)[1], -1), np.asarray(assign))
    with pytest.raises(ValueError, match="linear heads"):
        methods.init_from_centres(methods.TACModel(32, 4, hidden=8, rngs=nnx.Rngs(0)), c)


def test_vocabulary_mask_keeps_words_the_tokenizer_knows(tmp_path):
    from mcla_jax.noun_embeddings import vocabulary_mask
    from vl_jax.models import tiny

    tiny.write_clip(str(tmp_path / "clip"))
    mask = vocabulary_mask(str(tmp_path / "clip"), ["dog", "photo", "xylophonist", "a b c d"], 1)
    np.testing.assert_array_equal(mask, [True, True, False, False])  # CLIP's BPE: whole words
