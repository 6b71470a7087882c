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


def _torch_tac_head(seq) -> torch.nn.Sequential:
    """TAC's official head (``Linear - BatchNorm1d - ReLU - Linear``) with our head's weights."""
    lin1, lin2 = _torch_linear(seq.layers[0]), _torch_linear(seq.layers[3])
    bn = torch.nn.BatchNorm1d(lin1.out_features)
    return torch.nn.Sequential(lin1, bn, torch.nn.ReLU(), lin2)


def _tac_torch_step(model, batch):
    """TAC's official forward on one batch, in train mode: ``model(text, image)`` then
    ``model(neigh_text, neigh_image)``; returns (loss, cluster term, torch heads)."""
    hi, ht = _torch_tac_head(model.image_head), _torch_tac_head(model.text_head)
    b = {k: torch.from_numpy(v) for k, v in batch.items()}
    pt, pi = ht(b["t"]).softmax(-1), hi(b["u"]).softmax(-1)
    pt_nbt, pi_nb = ht(b["t_nbt"]).softmax(-1), hi(b["u_nb"]).softmax(-1)
    dis = _torch_cc(pi, pt_nbt, 0.5) + _torch_cc(pt, pi_nb, 0.5)
    con = -torch.log((pi * pt).sum(-1)).mean()
    h = lambda p: -(p.mean(0) * torch.log(p.mean(0))).sum()
    return dis + con - 5.0 * (h(pi) + h(pt)), dis, (hi, ht)


def test_tac_loss_and_batchnorm_equal_torch_train_and_eval(batch):
    # TAC's heads with BatchNorm: train-mode loss and running statistics (two forward calls per
    # step, as TAC's loop), then eval-mode outputs, against torch's nn.BatchNorm1d.
    model = methods.TACModel(16, 5, hidden=8, rngs=nnx.Rngs(0))
    want, dis, (hi, ht) = _tac_torch_step(model, batch)
    w = dict(cluster=1.0, consistency=1.0, entropy=5.0)
    total, terms = methods.tac_loss_terms(model, batch, {}, w, {"cluster": 0.5}, 1.0)
    np.testing.assert_allclose(float(total), want.item(), **TOL)
    np.testing.assert_allclose(float(terms["cluster"]), dis.item(), **TOL)
    for ours, ref in ((model.image_head.layers[1], hi[1]), (model.text_head.layers[1], ht[1])):
        np.testing.assert_allclose(ours.mean[...], ref.running_mean.numpy(), atol=1e-6)
        np.testing.assert_allclose(ours.var[...], ref.running_var.numpy(), atol=1e-6)
    model.eval()
    hi.eval()
    x = np.random.default_rng(5).normal(size=(7, 16)).astype(np.float32)
    _, li, _ = model(x, x)
    np.testing.assert_allclose(li, hi(torch.from_numpy(x)).detach().numpy(), atol=1e-5)


def test_tac_head_variants_and_init():
    from scipy import stats

    # Weights: torch's trunc_normal_(std=0.02) with its absolute bounds [-2, 2] (TAC's code).
    model = methods.TACModel(512, 15, hidden=512, rngs=nnx.Rngs(0))
    kernel = np.asarray(model.image_head.layers[0].kernel.value).ravel()
    ref = torch.nn.init.trunc_normal_(torch.empty(512 * 512), std=0.02, a=-2.0, b=2.0).numpy()
    assert abs(kernel.std() - 0.02) < 4e-4 and abs(kernel.mean()) < 2e-4
    assert stats.ks_2samp(kernel, ref).pvalue > 1e-3
    # Biases: torch Linear's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    bias = np.asarray(model.image_head.layers[0].bias.value)
    assert np.abs(bias).max() <= 1 / np.sqrt(512) and bias.std() > 0.5 / np.sqrt(3 * 512)
    assert isinstance(model.image_head.layers[1], methods.BatchNorm1d)
    plain = methods.TACModel(16, 5, hidden=8, batchnorm=False, init="flax", rngs=nnx.Rngs(0))
    assert len(plain.image_head.layers) == 3
    assert not np.any(np.asarray(plain.image_head.layers[0].bias.value))
    with pytest.raises(ValueError, match="head init"):
        methods.TACModel(16, 5, hidden=8, init="xavier", rngs=nnx.Rngs(0))


