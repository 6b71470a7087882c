"""Exact k nearest neighbours of every row of ``x`` among the other rows, on the mesh.

Layout: queries are split over the mesh's ``data`` axis; the database (the same rows) is
replicated on every device. Each device walks its queries in blocks of ``bq`` rows and, per
query block, scans the database in blocks of ``bdb`` rows keeping a running top-k::

    scores [bq, bdb] = q_blk @ db_blk^T (+ bias)      # one GEMM per block pair
    candidates [bq, k g] = the k runs of g adjacent columns with the largest maxima
    running top-k = top-k of [running k ; candidates]

so memory is O(N k + bq bdb) on top of the inputs, and no N x N matrix exists. The GEMM is
the work that must be done (2 N^2 D FLOPs); everything else is kept to a small fraction of it:
XLA's CPU top-k is a single-threaded partial sort costing a few ns per element, so a top-k over
every score (as before) added ~70 % to the GEMM's time at D = 512 on 2 cores. The run maxima are
one vectorised pass over the tile, and the two top-k calls see ~sqrt(k bdb) columns each
(`_block_candidates`); wide database blocks (8192 rows) amortise the per-row cost of those
calls and of the merge with the running list.

Why a replicated database and not a ring (``ppermute`` of database shards): the database is
the input itself (N x D floats, 40 MB for 20k CLIP features), so replicating it costs one copy
per device while a ring adds one collective per step and makes the block loop harder to
pipeline; for the sizes this project clusters (<= a few 100k rows) the copy is the simpler and
faster choice. A ring only pays when N x D no longer fits on one device.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from jax.sharding import PartitionSpec as P

from vl_jax import parallel
from vl_jax.cluster import _rows
from vl_jax.parallel import DATA

METRICS = ("cosine", "l2")


def _even_blocks(n: int, block: int) -> int:
    """Block size <= ``block`` (multiple of 8) that splits ``n`` rows with the least padding."""
    return _rows.round_up(-(-n // -(-n // block)), 8)


def _group_size(bdb: int, k: int) -> int:
    """Columns per group in `_block_candidates` for a ``bdb``-row database block: the power of
    two ``g`` nearest ``sqrt(bdb / k)`` (which minimises the two top-k widths ``bdb / g`` and
    ``k g``) that divides ``bdb`` and leaves at least ``k`` groups; 1 (no grouping) if none."""
    g = 1
    while bdb % (2 * g) == 0 and bdb // (2 * g) >= k and (2 * g) ** 2 * k <= 2 * bdb:
        g *= 2
    return g


def _block_candidates(s: jax.Array, k: int, g: int) -> tuple[jax.Array, jax.Array]:
    """Scores ``s [bq, bdb]`` -> ``(values [bq, c], columns [bq, c])``, ``c = k g``: a superset
    of each row's top k, in ascending column order.

    The block is cut into ``bdb / g`` runs of ``g`` adjacent columns; a row's top k lie in
    the k runs with the largest maxima (each of them is in a run whose maximum is at least the
    k-th value, and at most k - 1 runs exceed it; among runs tied at the k-th value the stable
    top_k keeps the lower ones, which hold the lower columns). So two narrow top-k calls
    (``bdb / g`` run maxima, then ``k g`` candidates) replace one over all ``bdb`` columns:
    XLA's CPU top-k is a single-threaded partial sort whose cost grows with the width, and
    it was ~40 % of the kNN time at bdb = 2048 (one GEMM per block is multi-threaded)."""
    bq, bdb = s.shape
    if g == 1:
        return s, jnp.broadcast_to(jnp.arange(bdb, dtype=jnp.int32), s.shape)
    runs = s.reshape(bq, bdb // g, g)
    _, top_runs = jax.lax.top_k(jnp.max(runs, axis=2), k)
    top_runs = jnp.sort(top_runs, axis=1)  # ascending columns: ties keep to the lower index
    vals = jnp.take_along_axis(runs, top_runs[:, :, None], axis=1).reshape(bq, k * g)
    cols = (top_runs[:, :, None] * g + jnp.arange(g, dtype=jnp.int32)).reshape(bq, k * g)
    return vals, cols


@functools.lru_cache(maxsize=16)
def _knn_program(mesh: Mesh, n: int, k: int, metric: str, bq: int, bdb: int, nl: int):
    """Jitted ``x [Np, D] (replicated, zero padded) -> (indices [S nl, k], distances)``.

    Each device takes its ``nl`` query rows from the replicated array (one transfer, no
    second sharded copy). Scores are "larger is nearer": cosine ``q.d`` on unit rows; l2
    ``2 q.d - |d|^2`` (= |q|^2 - |q - d|^2; the per-query |q|^2 is added back at the end)."""

    group = _group_size(bdb, k)

    def local(x):
        npad, d = x.shape
        ids = jnp.arange(npad, dtype=jnp.int32)
        real = ids < n
        if metric == "cosine":
            norm = jnp.linalg.norm(x, axis=1, keepdims=True)
            x = x / jnp.where(norm > 0, norm, 1.0)  # all-zero rows stay zero
        else:  # centring: translation invariant, and the expansion loses fewer digits
            x = x - jnp.sum(jnp.where(real[:, None], x, 0.0), 0) / n
        sq = jnp.sum(x * x, axis=1)
        # Padding rows must never be chosen: -inf bias.
        bias = jnp.where(real, -sq if metric == "l2" else 0.0, -jnp.inf)
        db_blocks = (x.reshape(-1, bdb, d), bias.reshape(-1, bdb), ids.reshape(-1, bdb))
        base = jax.lax.axis_index(DATA) * nl  # global index of this device's first query
        q = jax.lax.dynamic_slice_in_dim(x, base, nl)
        q_ids = jax.lax.dynamic_slice_in_dim(ids, base, nl)

        def query_block(args):
            qb, qi = args  # [bq, D], [bq]

            def step(carry, blk):
                vals, idx = carry
                dbb, bias_b, ids_b = blk
                s = jnp.dot(qb, dbb.T, precision=jax.lax.Precision.HIGHEST)
                s = (2.0 * s if metric == "l2" else s) + bias_b
                s = jnp.where(qi[:, None] == ids_b[None, :], -jnp.inf, s)  # not itself
                cv, ci = _block_candidates(s, k, group)
                # Running entries come first and hold lower database indices; candidates are
                # in ascending index order and top_k is stable (equal values keep their
                # order), so ties go to the lower index throughout.
                v, j = jax.lax.top_k(jnp.concatenate([vals, cv], 1), k)
                cand = jnp.concatenate([idx, ids_b[0] + ci], 1)
                return (v, jnp.take_along_axis(cand, j, 1)), None

            init = (jnp.full((bq, k), -jnp.inf, jnp.float32), jnp.full((bq, k), -1, jnp.int32))
            (vals, idx), _ = jax.lax.scan(step, init, db_blocks)
            return vals, idx

        vals, idx = jax.lax.map(query_block, (q.reshape(-1, bq, d), q_ids.reshape(-1, bq)))
        vals, idx = vals.reshape(nl, k), idx.reshape(nl, k)
        if metric == "cosine":
            dist = jnp.clip(1.0 - vals, 0.0, 2.0)
        else:
            sq_q = jax.lax.dynamic_slice_in_dim(sq, base, nl)
            dist = jnp.sqrt(jnp.maximum(sq_q[:, None] - vals, 0.0))
        return idx, dist

    fn = jax.shard_map(
        local, mesh=mesh, in_specs=P(), out_specs=(P(DATA), P(DATA)), check_vma=False
    )
    return jax.jit(fn)


def plan(n: int, k: int, shards: int, block: int = 2048, db_block: int = 8192):
    """Block sizes of `knn` for ``n`` rows on ``shards`` devices: ``(bq, bdb, nl, npad)`` =
    (query rows per block, database rows per block, query rows per device, padded rows).

    Both block sizes are evened out over ``n`` (padding < 8 rows per query block, < 64 per
    database block, whose runs of up to 32 columns must tile it; see `_block_candidates`)."""
    bq = _even_blocks(-(-n // shards), block)
    nl = _rows.round_up(-(-n // shards), bq)
    bdb = max(_rows.round_up(-(-n // -(-n // db_block)), 64), _rows.round_up(k, 8))
    npad = _rows.round_up(max(nl * shards, n), bdb)
    return bq, bdb, nl, npad


def knn(
    x,
    k: int,
    metric: str = "cosine",
    *,
    mesh: Mesh | None = None,
    block: int = 2048,
    db_block: int = 8192,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest neighbours of each row of ``x`` among the *other* rows.

    Args:
      x: ``[N, D]`` features (numpy or jax; converted to float32 on the host).
      k: neighbours per row, ``1 <= k < N``.
      metric: ``"cosine"``: distance ``1 - cos`` (rows are L2-normalised first; an all-zero row
        has cosine 0 to everything), clipped to [0, 2]; ``"l2"``: plain Euclidean distance
        (not squared) -- both as sklearn's ``NearestNeighbors`` reports them.
      mesh: queries are split over its ``data`` axis, the database replicated; default: a mesh
        over all devices.
      block: at most this many query rows per block.
      db_block: at most this many database rows per block. The score tile is
        ``block x db_block`` floats per device (2048 x 8192 -> 64 MB). Blocks are evened out
        so that padding stays small (see `plan`).

    Returns:
      ``(indices [N, k] int32, distances [N, k] float32)``, nearest first, as numpy.

    Row ``i`` never lists itself (same row index); an exact duplicate ``j != i`` of row ``i`` is
    an ordinary neighbour at distance ~0. Equal scores are broken towards the lower row index,
    and the result is deterministic for given inputs and mesh. Scores are float32 GEMMs at
    ``Precision.HIGHEST``; l2 uses ``|q|^2 + |d|^2 - 2 q.d`` on mean-centred rows, so distances
    below ~1e-3 of the data scale carry float32 rounding.
    """
    x = _rows.knn_inputs(x, k, metric, METRICS)
    n = x.shape[0]
    if block < 8 or db_block < 8:
        raise ValueError(f"block and db_block must be >= 8, got {block}, {db_block}")
    mesh = _rows.get_mesh(mesh)
    bq, bdb, nl, npad = plan(n, k, mesh.shape[DATA], block, db_block)
    program = _knn_program(mesh, n, k, metric, bq, bdb, nl)
    idx, dist = program(_rows.put(_rows.pad_rows(x, npad), mesh, rows=False))
    idx, dist = parallel.fetch((idx, dist))  # all rows on every process (allgather if multi-host)
    return np.asarray(idx[:n], np.int32), np.asarray(dist[:n], np.float32)
