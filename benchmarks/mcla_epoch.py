"""`mcla_epoch`: seconds for ONE training epoch of our MCLA trainer (`mcla_jax.train`) vs a
PyTorch implementation of SIC's training step run the way SIC's official loop runs it.

Data: N x 512 unit-norm features, 15 Gaussian blobs (`benchmarks.knn.clip_like_features`,
ImageNet-Dogs with CLIP ViT-B/32 is N = 19,500, K = 15), synthetic text counterparts (one text
direction per blob + noise, unit rows) and 20-NN indices (`vl_jax.cluster.knn`); all of these are
precomputed and not timed. Both sides get the same host float32 arrays.

Ours: `mcla_jax.train.Trainer.epoch`, the epoch `train` runs -- host shuffle + random kNN
neighbour per anchor (indices only), their `device_put`, the jitted `lax.scan` of Adam steps
gathering batches on the device (`make_epoch`), then the jitted full-data pass
(`make_epoch_targets`: prototypes, semantic centres, assignments) and the host fetch of the epoch
metrics and assignments. Default config
(two heads; all loss terms on except `instance`, which needs the adapter), post-warm-up (the
prototype/semantic terms active). Compiled once before timing; every timed call is a later epoch.
A second figure (`sic_seconds_per_epoch`) compares like with like: SIC itself run by our
trainer (`config.method = "sic"`, `mcla_jax.methods.SIC`: one linear head, SIC's three terms and
semantic centres) against the same PyTorch loop.

Baseline (SIC, AAAI'23, as summarised in docs/mcla.md): one `nn.Linear(512, K)` head,
`torch.optim.Adam`, a `DataLoader(TensorDataset(features, knn_idx, texts), shuffle=True,
drop_last=True)`; per epoch one no-grad pass over all N (top floor(0.9 floor(N/K)) rows per
cluster -> image centre v_k -> normalised mean of the 30 nouns nearest to v_k = semantic centre
h_k; nouns: 2,000 synthetic unit text embeddings), then per batch: a random kNN
neighbour per anchor, forward of anchors and neighbours, L = -mean log(p_i . p_j) - 5 H(mean p)
+ 0.1 CE(logits_i, argmax_k <u_i, h_k>), `loss.backward()`, `opt.step()`. fp32, all cores.
Same batch size and samples per epoch (N // B * B) on both sides. `params.torch_no_loader_seconds`
times the same torch step with shuffled index slices instead of the DataLoader (a faster torch
than SIC's own loop), so the reader can see how much of the ratio is the DataLoader.

Full runs add `n{N}_seconds` figures for N in {5k, 20k, 80k} (one timed epoch per side, after
one untimed) showing how the epoch time grows with N; their kNN indices are random same-blob
rows (the epoch's cost does not depend on which rows are neighbours; exact kNN at 80k takes
~40 s and is not what is measured).
"""

from __future__ import annotations

import os

import numpy as np

from benchmarks.common import ForeignLoad, figure, log, register, time_interleaved
from benchmarks.knn import clip_like_features

NAME = "mcla_epoch"
DIM, CLUSTERS, KNN = 512, 15, 20
BATCH = 512  # configs/mcla/common.py train_config().batch_size
SIC_WEIGHTS = dict(neighbour=1.0, entropy=5.0, semantic=0.1)  # SIC's loss, docs/mcla.md
SIC_LR, SIC_WD, SIC_ENTROPY, SIC_SEMANTIC = 1e-4, 1e-4, 5.0, 0.1


SIC_NOUNS, SIC_NEAR = 2000, 30