@pytest.mark.parametrize("mode", ["l2", "decoupled"])
def test_optimizer_equals_torch_adam(mode):
    # "l2": torch Adam(weight_decay) (SIC's), the decay added to the gradient before the
    # moments; "decoupled": torch AdamW. Five steps of a quadratic loss, atol 1e-6.
    import jax
    import jax.numpy as jnp
    import optax

    cfg = get_config()
    cfg.lr, cfg.b1, cfg.b2, cfg.weight_decay, cfg.weight_decay_mode = 1e-2, 0.9, 0.99, 0.05, mode
    rng = np.random.default_rng(0)
    p0, target = rng.normal(size=(6, 3)).astype(np.float32), rng.normal(size=(6, 3))
    loss = lambda p: jnp.sum((p - target.astype(np.float32)) ** 4)
    tx = T.make_optimizer(cfg)
    p, state = jnp.asarray(p0), tx.init(jnp.asarray(p0))
    tp = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    kind = torch.optim.Adam if mode == "l2" else torch.optim.AdamW
    opt = kind([tp], lr=1e-2, betas=(0.9, 0.99), weight_decay=0.05)
    for _ in range(5):
        updates, state = tx.update(jax.grad(loss)(p), state, p)
        p = optax.apply_updates(p, updates)
        opt.zero_grad()
        ((tp - torch.from_numpy(target).float()) ** 4).sum().backward()
        opt.step()
        np.testing.assert_allclose(p, tp.detach().numpy(), atol=1e-6)
    cfg.weight_decay_mode = "l1"
    with pytest.raises(ValueError, match="weight_decay_mode"):
        T.make_optimizer(cfg)


def test_batchnorm_statistics_are_global_over_the_data_axis(mesh1, mesh8):
    # One jitted TAC step with the batch split over 8 devices updates the BatchNorm running
    # statistics exactly as on 1 device: the batch mean/variance are means over the *global*
    # batch (XLA all-reduces them), not per-device statistics.
    import jax
    import optax

    from vl_jax.parallel import batch_sharding, replicated

    rng = np.random.default_rng(3)
    b = {k: rng.normal(size=(64, 16)).astype(np.float32) for k in ("u", "t", "u_nb", "t_nbt")}
    model = methods.TACModel(16, 5, hidden=8, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model)
    tx = optax.adam(1e-3)
    opt = tx.init(nnx.split_state(params, nnx.Param, ...)[0])
    w, tau = dict(cluster=1.0, consistency=1.0, entropy=5.0), {"cluster": 0.5}
    step = T.make_train_step(graphdef, tx, w, tau, methods.tac_loss_terms)
    out = []
    for mesh in (mesh1, mesh8):
        rep = replicated(mesh)
        fn = jax.jit(step, in_shardings=(rep, rep, batch_sharding(mesh, 2), rep, rep))
        p, _, m = fn(params, opt, b, {}, 1.0)
        out.append((jax.device_get(p), float(m["loss"])))
    for path in (("image_head", "layers", 1, "mean"), ("text_head", "layers", 1, "var")):
        a, c = out[0][0], out[1][0]
        for key in path:
            a, c = a[key], c[key]
        np.testing.assert_allclose(a[...], c[...], atol=1e-6)
    np.testing.assert_allclose(out[0][1], out[1][1], rtol=1e-5)
    # and the update happened: the running mean moved from its initial zeros
    assert np.abs(out[0][0]["image_head"]["layers"][1]["mean"][...]).max() > 0


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
    import jax

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
        runs.append((run.assign, hist, jax.device_get(run.params)))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    np.testing.assert_allclose(runs[0][1][-1]["loss"], runs[1][1][-1]["loss"], rtol=1e-4)
    if method == "tac":  # BatchNorm's running variance: global batch statistics on 8 devices
        for head in ("image_head", "text_head"):
            a, b = (r[2][head]["layers"] for r in runs)
            np.testing.assert_allclose(a[1]["var"][...], b[1]["var"][...], rtol=1e-4)
            np.testing.assert_allclose(a[0]["kernel"][...], b[0]["kernel"][...], atol=1e-4)
            # Not the first layer's bias (nor the running mean, which tracks it): BatchNorm
            # removes it, so its gradient is rounding noise that Adam scales up to lr-sized
            # steps, different noise for a different reduction order (docs/mcla.md).
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


@pytest.mark.slow
def test_tac_resumes_with_batchnorm_state(mesh1, tmp_path):
    # The BatchNorm running statistics are part of Trainer.state(): 2 epochs, an Orbax
    # checkpoint, a fresh Trainer restored from it and 1 more epoch == 3 straight epochs.
    import jax

    from vl_jax.checkpoints.train_state import TrainCheckpoints
    from vl_jax.cluster import knn

    x, t, _, _ = _blobs(n=128)
    cfg = get_config()
    cfg.method, cfg.warmup_epochs, cfg.batch_size, cfg.model.hidden = "tac", 0, 32, 8
    cfg.weights = dict(cluster=1.0, consistency=1.0, entropy=5.0)
    args = (x, t, knn(x, 5)[0], cfg, mesh1)
    straight = T.Trainer(*args, knn_txt=knn(t, 5)[0])
    for _ in range(3):
        straight.epoch()
    first = T.Trainer(*args, knn_txt=knn(t, 5)[0])
    for _ in range(2):
        first.epoch()
    with TrainCheckpoints(str(tmp_path / "ck"), meta={"run": 1}) as ck:
        ck.save(2, first.state())
    again = T.Trainer(*args, knn_txt=knn(t, 5)[0])
    with TrainCheckpoints(str(tmp_path / "ck"), meta={"run": 1}) as ck:
        step, state = ck.restore_latest(again.state())
    assert step == 2
    again.load_state(state)
    again.epoch()
    a, b = jax.device_get(straight.params), jax.device_get(again.params)
    stats = a["image_head"]["layers"][1]["var"][...]
    assert not np.allclose(stats, 1.0)  # the running variance was trained, and restored:
    np.testing.assert_allclose(stats, b["image_head"]["layers"][1]["var"][...], atol=1e-6)
    np.testing.assert_array_equal(straight.assign, again.assign)
    np.testing.assert_array_equal(straight.predict(x, t), again.predict(x, t))


