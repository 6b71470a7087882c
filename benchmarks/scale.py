"""`scale`: wall time and peak memory of MCLA's stages at up to ImageNet-1k size, and how they grow.

For N in {20k, 160k, 1.28M} synthetic 512-d unit features in K = 1000 Gaussian blobs (the shape of
CLIP features of ImageNet-1k's train split), each stage runs in its own child process (one CPU
JAX device, all cores), so its peak memory is its own:

- ``kmeans``: ``vl_jax.cluster.kmeans``'s program, K = 1000, n_init = 1, ``max_iter`` = 2 (tol 0):
  the full greedy k-means++ seeding of all 1000 centres + 2 Lloyd steps + the final assignment.
  Compilation is timed apart (``params.compile_seconds``); real runs use n_init = 10 (batched in
  one program, so the time grows sublinearly in n_init) and ~10-100 Lloyd steps.
- ``semantic_space``: ``mcla_jax.semantic_space.mcla_space`` over the shipped WordNet table
  (82,115 nouns) with random unit noun embeddings ``[82115, 512]`` and K = 1000 given centres
  (k-means is the stage above; SIC's gamma_r = 500 -> up to 500k candidate nouns, all filters).
- ``mcla_epoch``: one ``mcla_jax.train.Trainer`` epoch (batch 512, K = 1000: two heads, all
  terms) = host shuffle (all N) + the jitted scan of its steps + the full-data targets pass
  (row-blocked, ``mcla_jax.rowpass``), each part timed alone after a call that compiled it; its
  20-NN indices are random same-blob rows (an epoch's cost does not depend on which rows they
  are). ``params.init_seconds``: the constructor (placement + the first targets pass, compiled).
  Above 20k rows the scan runs only the epoch's first ``EPOCH_STEPS`` batches and the epoch is
  **extrapolated**: host + targets pass + steps x the measured time per step.
- ``knn``: ``vl_jax.cluster.knn`` program, k = 20, cosine, exact. Every query block scans the
  whole database, so the work is ``N / bq`` identical blocks of ``bq x N`` scores (``bq`` <=
  2048, from ``vl_jax.cluster.knn.plan``, as the library runs it): at 160k and 1.28M only the
  first ``KNN_QUERY_BLOCKS`` query blocks run (against the full database) and the full time is **extrapolated** linearly (``params.extrapolated``, ``params.measured_*``).
  Its peak memory is measured on that run: the full run adds only its ``[N, 20]`` outputs
  (``params.output_gb``, 0.2 GB at 1.28M), as the database and the per-block tiles are the same.

Peak memory: the child's resident-set high-water mark during the stage (``VmHWM`` after a reset
through ``/proc/self/clear_refs``), in GB, including the stage's inputs (``params.rss_data_gb``:
RSS once the features exist) and the JAX runtime (``params.rss_start_gb``). A watchdog in the
parent kills a child whose RSS passes ``MEM_CAP_GB`` (or when the machine's available memory
drops under 1.5 GB): the figure then says ``killed`` with the RSS it had reached.

Figures: ``{stage}_n{N}_seconds`` and ``{stage}_n{N}_peak_gb`` per stage and size, and
``{stage}_time_exponent`` / ``{stage}_memory_exponent``: the least-squares slope of log(seconds)
and log(peak - rss_start) against log(N) over the sizes that completed. There is no baseline
(``baseline`` null). ``--quick``: N in {2k, 4k, 8k}, K = 20, every stage in full, one child per N
running all stages (so a later stage's peak includes what earlier ones left resident).

    python -m benchmarks.run --only scale   # 14 min on a shared 2-core CPU; run it once, not in loops
    python -m benchmarks.scale --child knn 20000 1000   # one stage, one size: a JSON line
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import figure, log, register

NAME = "scale"
DIM, KNN, BATCH = 512, 20, 512
SIZES, K = (20_000, 160_000, 1_280_000), 1000
QUICK_SIZES, QUICK_K = (2_000, 4_000, 8_000), 20
STAGES = ("kmeans", "semantic_space", "mcla_epoch", "knn")
KMEANS_ITERS = 2
KNN_QUERY_BLOCKS = 2  # knn query blocks run when N > FULL_UP_TO
EPOCH_STEPS = 64  # MCLA epoch steps run when N > FULL_UP_TO
FULL_UP_TO = 20_000
MEM_CAP_GB = 16.0  # watchdog: a child above this is killed (24 GB machine, shared)
MIN_AVAILABLE_GB = 1.5
REPO = Path(__file__).resolve().parents[1]
GB = 1 << 30


# --------------------------------------------------------------------------- data


def blobs(n: int, k: int, *, dim: int = DIM, seed: int = 0, block: int = 1 << 16):
    """``(x [n, dim] float32 unit rows, y [n])``: ``k`` Gaussian blobs (centres and noise both
    standard normal per dimension), made in row blocks so that no float64 or second
    ``[n, dim]`` array exists (1.28M x 512 is 2.6 GB)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, dim), dtype=np.float32)
    y = rng.integers(0, k, n)
    x = np.empty((n, dim), np.float32)
    for s in range(0, n, block):
        b = x[s : s + block]
        b[:] = rng.standard_normal(b.shape, dtype=np.float32)
        b += centres[y[s : s + block]]
        b /= np.linalg.norm(b, axis=1, keepdims=True)
    return x, y


