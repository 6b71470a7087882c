"""`ann`: the approximate kNN (`vl_jax.cluster.knn_ivf`) against the exact kNN and faiss.

Data: synthetic CLIP-like features, ``blobs`` Gaussian blobs (centres and noise both standard
normal per dimension), unit rows: 160,000 x 512 in 1000 blobs (ImageNet-sized class count) for
the main figures, 1,280,000 x 768 in 1000 blobs for the memory run. No real features of that
size are available offline; on these blobs the true neighbours of a row are (nearly) random
rows of its own blob, so they are hard to rank but easy to locate.

- ``seconds_n{N}``: ours (default ``nlist`` / ``nprobe`` rules, k = 20, cosine; build + search,
  host in -> host out; the second call, the first compiled) vs the exact
  ``vl_jax.cluster.knn`` -- at 160k its time is **extrapolated** from ``EXACT_QUERY_BLOCKS``
  of its query blocks (every block scans the whole database, so blocks cost the same; see
  `benchmarks.scale`), ``params.exact_extrapolated``.
- ``recall20_n{N}``: recall@20 of ours against the exact neighbours of ``RECALL_QUERIES``
  random rows (numpy brute force; a label-free criterion); baseline: faiss's recall.
- ``seconds_vs_faiss_n{N}``: ours vs faiss-cpu ``IndexIVFFlat`` (inner product) with the same
  ``nlist`` / ``nprobe``, trained on the same number of sampled rows with the same k-means steps,
  all cores (skipped when faiss does not import). faiss probes the query's own nearest cells,
  ours the home cell's (see `vl_jax.cluster.ann`), so the two recalls differ at equal
  ``nprobe``: compare time at the recall each reaches.
- ``seconds_n1280000`` (full runs only): ours at 1.28M x 768 in a child process, with its peak
  RSS (``VmHWM``: data, index, runtime) in ``params.peak_gb``; no baseline (the exact kNN
  takes hours there: ``docs/scaling.md``).

    python -m benchmarks.run --only ann            # heavy: run under flock, ~15 min on 2 cores
    python -m benchmarks.ann --child 1280000 768   # the memory run alone: one JSON line
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.common import ForeignLoad, figure, log, register
from benchmarks.scale import blobs as scale_blobs

NAME = "ann"
K, BLOBS = 20, 1000
FULL, QUICK, BIG = (160_000, 512), (8_000, 64), (1_280_000, 768)
RECALL_QUERIES = 2000
EXACT_QUERY_BLOCKS = 8
REPO = Path(__file__).resolve().parents[1]


def blobs(n: int, dim: int, classes: int = BLOBS) -> np.ndarray:
    """``[n, dim]`` float32 unit rows in ``classes`` Gaussian blobs (`benchmarks.scale.blobs`,
    made in row blocks: 1.28M x 768 is 3.9 GB)."""
    return scale_blobs(n, classes, dim=dim)[0]


def exact_rows(x: np.ndarray, rows: np.ndarray, k: int) -> np.ndarray:
    """Exact cosine k-NN ``[len(rows), k]`` of ``rows`` among the other rows (numpy, blocked)."""
    out = np.empty((len(rows), k), np.int64)
    for s in range(0, len(rows), 200):
        q = rows[s : s + 200]
        sc = x[q] @ x.T
        sc[np.arange(len(q)), q] = -np.inf
        out[s : s + 200] = np.argpartition(-sc, k, axis=1)[:, :k]
    return out


def recall(got: np.ndarray, ref: np.ndarray) -> float:
    return float(sum(len(np.intersect1d(a, b)) for a, b in zip(got, ref)) / ref.size)


def _timed(fn):
    with ForeignLoad() as load:
        t0 = time.perf_counter()
        out = fn()
        dt = time.perf_counter() - t0
    return out, dt, load.cores


def _ours(x, k):
    from vl_jax.cluster import knn_ivf

    _, t_first, _ = _timed(lambda: knn_ivf(x, k))  # compiles
    res, t, cores = _timed(lambda: knn_ivf(x, k))
    return res, t, dict(first_call_seconds=t_first, foreign_cpu_cores=cores)


def _faiss(x, k, nlist: int, nprobe: int):
    """faiss ``IndexIVFFlat`` (inner product on the unit rows): train on the same number of
    sampled rows as ours, add all, search all with k + 1 and drop the row itself."""
    import faiss

    from vl_jax.cluster.ann import KMEANS_ITERS, SAMPLE_PER_LIST

    faiss.omp_set_num_threads(os.cpu_count() or 1)

    def run():
        n, d = x.shape
        rng = np.random.default_rng(0)
        sample = np.sort(rng.choice(n, size=min(n, SAMPLE_PER_LIST * nlist), replace=False))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.niter = KMEANS_ITERS
        index.train(x[sample])
        index.add(x)
        index.nprobe = nprobe
        _, idx = index.search(x, k + 1)
        own = idx == np.arange(n)[:, None]
        keep = ~own
        keep[~own.any(1), -1] = False  # the row itself not among k + 1: drop the last
        return idx[keep].reshape(n, k)

    idx, t, cores = _timed(run)
    return idx, t, dict(faiss_version=faiss.__version__, foreign_cpu_cores=cores)


def _exact_seconds(x, quick: bool) -> dict:
    from benchmarks import scale

    return scale._stage_knn(x, None, None, query_blocks=None if quick else EXACT_QUERY_BLOCKS)


def child(n: int, dim: int) -> dict:
    """The memory run: data, our search, recall on a sample; peak RSS of this process."""
    from benchmarks.scale import _status
    from vl_jax.cluster import knn_ivf

    x = blobs(n, dim)
    rss_data = _status("VmRSS")
    res, t, cores = _timed(lambda: knn_ivf(x, K))
    peak = _status("VmHWM")
    rows = np.sort(np.random.default_rng(1).choice(n, RECALL_QUERIES // 2, replace=False))
    rec = recall(res.indices[rows], exact_rows(x, rows, K))
    return dict(seconds=t, recall=rec, peak_gb=peak, rss_data_gb=rss_data, nlist=res.nlist,
                nprobe=res.nprobe, exhaustive_rows=res.exhaustive_rows,
                foreign_cpu_cores=cores, recall_queries=len(rows))  # fmt: skip


@register(NAME)
def ann_bench(quick: bool, *, big: bool | None = None) -> list[dict]:
    """160k x 512 (quick: 8k x 64) vs exact and faiss; full runs add the 1.28M x 768 run."""
    import jax

    n, dim = QUICK if quick else FULL
    x = blobs(n, dim, 100 if quick else BLOBS)
    params = dict(n=n, dim=dim, k=K, blobs=100 if quick else BLOBS, metric="cosine",
                  data="Gaussian blobs, unit rows (benchmarks.ann.blobs)",
                  cpu_count=os.cpu_count(), jax_version=jax.__version__)  # fmt: skip
    res, t_ours, p_ours = _ours(x, K)
    params.update(nlist=res.nlist, nprobe=res.nprobe, exhaustive_rows=res.exhaustive_rows)
    rows = np.sort(np.random.default_rng(1).choice(n, min(n, RECALL_QUERIES), replace=False))
    ref = exact_rows(x, rows, K)
    rec = recall(res.indices[rows], ref)
    log.info("%s n=%d: ours %.1f s, recall@%d %.4f", NAME, n, t_ours, K, rec)
    with ForeignLoad() as load:
        ex = _exact_seconds(x, quick)
    log.info("%s n=%d: exact %.1f s (extrapolated %s)", NAME, n, ex["seconds"], ex["extrapolated"])
    p = {**params, **p_ours, "recall_queries": len(rows),
         "exact_extrapolated": ex["extrapolated"],
         "exact_measured_query_blocks": ex["measured_query_blocks"],
         "exact_query_blocks": ex["query_blocks"], "exact_foreign_cpu_cores": load.cores}  # fmt: skip
    figs = [
        figure(NAME, f"seconds_n{n}", t_ours, ex["seconds"], "vl_jax.cluster.knn (exact)",
               higher_is_better=False, params=p)
    ]  # fmt: skip
    f_rec, f_t, f_p = float("nan"), float("nan"), {}
    try:
        f_idx, f_t, f_p = _faiss(x, K, res.nlist, res.nprobe)
        f_rec = recall(f_idx[rows], ref)
        log.info("%s n=%d: faiss %.1f s, recall %.4f", NAME, n, f_t, f_rec)
    except ImportError:
        log.info("%s: faiss does not import; no faiss figures", NAME)
    fp = {**params, "recall_queries": len(rows), "ours_foreign_cpu_cores": p_ours[
        "foreign_cpu_cores"], "faiss": {**f_p, "recall": f_rec}}  # fmt: skip
    figs.append(figure(NAME, f"recall{K}_n{n}", rec, f_rec, "faiss IndexIVFFlat recall",
                       higher_is_better=True, params=fp))  # fmt: skip
    if f_p:
        figs.append(figure(NAME, f"seconds_vs_faiss_n{n}", t_ours, f_t, "faiss IndexIVFFlat",
                           higher_is_better=False, params=fp))  # fmt: skip
    if big if big is not None else not quick:
        figs.append(_big())
    return figs


def _big() -> dict:
    n, dim = BIG
    cmd = [sys.executable, "-m", "benchmarks.ann", "--child", str(n), str(dim)]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    log.info("%s n=%d: %s", NAME, n, r)
    p = {**r, "n": n, "dim": dim, "k": K, "blobs": BLOBS, "metric": "cosine"}
    return figure(NAME, f"seconds_n{n}", r["seconds"], float("nan"), "none (exact: hours)",
                  higher_is_better=False, params=p)  # fmt: skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.ann")
    ap.add_argument("--child", nargs=2, type=int, metavar=("N", "DIM"), required=True)
    args = ap.parse_args(argv)
    print(json.dumps(child(*args.child)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