def test_sic_neighbour_list_holds_the_sample_itself(mesh1):
    # SIC's code draws the neighbour from the sample's own row and its k nearest (k + 1 rows).
    from configs.mcla import get as get_mcla
    from mcla_jax import experiment

    rng = np.random.default_rng(0)
    u = rng.normal(size=(40, 16)).astype(np.float32)
    nouns = _unit(rng.normal(size=(12, 16))).astype(np.float32)
    config = get_mcla("sic", "runlocal")
    config.knn = 5
    got = experiment.prepare_inputs(config, u, u[:10], nouns, mesh1).knn_img
    assert got.shape == (40, 6)
    np.testing.assert_array_equal(got[:, 0], np.arange(40))
    d = np.linalg.norm(u[:, None] - u[None], axis=-1) + np.diag(np.full(40, np.inf))
    np.testing.assert_array_equal(np.sort(got[:, 1:], 1), np.sort(np.argsort(d, 1)[:, :5], 1))
    config.knn_self = False  # our variant: k neighbours, never the sample itself
    assert experiment.prepare_inputs(config, u, u[:10], nouns, mesh1).knn_img.shape == (40, 5)


def test_sic_semantic_centres_average_raw_noun_embeddings():
    # space.combine = "none": nouns are raw text embeddings; the nearest 3 by cosine are found
    # on their directions and their *raw* rows averaged (a longer embedding weighs more).
    rng = np.random.default_rng(4)
    u = rng.normal(size=(40, 16)).astype(np.float32)
    raw = (_unit(rng.normal(size=(30, 16))) * rng.uniform(1, 10, size=(30, 1))).astype(np.float32)
    model = methods.SICModel(16, 4, rngs=nnx.Rngs(0))
    cfg = get_config()
    cfg.semantic_nouns, cfg.num_clusters = 3, 4
    got = methods._sic_targets(model, u, u, Blocks.plan(40, 64), {"nouns": raw}, 6, cfg)
    logits = u @ np.asarray(model.head.kernel.value) + np.asarray(model.head.bias.value)
    for k in range(4):
        v = u[np.argsort(-logits[:, k], kind="stable")[:6]].mean(0)
        near = np.argsort(-(_unit(raw) @ v), kind="stable")[:3]
        np.testing.assert_allclose(got["centres"][k], _unit(raw[near].mean(0)), **TOL)


@pytest.mark.slow
def test_tac_notrain_transductive_clusters_the_evaluation_split():
    # TAC's script: k-means on the evaluation split's [n(u) ; t~] itself; the train split is not
    # read. Inductive (ours): fit on train, nearest centroid for the evaluation rows.
    from mcla_jax import baselines
    from vl_jax.cluster import kmeans

    x, _, y, centres = _blobs(n=96, e=16)
    nouns = _unit(centres + 0.05).astype(np.float32)
    junk = np.random.default_rng(9).normal(size=(50, 16)).astype(np.float32)
    got = baselines.tac_notrain(junk, x, nouns, 4, 0, n_init=3)
    t = T.build_text_counterparts(x, nouns)
    want = kmeans(np.concatenate([_unit(x), t], 1), 4, n_init=3, seed=0, spherical=True)[1]
    np.testing.assert_array_equal(got, np.asarray(want))
    from vl_jax.metrics import clustering_metrics

    assert clustering_metrics(y, got)["acc"] > 0.95
    ind = baselines.tac_notrain(x, x, nouns, 4, 0, transductive=False, n_init=3)
    assert clustering_metrics(y, ind)["acc"] > 0.95


def test_label_selected_follows_sic_early_stopping():
    from mcla_jax.experiment import label_selected

    accs = [0.3, 0.5, 0.4, 0.45, 0.49, 0.48, 0.47, 0.9]  # 5 epochs without gain after epoch 2
    per_epoch = {str(e + 1): {"acc": a, "nmi": a / 2, "ari": a / 3} for e, a in enumerate(accs)}
    assert label_selected(per_epoch) == {"epoch": 2, "acc": 0.5, "nmi": 0.25, "ari": 0.5 / 3}
    assert label_selected(per_epoch, patience=10)["epoch"] == 8
    assert label_selected({}) == {}