def _prepared(x: np.ndarray, block: int = 1 << 16) -> np.ndarray:
    """``methods.prepare(x, "centre")`` in place, blockwise in float32 (the library's version
    makes float64 copies, 2 x 5.2 GB at 1.28M, which is not what this benchmark measures)."""
    mean = x.mean(axis=0, dtype=np.float64).astype(np.float32)
    for s in range(0, len(x), block):
        b = x[s : s + block]
        b -= mean
        b /= np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return x


def _same_blob_neighbours(y: np.ndarray, k: int, seed: int = 1) -> np.ndarray:
    """``[n, KNN]`` int64: random rows of each row's own blob (as benchmarks.mcla_epoch)."""
    rng = np.random.default_rng(seed)
    order = np.argsort(y, kind="stable")
    start = np.searchsorted(y[order], np.arange(k))
    size = np.bincount(y, minlength=k)
    pick = rng.integers(0, size[y][:, None], size=(len(y), KNN))
    return order[start[y][:, None] + pick].astype(np.int64)


# --------------------------------------------------------------------------- memory


def _status(field: str, pid: int | str = "self") -> float | None:
    """``VmRSS`` / ``VmHWM`` / ... of a process in GB (None if unreadable)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024 / GB
    except OSError:
        pass
    return None


def _available_gb() -> float | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 / GB
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Resets this process's ``VmHWM`` to its current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# --------------------------------------------------------------------------- stages (child)


def _stage_kmeans(x, y, k):
    import jax

    from vl_jax.cluster import _rows
    from vl_jax.cluster.kmeans import _kmeans_program, block_size
    from vl_jax.parallel import DATA, create_mesh

    # = vl_jax.cluster.kmeans(x, k, n_init=1, max_iter=KMEANS_ITERS, tol=0) up to the program
    # call, so that compiling and running are timed apart.
    n = len(x)
    mesh = create_mesh()
    t0 = time.perf_counter()
    xc, _ = _rows.center_rows(x)
    bs = block_size(n, 4096)
    npad = _rows.round_up(n, bs * mesh.shape[DATA])
    args = (
        _rows.put(_rows.pad_rows(xc, npad), mesh, rows=True),
        _rows.put((np.arange(npad) < n).astype(np.float32), mesh, rows=True),
        jax.random.key_data(jax.random.key(0)),
        np.float32(0.0),
    )
    prep = time.perf_counter() - t0
    program = _kmeans_program(mesh, n, k, 1, KMEANS_ITERS, False, bs)
    t0 = time.perf_counter()
    compiled = program.lower(*args).compile()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    *_, n_iter = jax.device_get(compiled(*args))
    run_s = time.perf_counter() - t0
    return dict(seconds=prep + run_s, compile_seconds=compile_s, prepare_seconds=prep,
                n_init=1, lloyd_steps=int(n_iter[0]), max_iter=KMEANS_ITERS,
                block_rows=bs)  # fmt: skip


def _stage_knn(x, y, k, *, query_blocks: int | None):
    import jax

    from vl_jax.cluster import _rows
    from vl_jax.cluster.knn import _knn_program, plan
    from vl_jax.parallel import DATA, create_mesh

    # = vl_jax.cluster.knn(x, KNN) with its block sizes; `query_blocks` limits the queries run.
    n, mesh = len(x), create_mesh()
    shards = mesh.shape[DATA]
    bq, bdb, nl, npad = plan(n, KNN, shards)
    total = nl // bq
    run_blocks = total if query_blocks is None else min(query_blocks, total)
    xd = _rows.put(_rows.pad_rows(x, npad), mesh, rows=False)
    program = _knn_program(mesh, n, KNN, "cosine", bq, bdb, run_blocks * bq)
    t0 = time.perf_counter()
    compiled = program.lower(xd).compile()
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    idx, _ = jax.device_get(compiled(xd))
    measured = time.perf_counter() - t0
    assert idx.shape == (run_blocks * bq * shards, KNN) and (idx[: min(n, 100)] >= 0).all()
    return dict(seconds=measured * total / run_blocks, measured_seconds=measured,
                measured_query_blocks=run_blocks, query_blocks=total, query_block_rows=bq,
                extrapolated=run_blocks < total, compile_seconds=compile_s,
                output_gb=n * KNN * 8 / GB)  # fmt: skip


def _stage_semantic_space(x, y, k):
    from mcla_jax import semantic_space, wordnet

    table = wordnet.load()
    rng = np.random.default_rng(2)
    emb = rng.standard_normal((len(table), DIM), dtype=np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    centres = x[rng.choice(len(x), k, replace=False)]  # k-means is its own stage
    t0 = time.perf_counter()
    space = semantic_space.mcla_space(x, emb, table, n_clusters=k, centres=centres)
    return dict(seconds=time.perf_counter() - t0, nouns=len(table), space_size=len(space),
                gamma_r=500)  # fmt: skip


def _stage_mcla_epoch(x, y, k, *, epoch_steps: int | None):
    import jax
    import jax.numpy as jnp

    from mcla_jax import train as T

    u = _prepared(x)  # in place: x is not needed afterwards
    rng = np.random.default_rng(1)
    tc = rng.standard_normal((k, DIM), dtype=np.float32)
    t = np.empty_like(u)
    for s in range(0, len(t), 1 << 16):
        b = t[s : s + (1 << 16)]
        b[:] = 0.8 * rng.standard_normal(b.shape, dtype=np.float32) + tc[y[s : s + len(b)]]
    t = _prepared(t)
    knn_idx = _same_blob_neighbours(y, k)
    steps = len(u) // BATCH
    run_steps = steps if epoch_steps is None else min(epoch_steps, steps)
    from configs.mcla.common import train_config

    cfg = train_config()
    cfg.num_clusters, cfg.batch_size = k, BATCH
    t0 = time.perf_counter()
    run = T.Trainer(u, t, knn_idx, cfg)
    init_s = time.perf_counter() - t0
    # An epoch = host shuffle + neighbour draw (all N) + the scan of its steps + the full-data
    # targets pass. Each part is timed alone (after a first call compiled it); with
    # `epoch_steps` the scan runs only the epoch's first `run_steps` batches and the epoch is
    # extrapolated: host + targets + steps x the measured time per step.
    t0 = time.perf_counter()
    rows = T._batches(np.random.default_rng(0), len(u), knn_idx, BATCH)
    host_s = time.perf_counter() - t0
    index = jax.device_put({n: v[:run_steps] for n, v in rows.items()}, run._steps_sharding)
    on = jnp.float32(1.0)
    for _ in range(2):  # compile, then time
        t0 = time.perf_counter()
        run.params, run.opt_state, metrics = run._epoch_fn(
            run.params, run.opt_state, index, run._feats, run._targets, on
        )
        loss = float(metrics["loss"])
    scan_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    run._update_targets()
    targets_s = time.perf_counter() - t0
    per_step = scan_s / run_steps
    seconds = host_s + targets_s + steps * per_step
    return dict(seconds=seconds, measured_steps=run_steps, steps=steps,
                extrapolated=run_steps < steps, step_seconds=per_step, host_batches_seconds=host_s,
                targets_pass_seconds=targets_s, target_block_rows=run.blocks.size,
                init_seconds=init_s, batch=BATCH, loss=loss)  # fmt: skip


def child(stages: list[str], n: int, k: int, partial: int | None = None) -> list[dict]:
    """Runs ``stages`` on one size in this process; one result dict each. ``partial``: knn's
    query blocks / an epoch's steps to run (None: all)."""
    import jax

    jax.devices()  # the runtime's own memory belongs to rss_start
    rss_start = _status("VmRSS")
    x, y = blobs(n, k)
    out = []
    for stage in stages:
        if stage not in STAGES:
            raise ValueError(f"unknown stage {stage!r}; known: {STAGES}")
        data = x.copy() if len(stages) > 1 and stage == "mcla_epoch" else x  # prepared in place
        rss_data = _status("VmRSS")
        reset = _reset_peak()
        kwargs = {"knn": {"query_blocks": partial}, "mcla_epoch": {"epoch_steps": partial}}
        kwargs = kwargs.get(stage, {})
        res = globals()[f"_stage_{stage}"](data, y, k, **kwargs)
        peak = _status("VmHWM") if reset else None
        out.append(dict(stage=stage, n=n, k=k, status="ok", peak_gb=peak, rss_start_gb=rss_start,
                        rss_data_gb=rss_data, devices=jax.device_count(), **res))  # fmt: skip
        del data
    return out


