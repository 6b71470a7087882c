"""Approximate k nearest neighbours of every row among the other rows: an inverted-file index.

Exact kNN costs ``2 N^2 D`` flop (2.5 h at 1.28M x 512 on 2 CPU cores). An IVF index cuts the
rows into ``nlist`` cells (k-means centroids) and searches each query only in ``nprobe`` cells,
scoring every row of those cells exactly::

    1. centroids [nlist, D]  = k-means (vl_jax.cluster.kmeans) of a uniform sample of rows
    2. home [N]              = every row's nearest centroid (blocked GEMM + argmax)
    3. probe [nlist, nprobe] = for each cell, the nprobe cells whose centroids are nearest to
       its own centroid (itself first); a query probes the cells of its home cell
    4. the rows, sorted by home cell, cut into chunks of B rows (every cell padded to whole
       chunks, B ~ the mean cell size): the index, one [C B, D] array
    5. queries = the same sorted rows, in blocks of whole chunks (bq rows). A block scans the
       chunks of its cells' probed cells in tiles of G chunks: one [bq, D] x [D, G B] GEMM per
       tile, scores outside a query's own probed cells masked to -inf, running top-k merge
       (as the exact kNN).

Why probe by the home cell and not, as faiss's ``IndexIVFFlat``, by the query's own nearest
centroids: then all queries of a cell share one probe set, so a block of queries is one GEMM
against ``nprobe`` cells. With per-query probe sets a block must scan the union of its rows'
sets, which on data whose far cells are all about equally far (high-dimensional blobs) is close
to every cell -- the exact cost with extra work. The price is recall for queries near a cell's
border: their neighbours across the border count only if that cell is among the home cell's
``nprobe``. ``nprobe = nlist`` is the exact kNN. A row whose probed cells hold fewer than ``k``
other rows is searched exhaustively (host numpy), so every row gets ``k`` real neighbours.

Why hand-written and not faiss: faiss-cpu is an optional peer (the benchmark's baseline), not a
dependency of the library, and this runs on the same mesh and devices (CPU, GPU, TPU) as
the rest of the pipeline.

Memory: the index is one padded copy of the prepared rows on the device (the host copy is
freed once placed) plus ``[N, nprobe]`` int32 probe lists; per device one ``[bq, G B]`` score
tile; the coarse pass and the k-means sample are blocked / small.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from vl_jax import parallel
from vl_jax.cluster import _rows
from vl_jax.cluster.kmeans import kmeans
from vl_jax.cluster.knn import METRICS
from vl_jax.parallel import DATA

HI = jax.lax.Precision.HIGHEST
SAMPLE_PER_LIST = 16  # k-means sample: rows per cell (seeding costs nlist x sample x D)
KMEANS_ITERS = 10  # Lloyd steps of the coarse k-means: cells need not be optimal, only even
COARSE_TILE = 1 << 24  # floats in one [rows, nlist] coarse score tile (64 MB)


class IVFResult(NamedTuple):
    """``indices [N, k]`` int32 and ``distances [N, k]`` float32, nearest first (as
    `vl_jax.cluster.knn`), and the index's settings: ``nlist`` cells, ``nprobe`` probed per
    query, and ``exhaustive_rows``: rows whose probed cells held fewer than ``k`` other rows and
    were searched over all rows instead."""

    indices: np.ndarray
    distances: np.ndarray
    nlist: int
    nprobe: int
    exhaustive_rows: int


def default_nlist(n: int) -> int:
    """Cells for ``n`` rows: ``round(4 sqrt(N))`` (faiss's guideline of 4-16 sqrt(N); the low
    end, because every query also scores all ``nlist`` centroids), at most ``n``."""
    return max(1, min(n, round(4 * math.sqrt(n))))


def default_nprobe(nlist: int) -> int:
    """Cells probed per query: ``ceil(sqrt(nlist) / 2)``, at least 8 (at most ``nlist``).

    A rule fixed before the benchmark and not tuned on it: the work per query is
    ``nprobe N / nlist`` rows, so with ``nlist ~ 4 sqrt(N)`` it grows as ``N^0.75``."""
    return min(nlist, max(8, math.ceil(math.sqrt(nlist) / 2)))


def _prepare(x: np.ndarray, metric: str, mean: np.ndarray | None) -> np.ndarray:
    """Rows as searched: unit rows (cosine) or centred rows (l2; see `vl_jax.cluster.knn`)."""
    return _rows.normalize_rows(x) if metric == "cosine" else x - mean


def _score(q: jax.Array, d: jax.Array, bias: jax.Array, metric: str) -> jax.Array:
    """Scores, larger is nearer, ``[Q, R]`` of rows ``q [Q, D]`` against ``d [R, D]``: cosine
    ``q.d`` (unit rows); l2 ``2 q.d - |d|^2`` (= ``|q|^2 - |q - d|^2``), ``bias = -|d|^2``."""
    s = jnp.dot(q, d.T, precision=HI)
    return (2.0 * s if metric == "l2" else s) + bias


@functools.lru_cache(maxsize=8)
def _coarse_program(mesh: Mesh, nprobe: int, metric: str):
    """Jitted ``(rows [S R, D] over data, centroids [nlist, D]) -> probe [S R, nprobe]``: the
    ids of each row's ``nprobe`` nearest centroids, nearest first."""

    def local(x, c):
        bias = -jnp.sum(c * c, axis=1) if metric == "l2" else jnp.zeros(c.shape[0])
        return jax.lax.top_k(_score(x, c, bias, metric), nprobe)[1].astype(jnp.int32)

    fn = jax.shard_map(
        local, mesh=mesh, in_specs=(P(DATA), P()), out_specs=P(DATA), check_vma=False
    )
    return jax.jit(fn)


