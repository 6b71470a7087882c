"""Exact k nearest neighbours of every row of ``x`` among the other rows, on the mesh.

Layout: queries are split over the mesh's ``data`` axis; the database (the same rows) is
replicated on every device. Each device walks its queries in blocks of ``bq`` rows and, per
query block, scans the database in blocks of ``bdb`` rows keeping a running top-k::

    scores [bq, bdb] = q_blk @ db_blk^T (+ bias)      # one GEMM per block pair
    top-k of the block, then top-k of [running k ; block k]

so memory is O(N k + bq bdb) on top of the inputs, and no N x N matrix exists.

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


@functools.lru_cache(maxsize=16)
def _knn_program(mesh: Mesh, n: int, k: int, metric: str, bq: int, bdb: int, nl: int):
    """Jitted ``x [Np, D] (replicated, zero padded) -> (indices [S nl, k], distances)``.

    Each device takes its ``nl`` query rows from the replicated array (one transfer, no
    second sharded copy). Scores are "larger is nearer": cosine ``q.d`` on unit rows; l2
    ``2 q.d - |d|^2`` (= |q|^2 - |q - d|^2; the per-query |q|^2 is added back at the end)."""

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
                v, j = jax.lax.top_k(s, k)
                # Running entries come first and hold lower database indices; top_k is stable
                # (equal values keep their order), so ties go to the lower index throughout.
                v, j2 = jax.lax.top_k(jnp.concatenate([vals, v], 1), k)
                cand = jnp.concatenate([idx, ids_b[j]], 1)
                return (v, jnp.take_along_axis(cand, j2, 1)), None

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


def knn(
    x, k: int, metric: str = "cosine", *, mesh: Mesh | None = None, block: int = 2048
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
      block: at most this many rows per query block and per database block (the score tile
        is ``block x block`` floats per device; 2048 -> 16 MB). Blocks are evened out so that
        padding stays under 8 rows per block.

    Returns:
      ``(indices [N, k] int32, distances [N, k] float32)``, nearest first, as numpy.

    Row ``i`` never lists itself (same row index); an exact duplicate ``j != i`` of row ``i`` is
    an ordinary neighbour at distance ~0. Equal scores are broken towards the lower row index,
    and the result is deterministic for given inputs and mesh. Scores are float32 GEMMs at
    ``Precision.HIGHEST``; l2 uses ``|q|^2 + |d|^2 - 2 q.d`` on mean-centred rows, so distances
    below ~1e-3 of the data scale carry float32 rounding.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    x = _rows.as_matrix(x)
    n = x.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"need 1 <= k < N (neighbours exclude the row itself); k={k}, N={n}")
    if block < 8:
        raise ValueError(f"block must be >= 8, got {block}")
    mesh = _rows.get_mesh(mesh)
    shards = mesh.shape[DATA]
    bq = _even_blocks(-(-n // shards), block)
    nl = _rows.round_up(-(-n // shards), bq)  # query rows per device
    bdb = max(_even_blocks(n, block), _rows.round_up(k, 8))
    npad = _rows.round_up(max(nl * shards, n), bdb)
    program = _knn_program(mesh, n, k, metric, bq, bdb, nl)
    idx, dist = program(_rows.put(_rows.pad_rows(x, npad), mesh, rows=False))
    idx, dist = parallel.fetch((idx, dist))  # all rows on every process (allgather if multi-host)
    return np.asarray(idx[:n], np.int32), np.asarray(dist[:n], np.float32)