# --------------------------------------------------------------------------- parent


def _run_child(stages, n, k, *, partial, cap_gb, timeout) -> list[dict]:
    """One child process for ``stages`` at size ``n`` under the memory watchdog."""
    env = dict(os.environ)
    flags = " ".join(
        f
        for f in env.get("XLA_FLAGS", "").split()
        if "xla_force_host_platform_device_count" not in f
    )
    env.update(XLA_FLAGS=flags, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    env.pop("JAX_NUM_CPU_DEVICES", None)
    cmd = [sys.executable, "-m", "benchmarks.scale", "--child", ",".join(stages), str(n), str(k)]
    if partial is not None:
        cmd += ["--partial", str(partial)]
    p = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True)  # fmt: skip
    t0, seen, why = time.perf_counter(), 0.0, None
    while p.poll() is None:
        rss = _status("VmRSS", p.pid) or 0.0
        seen = max(seen, rss)
        avail = _available_gb()
        if rss > cap_gb:
            why = f"killed: RSS {rss:.1f} GB passed the {cap_gb:.1f} GB cap"
        elif avail is not None and avail < MIN_AVAILABLE_GB:
            why = f"killed: machine down to {avail:.1f} GB available (RSS {rss:.1f} GB)"
        elif time.perf_counter() - t0 > timeout:
            why = f"killed: over the {timeout:.0f} s limit"
        if why:
            p.kill()
            break
        time.sleep(0.1)
    out, err = p.communicate()
    wall = time.perf_counter() - t0
    if why is not None or p.returncode != 0:
        why = why or f"failed (exit {p.returncode}): {err.strip().splitlines()[-1:]}"
        log.warning("%s n=%d %s: %s", NAME, n, stages, why)
        return [dict(stage=s, n=n, k=k, status=why, peak_gb=seen, seconds=None) for s in stages]
    res = [
        json.loads(line.split(" ", 1)[1]) for line in out.splitlines() if line.startswith("SCALE ")
    ]
    for r in res:
        r["child_wall_seconds"] = wall
        r["watchdog_peak_gb"] = seen  # sampled every 0.1 s over the whole child: a cross-check
    return res


