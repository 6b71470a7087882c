"""The clustering sections of the accelerator check (`benchmarks.accelerator`): one MCLA
epoch at N x 768, K = 1000 (and SIC's, vs the same loop in PyTorch), and exact kNN at N x 768,
k = 20 vs a blocked torch matmul + topk."""

from __future__ import annotations

from benchmarks.accelerator import NAME, Ctx, log


def clustered_features(n: int, d: int, k: int, seed: int):
    """(x [n, d] float32 unit rows around k random centres, labels [n]); built in chunks."""
    import numpy as np

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, d), dtype=np.float32)
    y = rng.integers(0, k, n)
    x = np.empty((n, d), np.float32)
    for i in range(0, n, 1 << 16):
        j = min(n, i + (1 << 16))
        x[i:j] = centres[y[i:j]] + rng.standard_normal((j - i, d), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x, y


def _same_cluster_neighbours(y, k: int, rng):
    """[n, k] random rows of each row's cluster (an epoch's cost does not depend on which)."""
    import numpy as np

    order = np.argsort(y, kind="stable")
    start = np.searchsorted(y[order], np.arange(y.max() + 1))
    size = np.bincount(y)
    return order[start[y][:, None] + rng.integers(0, size[y][:, None], (len(y), k))]


def _torch_sic_epoch(u, knn_idx, nouns, k: int, batch: int, device: str):
    """`() -> loss`: SIC's epoch (benchmarks.mcla_epoch's loop) on `device`, index slices."""
    import torch
    import torch.nn.functional as F

    from benchmarks.mcla_epoch import SIC_ENTROPY, SIC_LR, SIC_NEAR, SIC_SEMANTIC, SIC_WD

    torch.manual_seed(0)
    u_all, nb_all = torch.from_numpy(u).to(device), torch.from_numpy(knn_idx).to(device)
    nouns = torch.from_numpy(nouns).to(device)
    n, steps = len(u), len(u) // batch
    top_m = max(1, int(0.9 * (n // k)))
    head = torch.nn.Linear(u.shape[1], k).to(device)
    opt = torch.optim.Adam(head.parameters(), lr=SIC_LR, weight_decay=SIC_WD)

    def epoch():
        with torch.no_grad():
            top = head(u_all).topk(top_m, dim=0).indices
            v = F.normalize(u_all[top].mean(0), dim=-1)
            centres = F.normalize(nouns[(v @ nouns.T).topk(SIC_NEAR, 1).indices].mean(1), dim=-1)
        total = torch.zeros((), device=device)
        perm = torch.randperm(n, device=device)[: steps * batch].view(steps, batch)
        for a in perm:
            ub, nb = u_all[a], nb_all[a]
            j = nb[torch.arange(batch, device=device),
                   torch.randint(0, nb.shape[1], (batch,), device=device)]  # fmt: skip
            logits = head(ub)
            p, p_nb = logits.softmax(-1), head(u_all[j]).softmax(-1)
            cons = -torch.log((p * p_nb).sum(-1).clamp_min(1e-8)).mean()
            pbar = p.mean(0)
            ent = -(pbar * torch.log(pbar.clamp_min(1e-8))).sum()
            with torch.no_grad():
                y = (ub @ centres.T).argmax(-1)
            loss = cons - SIC_ENTROPY * ent + SIC_SEMANTIC * F.cross_entropy(logits, y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.detach()
        return float(total) / steps  # the one host sync

    return epoch


def bench_mcla(ctx: Ctx) -> list[dict]:
    import numpy as np

    from benchmarks.common import figure, time_interleaved
    from benchmarks.mcla_epoch import SIC_LR, SIC_NEAR, SIC_WD, SIC_WEIGHTS
    from configs.mcla.common import train_config
    from mcla_jax import train as mcla

    spec = ctx.spec["mcla"]
    n, d, k = spec["n"], spec["dim"], spec["k"]
    u, y = clustered_features(n, d, k, seed=0)
    t, _ = clustered_features(n, d, k, seed=1)
    rng = np.random.default_rng(2)
    knn_idx = _same_cluster_neighbours(y, 20, rng)
    nouns, _ = clustered_features(spec["nouns"], d, k, seed=3)

    cfg = train_config()
    cfg.num_clusters, cfg.batch_size = k, spec["batch"]
    ours = mcla.Trainer(mcla.prepare(u), mcla.prepare(t), knn_idx, cfg, ctx.mesh)
    sic = train_config()
    sic.method, sic.lr, sic.weight_decay, sic.b2, sic.warmup_epochs = (
        "sic",
        SIC_LR,
        SIC_WD,
        0.999,
        0,
    )
    sic.num_clusters, sic.batch_size = k, spec["batch"]
    sic.weights, sic.semantic_nouns = dict(SIC_WEIGHTS), SIC_NEAR
    ours_sic = mcla.Trainer(u, t, knn_idx, sic, ctx.mesh, aux={"nouns": nouns})
    torch_sic = _torch_sic_epoch(u, knn_idx, nouns, k, spec["batch"], ctx.torch_device)
    fns = {"mcla": lambda: ours.epoch()["loss"], "sic": lambda: ours_sic.epoch()["loss"],
           "torch_sic": torch_sic}  # fmt: skip
    for f in fns.values():  # compile; the warm-up-gated terms are on in every timed epoch
        if not np.isfinite(f()):
            raise FloatingPointError("non-finite loss")
    sec = time_interleaved(fns, warmup=0, iters=1)
    params = ctx.params(n=n, dim=d, clusters=k, batch=spec["batch"], steps=n // spec["batch"],
                        seconds=sec, data="unit rows around K random centres; kNN = random "
                        "same-cluster rows", baseline_loop="SIC's epoch (benchmarks.mcla_epoch) "
                        "on the device, index slices, one host sync")  # fmt: skip
    base = "PyTorch SIC epoch on the same device"
    return [
        figure(NAME, "mcla_epoch_seconds", sec["mcla"], sec["torch_sic"], base,
               higher_is_better=False, params=params),
        figure(NAME, "sic_epoch_seconds", sec["sic"], sec["torch_sic"], base,
               higher_is_better=False, params=params),
    ]  # fmt: skip


# ---- exact kNN --------------------------------------------------------------------------------


def ours_knn(x, k: int, mesh):
    """`() -> indices [N, k]`: the program `vl_jax.cluster.knn(x, k)` runs (same blocks, same
    padding), compiled ahead of time and its input already on the device."""
    import importlib

    from vl_jax import parallel
    from vl_jax.cluster import _rows

    km = importlib.import_module("vl_jax.cluster.knn")
    n = len(x)
    bq, bdb, nl, npad = km.plan(n, k, mesh.shape[parallel.DATA])
    xd = _rows.put(_rows.pad_rows(x, npad), mesh, rows=False)
    program = km._knn_program(mesh, n, k, "cosine", bq, bdb, nl).lower(xd).compile()
    return lambda: parallel.fetch(program(xd)[0])[:n]


def torch_knn(x, k: int, block: int, device: str):
    """`() -> indices [N, k]`: cosine kNN by blocked float32 matmul + `topk` (TF32 off, as
    our HIGHEST-precision GEMMs), input on the device, indices fetched to the host."""
    import torch
    import torch.nn.functional as F

    torch.backends.cuda.matmul.allow_tf32 = False
    xt = torch.from_numpy(x).to(device)

    def run():
        xn = F.normalize(xt, dim=1)
        out = []
        for i in range(0, len(xn), block):
            s = xn[i : i + block] @ xn.T
            r = torch.arange(len(s), device=s.device)
            s[r, r + i] = -float("inf")  # not itself
            out.append(s.topk(k, dim=1).indices)
        return torch.cat(out).cpu().numpy()

    return run


def bench_knn(ctx: Ctx) -> list[dict]:
    import time

    import numpy as np

    from benchmarks.common import figure

    spec = ctx.spec["knn"]
    x, _ = clustered_features(spec["n"], spec["dim"], 1000 if not ctx.tiny else 10, seed=4)
    k = spec["k"]

    def measure(n: int, warm: bool) -> dict:
        """One timed call per side on the first `n` rows (ours compiled before; with `warm`,
        after an untimed call each), then the neighbour sets compared."""
        xs = x[:n]
        ours = ours_knn(xs, k, ctx.mesh)
        theirs = torch_knn(xs, k, spec["torch_block"], ctx.torch_device)
        if warm:
            ours(), theirs()
        sec, out = {}, {}
        for name, fn in (("ours", ours), ("torch", theirs)):
            t0 = time.perf_counter()
            out[name] = fn()  # indices on the host: both sides have finished
            sec[name] = time.perf_counter() - t0
        a, b = out["ours"], out["torch"]
        recall = float(np.mean([len(np.intersect1d(p, q)) / k for p, q in zip(a[:512], b[:512])]))
        if ctx.tiny:  # the ahead-of-time program is the one knn() runs
            from vl_jax.cluster import knn

            np.testing.assert_array_equal(a, knn(xs, k, mesh=ctx.mesh)[0])
        if recall < 0.99:
            raise AssertionError(f"knn: recall vs torch {recall:.4f} < 0.99")
        log.info("%s knn n=%d: %s, recall %.4f", NAME, n, sec, recall)
        return dict(sec, recall=recall)

    # Both sides are O(N^2 D): N / 8 costs 1 / 64 of the full run and predicts it.
    small = spec["n"] // 8
    t, n = measure(small, warm=True), small
    predicted = 64 * (t["ours"] + t["torch"]) + 15  # + compiling ours at full N
    if predicted < ctx.remaining():
        t, n = measure(spec["n"], warm=False), spec["n"]
    else:
        log.warning("%s knn: full N predicted at %.0f s, %.0f s left: reporting N = %d", NAME,
                    predicted, ctx.remaining(), small)  # fmt: skip
    params = ctx.params(
        n=n, dim=spec["dim"], k=k, metric="cosine", recall_vs_torch_512_rows=t["recall"],
        torch_block=spec["torch_block"], full_n=spec["n"], predicted_full_seconds=predicted,
        timing="one timed call per side (ours compiled ahead); input on the device, indices "
        "fetched to the host",
    )  # fmt: skip
    return [figure(NAME, f"knn_seconds_n{n}", t["ours"], t["torch"],
                   "torch float32 matmul + topk (TF32 off), blocked", higher_is_better=False,
                   params=params)]  # fmt: skip