def _nouns() -> np.ndarray:
    """[SIC_NOUNS, D] unit noun embeddings: around the blobs' text directions, plus noise."""
    rng = np.random.default_rng(2)
    tc = np.random.default_rng(1).standard_normal((CLUSTERS, DIM))
    x = tc[rng.integers(0, CLUSTERS, SIC_NOUNS)] + 1.5 * rng.standard_normal((SIC_NOUNS, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _data(n: int, *, exact_knn: bool):
    """(u [n, D], t [n, D], knn_idx [n, KNN] int64), host arrays; not timed."""
    u, y = clip_like_features(n)
    rng = np.random.default_rng(1)
    tc = rng.standard_normal((CLUSTERS, DIM))
    t = tc[y] + 0.8 * rng.standard_normal((n, DIM))
    t = (t / np.linalg.norm(t, axis=1, keepdims=True)).astype(np.float32)
    if exact_knn:
        from vl_jax.cluster import knn

        idx = np.asarray(knn(u, KNN)[0], np.int64)
    else:  # random rows of the same blob
        order = np.argsort(y, kind="stable")
        start = np.searchsorted(y[order], np.arange(CLUSTERS))
        size = np.bincount(y, minlength=CLUSTERS)
        pick = rng.integers(0, size[y][:, None], size=(n, KNN))
        idx = order[start[y][:, None] + pick].astype(np.int64)
    return u, t, idx


def _ours(u, t, knn_idx, method: str = "mcla"):
    """`() -> loss` running the next epoch of `mcla_jax.train.Trainer` (the object `train`
    drives), and its config; the first epoch (compiling both programs) runs here."""
    from configs.mcla.common import train_config
    from mcla_jax import train as mcla

    cfg = train_config()
    cfg.num_clusters = CLUSTERS
    cfg.batch_size = BATCH
    if method == "sic":  # SIC's settings, as the torch loop below
        cfg.method, cfg.lr, cfg.weight_decay, cfg.b2, cfg.warmup_epochs = (
            "sic",
            SIC_LR,
            SIC_WD,
            0.999,
            0,
        )
        cfg.weights = dict(SIC_WEIGHTS)
        cfg.semantic_nouns = SIC_NEAR
        run = mcla.Trainer(u, t, knn_idx, cfg, aux={"nouns": _nouns()})  # SIC: raw features
    else:
        run = mcla.Trainer(mcla.prepare(u), mcla.prepare(t), knn_idx, cfg)  # prepare: not timed

    def epoch():
        return run.epoch()["loss"]

    epoch()  # compile; past it the warm-up-gated terms are on, as in every timed epoch
    return epoch, cfg


def _torch(u, t, knn_idx, *, loader: bool = True):
    """`() -> loss`: one epoch of SIC's training loop in PyTorch (see the module docstring)."""
    import torch
    import torch.nn.functional as F
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    u_all, t_all = torch.from_numpy(u), torch.from_numpy(t)
    nouns = torch.from_numpy(_nouns())
    nb_all = torch.from_numpy(knn_idx)
    n = len(u)
    m = max(1, int(0.9 * (n // CLUSTERS)))
    head = torch.nn.Linear(DIM, CLUSTERS)
    opt = torch.optim.Adam(head.parameters(), lr=SIC_LR, weight_decay=SIC_WD)
    dl = DataLoader(TensorDataset(u_all, nb_all, t_all), batch_size=BATCH, shuffle=True,
                    drop_last=True, num_workers=0)  # fmt: skip
    steps = n // BATCH

    def batches():
        if loader:
            yield from dl
            return
        perm = torch.randperm(n)[: steps * BATCH].view(steps, BATCH)
        for a in perm:
            yield u_all[a], nb_all[a], t_all[a]

    def epoch():
        with torch.no_grad():  # SIC: logits on all N -> confident rows -> semantic centres
            top = head(u_all).topk(m, dim=0).indices  # [m, K]
            v = F.normalize(u_all[top].mean(0), dim=-1)  # [K, D] image centres
            near = (v @ nouns.T).topk(SIC_NEAR, dim=1).indices  # [K, 30]
            centres = F.normalize(nouns[near].mean(1), dim=-1)  # [K, D]
        total = 0.0
        for ub, nb, _tb in batches():
            j = nb[torch.arange(len(nb)), torch.randint(0, nb.shape[1], (len(nb),))]
            logits = head(ub)
            p = logits.softmax(-1)
            p_nb = head(u_all[j]).softmax(-1)
            cons = -torch.log((p * p_nb).sum(-1).clamp_min(1e-8)).mean()
            pbar = p.mean(0)
            ent = -(pbar * torch.log(pbar.clamp_min(1e-8))).sum()
            with torch.no_grad():
                y = (ub @ centres.T).argmax(-1)
            loss = cons - SIC_ENTROPY * ent + SIC_SEMANTIC * F.cross_entropy(logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
        return total / steps

    loss = epoch()
    if not np.isfinite(loss):
        raise FloatingPointError(f"{NAME}: non-finite torch loss {loss}")
    return epoch


def _one(n: int, *, iters: int, exact_knn: bool, extras: bool) -> dict:
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    u, t, idx = _data(n, exact_knn=exact_knn)
    ours, cfg = _ours(u, t, idx)
    fns = {"ours": ours, "torch": _torch(u, t, idx)}
    if extras:
        fns["ours_sic"] = _ours(u, t, idx, "sic")[0]
        fns["torch_no_loader"] = _torch(u, t, idx, loader=False)
    with ForeignLoad() as load:
        tm = time_interleaved(fns, warmup=1, iters=iters)
    log.info("%s n=%d: %s (foreign load %s cores)", NAME, n, tm, load.cores)
    terms = [k for k, v in cfg.weights.items() if v and k != "instance"]  # instance: no adapter
    out = {
        "t": tm,
        "steps_per_epoch": n // BATCH,
        "samples_per_epoch": n // BATCH * BATCH,
        "ours_loss_terms": {k: float(cfg.weights[k]) for k in terms},
        "foreign_cpu_cores": load.cores,
    }
    if extras:
        out["ours_sic_seconds"] = tm["ours_sic"]
        out["torch_no_loader_seconds"] = tm["torch_no_loader"]
    return out


@register(NAME)
def mcla_epoch_bench(
    quick: bool, *, n: int | None = None, growth: bool | None = None
) -> list[dict]:
    """N = 19,500 (quick 5,000), B = 512, K = 15; growth figures on full runs."""
    import jax
    import torch

    n = n or (5_000 if quick else 19_500)
    growth = (not quick) if growth is None else growth
    iters = 3 if quick else 5
    params = {
        "dim": DIM,
        "k": CLUSTERS,
        "batch": BATCH,
        "knn": KNN,
        "data": "15 Gaussian blobs, unit rows (benchmarks.knn) + synthetic text counterparts",
        "ours_model": "MCLAModel: image + text Linear(512, K) heads, no adapter; optax.adamw",
        "torch_model": "SIC: one Linear(512, K) head; torch.optim.Adam(lr 1e-4, wd 1e-4)",
        "torch_loss_terms": {"neighbour": 1.0, "entropy": SIC_ENTROPY, "semantic": SIC_SEMANTIC},
        "timing": "median s per epoch (batches + steps + full-data targets pass), interleaved, "
        "compiled before timing",
        "cpu_count": os.cpu_count(),
        "jax_version": jax.__version__,
        "torch_version": torch.__version__,
    }
    base = "PyTorch SIC loop (DataLoader, Linear head, Adam), fp32, all threads"
    r = _one(n, iters=iters, exact_knn=True, extras=True)
    t = r.pop("t")
    figs = [
        figure(NAME, "seconds_per_epoch", t["ours"], t["torch"], base, higher_is_better=False,
               params={**params, "n": n, "epochs_timed": iters, **r}),
        figure(NAME, "sic_seconds_per_epoch", t["ours_sic"], t["torch"], base,
               higher_is_better=False,
               params={**params, "n": n, "epochs_timed": iters,
                       "ours_model": "mcla_jax.methods.SIC: one Linear(512, K) head, SIC's terms, "
                                     "optax.adamw(1e-4, wd 1e-4)", **r}),
    ]  # fmt: skip
    if growth:
        for gn in (5_000, 20_000, 80_000):
            r = _one(gn, iters=1, exact_knn=False, extras=False)
            t = r.pop("t")
            figs.append(
                figure(NAME, f"n{gn}_seconds", t["ours"], t["torch"], base,
                       higher_is_better=False,
                       params={**params, "n": gn, "epochs_timed": 1,
                               "knn_indices": "random same-blob rows", **r})
            )  # fmt: skip
    return figs