def exponent(ns, values) -> float | None:
    """Least-squares slope of log(values) on log(ns) (None with fewer than 2 usable points)."""
    pts = [(math.log(n), math.log(v)) for n, v in zip(ns, values) if v and v > 0]
    if len(pts) < 2:
        return None
    a, b = np.array(pts).T
    return float(np.polyfit(a, b, 1)[0])


@register(NAME)
def scale_bench(
    quick: bool,
    *,
    sizes: tuple[int, ...] | None = None,
    k: int | None = None,
    stages: tuple[str, ...] = STAGES,
    cap_gb: float = MEM_CAP_GB,
    timeout: float = 600.0,
) -> list[dict]:
    """Full: N in {20k, 160k, 1.28M}, K = 1000, one child per (stage, N); quick: N in {2k, 4k,
    8k}, K = 20, one child per N running every stage."""
    import jax

    sizes = sizes or (QUICK_SIZES if quick else SIZES)
    k = k or (QUICK_K if quick else K)
    results = []
    for n in sizes:
        groups = [list(stages)] if quick else [[s] for s in stages]
        for g in groups:
            partial = None
            if n > FULL_UP_TO and not quick and g[0] in ("knn", "mcla_epoch"):
                partial = KNN_QUERY_BLOCKS if g[0] == "knn" else EPOCH_STEPS
            t0 = time.perf_counter()
            res = _run_child(g, n, k, partial=partial, cap_gb=cap_gb, timeout=timeout)
            for r in res:
                log.info("%s %s n=%d: %.3g s, peak %.2f GB (%s; child %.0f s)", NAME, r["stage"],
                         n, r["seconds"] or float("nan"), r["peak_gb"] or float("nan"),
                         r["status"], time.perf_counter() - t0)  # fmt: skip
            results += res
    common = {"dim": DIM, "k": k, "knn": KNN, "batch": BATCH, "kmeans_max_iter": KMEANS_ITERS,
              "sizes": list(sizes), "cpu_count": os.cpu_count(), "jax_version": jax.__version__,
              "memory_cap_gb": cap_gb, "data": f"{k} Gaussian blobs, unit rows (benchmarks.scale)",
              "timing": "one call per child process, compile excluded (timed apart)"}  # fmt: skip
    figs = []
    for r in results:
        p = {**common, **{a: b for a, b in r.items() if a not in ("seconds", "peak_gb")}}
        for metric, value in (("seconds", r["seconds"]), ("peak_gb", r["peak_gb"])):
            figs.append(figure(NAME, f"{r['stage']}_n{r['n']}_{metric}",
                               float("nan") if value is None else value, float("nan"), "none",
                               higher_is_better=False, params=p))  # fmt: skip
    for stage in stages:
        done = [r for r in results if r["stage"] == stage and r["status"] == "ok"]
        ns = [r["n"] for r in done]
        mem = [r["peak_gb"] - r["rss_start_gb"] for r in done if r["peak_gb"] is not None]
        for metric, vals in (("time", [r["seconds"] for r in done]), ("memory", mem)):
            e = exponent(ns, vals)
            figs.append(figure(NAME, f"{stage}_{metric}_exponent",
                               float("nan") if e is None else e, float("nan"), "none",
                               higher_is_better=False,
                               params={**common, "fitted_sizes": ns, "values": vals}))  # fmt: skip
    return figs


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.scale", description=__doc__.split("\n")[0]
    )
    ap.add_argument(
        "--child",
        nargs=3,
        metavar=("STAGES", "N", "K"),
        required=True,
        help="comma-separated stages, size, clusters: run them here, print JSON",
    )
    ap.add_argument("--partial", type=int, default=None,
                    help="knn: query blocks to run; mcla_epoch: steps to run (default: all)")  # fmt: skip
    args = ap.parse_args(argv)
    stages, n, k = args.child[0].split(","), int(args.child[1]), int(args.child[2])
    for r in child(stages, n, k, args.partial):
        print("SCALE " + json.dumps(r), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