def _cell_probes(centroids: np.ndarray, nprobe: int, metric: str) -> np.ndarray:
    """``[nlist, nprobe]`` int32: for each cell, the ``nprobe`` cells whose centroids are
    nearest to its own centroid (itself first), by the search metric; ties to the lower id."""
    c = centroids.astype(np.float64)
    s = c @ c.T
    if metric == "l2":
        s = 2.0 * s - np.sum(c * c, 1)[None]
    np.fill_diagonal(s, np.inf)
    return np.argsort(-s, axis=1, kind="stable")[:, :nprobe].astype(np.int32)


def _probe_lists(x, centroids, nprobe: int, metric: str, mean, mesh: Mesh) -> np.ndarray:
    """``[N, nprobe]`` int32 nearest centroids of every row of ``x`` (raw rows, prepared here
    block by block so that no second ``[N, D]`` copy exists)."""
    n, nlist = x.shape[0], centroids.shape[0]
    shards = mesh.shape[DATA]
    rows = max(8, _rows.round_up(COARSE_TILE // nlist, 8))  # per device and block
    rows = min(rows, _rows.round_up(-(-n // shards), 8))
    step = rows * shards
    program = _coarse_program(mesh, nprobe, metric)
    c = _rows.put(centroids, mesh, rows=False)
    out = np.empty((n, nprobe), np.int32)
    for s in range(0, n, step):
        blk = _rows.pad_rows(_prepare(x[s : s + step], metric, mean), step)
        got = parallel.fetch(program(_rows.put(blk, mesh, rows=True), c))
        out[s : s + step] = np.asarray(got)[: min(step, n - s)]
    return out


class _Layout(NamedTuple):
    """The index's layout: ``order [N]`` rows sorted by home cell, ``pos [N]`` their slots in
    the padded index, ``chunk_list [C]`` each chunk's cell (``nlist`` on padding chunks),
    ``b`` rows per chunk, ``qc`` chunks per query block."""

    order: np.ndarray
    pos: np.ndarray
    chunk_list: np.ndarray
    b: int
    qc: int


def _layout(home: np.ndarray, nlist: int, b: int, qc: int, shards: int) -> _Layout:
    """Cells padded to whole chunks of ``b`` rows; chunks padded to whole query blocks per
    device. Within a cell, rows keep their input order (stable sort)."""
    order = np.argsort(home, kind="stable")
    counts = np.bincount(home, minlength=nlist)
    chunks = -(-counts // b)
    first = np.concatenate([[0], np.cumsum(chunks)[:-1]])  # first chunk of each cell
    start = np.concatenate([[0], np.cumsum(counts)[:-1]])  # first sorted row of each cell
    h = home[order]
    pos = first[h] * b + (np.arange(len(order)) - start[h])
    total = _rows.round_up(max(int(chunks.sum()), 1), qc * shards)
    chunk_list = np.full(total, nlist, np.int32)
    chunk_list[: chunks.sum()] = np.repeat(np.arange(nlist, dtype=np.int32), chunks)
    return _Layout(order, pos, chunk_list, b, qc)


@functools.lru_cache(maxsize=8)
def _search_program(mesh: Mesh, k: int, metric: str, nlist: int, b: int, qc: int, g: int):
    """Jitted ``(index [C b, D], ids [C b], probe [C b, nprobe], chunk_list [C]) ->
    (scores [C b, k], ids [C b, k])`` for every slot of the index (replicated inputs; each
    device answers its ``C b / S`` query slots). Ids are -1 where fewer than k were found."""
    bq, shards = qc * b, mesh.shape[DATA]

    def local(xs, ids, probe, chunk_list):
        n_chunks = chunk_list.shape[0]
        d = xs.shape[1]
        bias = jnp.where(ids >= 0, -jnp.sum(xs * xs, 1) if metric == "l2" else 0.0, -jnp.inf)
        x3, ids3, bias3 = (
            xs.reshape(n_chunks, b, d),
            ids.reshape(n_chunks, b),
            bias.reshape(n_chunks, b),
        )
        nl = xs.shape[0] // shards
        base = jax.lax.axis_index(DATA) * nl
        q_all = jax.lax.dynamic_slice_in_dim(xs, base, nl)
        qi_all = jax.lax.dynamic_slice_in_dim(ids, base, nl)
        qp_all = jax.lax.dynamic_slice_in_dim(probe, base, nl)

        def query_block(args):
            qb, qi, qp = args  # [bq, D], [bq], [bq, nprobe]
            # Cells any row of the block probes (padding rows probe `nlist`: dropped), and
            # their chunks, in index order.
            used = jnp.zeros(nlist + 1, bool).at[qp.reshape(-1)].set(True).at[nlist].set(False)
            cmask = used[chunk_list]
            count = jnp.sum(cmask)
            sel = jnp.nonzero(cmask, size=n_chunks + g, fill_value=0)[0]

            def tile(state):
                t, vals, idx = state
                c = jax.lax.dynamic_slice_in_dim(sel, t * g, g)
                live = t * g + jnp.arange(g) < count
                mine = jnp.any(qp[:, :, None] == chunk_list[c][None, None, :], axis=1)
                rid = ids3[c].reshape(g * b)
                s = _score(qb, x3[c].reshape(g * b, d), bias3[c].reshape(g * b), metric)
                ok = jnp.repeat(mine & live[None], b, axis=1) & (qi[:, None] != rid[None])
                s = jnp.where(ok, s, -jnp.inf)
                v, j = jax.lax.top_k(s, k)
                v, j2 = jax.lax.top_k(jnp.concatenate([vals, v], 1), k)
                cand = jnp.concatenate([idx, rid[j]], 1)
                return t + 1, v, jnp.take_along_axis(cand, j2, 1)

            init = (
                jnp.int32(0),
                jnp.full((bq, k), -jnp.inf, jnp.float32),
                jnp.full((bq, k), -1, jnp.int32),
            )
            _, vals, idx = jax.lax.while_loop(lambda st: st[0] * g < count, tile, init)
            return vals, jnp.where(jnp.isfinite(vals), idx, -1)

        vals, idx = jax.lax.map(
            query_block,
            (
                q_all.reshape(-1, bq, d),
                qi_all.reshape(-1, bq),
                qp_all.reshape(-1, bq, qp_all.shape[1]),
            ),
        )
        return vals.reshape(nl, k), idx.reshape(nl, k)

    fn = jax.shard_map(
        local, mesh=mesh, in_specs=(P(), P(), P(), P()), out_specs=(P(DATA), P(DATA)),
        check_vma=False,
    )  # fmt: skip
    return jax.jit(fn)


def _exhaustive(xs: np.ndarray, ids: np.ndarray, rows: np.ndarray, k: int, metric: str):
    """Exact ``(scores [m, k], ids [m, k])`` of the index slots ``rows`` against every real
    slot of the index ``xs [C b, D]`` (host numpy, blocked; for the few rows IVF left short)."""
    real = np.flatnonzero(ids >= 0)
    db, db_ids = xs[real], ids[real]
    bias = -np.einsum("nd,nd->n", db, db) if metric == "l2" else np.zeros(len(db), np.float32)
    vals = np.empty((len(rows), k), np.float32)
    out = np.empty((len(rows), k), np.int32)
    for s in range(0, len(rows), 256):
        q = rows[s : s + 256]
        sc = xs[q] @ db.T
        sc = (2.0 * sc if metric == "l2" else sc) + bias
        sc[ids[q][:, None] == db_ids[None]] = -np.inf
        j = np.argsort(-sc, axis=1, kind="stable")[:, :k]
        vals[s : s + 256] = np.take_along_axis(sc, j, 1)
        out[s : s + 256] = db_ids[j]
    return vals, out


def knn_ivf(
    x,
    k: int,
    metric: str = "cosine",
    *,
    nlist: int | None = None,
    nprobe: int | None = None,
    seed: int = 0,
    mesh: Mesh | None = None,
    block_rows: int = 128,
    tile: int = 1024,
) -> IVFResult:
    """Approximate k nearest neighbours of each row of ``x`` among the *other* rows (IVF).

    Args:
      x: ``[N, D]`` features (numpy or jax; float32 on the host).
      k: neighbours per row, ``1 <= k < N``.
      metric: ``"cosine"`` (``1 - cos``, rows L2-normalised first) or ``"l2"`` (Euclidean), as
        `vl_jax.cluster.knn`.
      nlist: cells; default `default_nlist` (``round(4 sqrt(N))``).
      nprobe: cells searched per query, ``1..nlist``; default `default_nprobe`. ``nlist``
        gives the exact neighbours.
      seed: seeds the k-means sample and the k-means (same seed, same result).
      mesh: queries are split over its ``data`` axis, the index replicated; default: all
        devices. 1 and 8 devices give the same result.
      block_rows: about this many queries per block (whole chunks of the index).
      tile: about this many index rows per score tile ``[block_rows, tile]``.

    Returns:
      `IVFResult`: ``indices [N, k]`` int32, ``distances [N, k]`` float32, nearest first, never
      the row itself; equal scores keep index order (rows sorted by cell), not row order.
    """
    x = _rows.knn_inputs(x, k, metric, METRICS)
    n = x.shape[0]
    nlist = default_nlist(n) if nlist is None else int(nlist)
    if not 1 <= nlist <= n:
        raise ValueError(f"need 1 <= nlist <= N, got nlist={nlist}, N={n}")
    nprobe = default_nprobe(nlist) if nprobe is None else int(nprobe)
    if not 1 <= nprobe <= nlist:
        raise ValueError(f"need 1 <= nprobe <= nlist, got nprobe={nprobe}, nlist={nlist}")
    mesh = _rows.get_mesh(mesh)
    mean = None if metric == "cosine" else x.mean(axis=0, dtype=np.float64).astype(np.float32)

    rng = np.random.default_rng(seed)
    sample = np.sort(rng.choice(n, size=min(n, SAMPLE_PER_LIST * nlist), replace=False))
    centroids = kmeans(_prepare(x[sample], metric, mean), nlist, n_init=1,
                       max_iter=KMEANS_ITERS, seed=seed, spherical=metric == "cosine",
                       mesh=mesh)[0]  # fmt: skip
    home = _probe_lists(x, centroids, 1, metric, mean, mesh)[:, 0]
    cell_probe = _cell_probes(centroids, nprobe, metric)

    b = max(8, _rows.round_up(-(-n // nlist), 8))  # a mean cell: one query block, one GEMM
    qc = max(1, round(block_rows / b))
    g = max(1, round(tile / b))
    lay = _layout(home, nlist, b, qc, mesh.shape[DATA])
    slots = lay.chunk_list.shape[0] * b
    xs = np.zeros((slots, x.shape[1]), np.float32)
    ids = np.full(slots, -1, np.int32)
    pr = np.full((slots, nprobe), nlist, np.int32)
    for s in range(0, n, 1 << 16):  # prepared rows straight into their slots, block by block
        o = lay.order[s : s + (1 << 16)]
        xs[lay.pos[s : s + len(o)]] = _prepare(x[o], metric, mean)
    ids[lay.pos], pr[lay.pos] = lay.order, cell_probe[home[lay.order]]
    args = [_rows.put(a, mesh, rows=False) for a in (xs, ids, pr, lay.chunk_list)]
    del xs, pr  # the device copy is the index now
    program = _search_program(mesh, k, metric, nlist, b, qc, g)
    vals, idx = parallel.fetch(program(*args))
    vals, idx = np.array(vals), np.array(idx)

    short = np.flatnonzero((idx[:, -1] < 0) & (ids >= 0))
    if len(short):
        xs_host = np.asarray(parallel.fetch(args[0]))
        vals[short], idx[short] = _exhaustive(xs_host, ids, short, k, metric)
    real = ids >= 0
    out_idx = np.empty((n, k), np.int32)
    out_val = np.empty((n, k), np.float32)
    out_idx[ids[real]], out_val[ids[real]] = idx[real], vals[real]
    if metric == "cosine":
        dist = np.clip(1.0 - out_val, 0.0, 2.0)
    else:
        sq = np.concatenate([np.einsum("nd,nd->n", b_ - mean, b_ - mean)
                             for b_ in np.array_split(x, max(1, n >> 16))])  # fmt: skip
        dist = np.sqrt(np.maximum(sq[:, None] - out_val, 0.0))
    return IVFResult(out_idx, dist.astype(np.float32), nlist, nprobe, len(short))
