"""k-means (Lloyd) with greedy k-means++ seeding, all ``n_init`` runs batched, on the mesh.

Layout: rows of ``x`` are split over the mesh's ``data`` axis; each device walks its rows in
fixed blocks of ``bs`` rows. Per Lloyd step every block computes its points' distances to the
``R x K`` centres of all ``R = n_init`` runs at once (one ``[bs, D] x [D, R K]`` GEMM), its
assignments, and per-cluster partial sums (a one-hot GEMM) and counts. The per-block partials
are all-gathered and added **in global block order** -- never ``psum`` -- so the float sums,
hence centres and assignments, are bitwise the same on 1 and on 8 devices (padding blocks add
exact zeros). Batching the runs reads ``x`` once per step for all of them (k-means with small K
is memory bound); as runs converge the batch is halved (R, R/2, ..., 1 slots, the unfinished
runs gathered into them), so few finished runs are stepped (frozen, masked) with the slow ones.

Semantics follow scikit-learn's ``KMeans(algorithm="lloyd")``:

- seeding: greedy k-means++ (``2 + floor(ln K)`` candidates per centre, keep the one that
  lowers the potential most); the first centre is uniform over rows;
- a step assigns with the current centres, then moves them to their clusters' means;
- an empty cluster is re-seeded with the point farthest from its assigned centre (the j-th
  empty cluster takes the j-th farthest point, which is removed from its old cluster's sums);
- convergence: labels unchanged, or ``sum ||c_new - c_old||^2 <= tol * mean(var(x, axis=0))``;
- after the loop, a final assignment with the final centres gives labels and inertia; the run
  with the lowest inertia wins (ties: lowest run index).

Randomness comes only from ``seed`` (``jax.random``), so results are deterministic, but they
are not the same numbers as sklearn's for the same seed.
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
from vl_jax.parallel import DATA

HI = jax.lax.Precision.HIGHEST
TARGET_BLOCKS = 32  # blocks per data set: few enough that gathering the partials is cheap


def block_size(n: int, block: int) -> int:
    """Rows per block: a function of N alone (never of the mesh), which keeps block contents,
    hence every float sum, identical for any device count."""
    return max(8, min(block, _rows.round_up(-(-n // TARGET_BLOCKS), 8)))


class _Shard(NamedTuple):
    """One device's rows inside ``shard_map``: ``x [nl, D]``, ``w [nl]`` (1 real row, 0
    padding), the same rows cut into ``nbl`` blocks of ``bs`` (``blocks``: ``x [nbl, bs, D]``,
    ``|x|^2 [nbl, bs]``, ``w [nbl, bs]``), and ``base``, the global index of its first row."""

    x: jax.Array
    w: jax.Array
    blocks: tuple[jax.Array, jax.Array, jax.Array]
    base: jax.Array

    @property
    def nl(self) -> int:
        return self.x.shape[0]

    @property
    def nbl(self) -> int:
        return self.blocks[0].shape[0]


def _shard_view(x: jax.Array, w: jax.Array, bs: int) -> _Shard:
    """This device's rows ``x [nl, D]``, ``w [nl]`` (``nl`` a multiple of ``bs``) as a `_Shard`."""
    nl, d = x.shape
    nbl = nl // bs
    base = jax.lax.axis_index(DATA) * nl
    sq = jnp.sum(x * x, axis=1)
    return _Shard(x, w, (x.reshape(nbl, bs, d), sq.reshape(nbl, bs), w.reshape(nbl, bs)), base)


def _ordered_sum(partials: jax.Array) -> jax.Array:
    """Per-block partials ``[nbl, ...]`` on each device -> their total ``[...]``, summed block by
    block in global order: a fixed sequence of float adds, whatever the device count."""
    allp = jax.lax.all_gather(partials, DATA, tiled=True)
    return jax.lax.fori_loop(1, allp.shape[0], lambda b, acc: acc + allp[b], allp[0])


def _sqdist(xb: jax.Array, sqb: jax.Array, c: jax.Array) -> jax.Array:
    """Rows ``xb [bs, D]`` with ``sqb = |xb|^2 [bs]``, centres ``c [R, M, D]`` -> squared
    distances ``[bs, R, M]``."""
    s = jnp.einsum("bd,rmd->brm", xb, c, precision=HI)
    return jnp.maximum(sqb[:, None, None] - 2.0 * s + jnp.sum(c * c, -1), 0.0)


def _owner_rows(sh: _Shard, gidx: jax.Array) -> jax.Array:
    """Global row ids (any shape) -> those rows ``[..., D]`` on every device. The one device
    holding a row contributes it, all others zeros, so the psum is exact."""
    loc = gidx - sh.base
    mine = (loc >= 0) & (loc < sh.nl)
    rows = jnp.where(mine[..., None], sh.x[jnp.clip(loc, 0, sh.nl - 1)], 0.0)
    return jax.lax.psum(rows, DATA)


# ---------------------------------------------------------------- k-means++ seeding


def _kmeans_pp(sh: _Shard, key: jax.Array, n: int, k: int, runs: int) -> jax.Array:
    """Greedy k-means++ seeds of ``R = runs`` independent runs -> centres ``[R, K, D]``.

    The first centre of a run is a uniform row; each further one is the best of ``L`` rows
    drawn with probability proportional to their squared distance to the nearest centre."""
    trials = 2 + int(math.log(k))
    run_keys = jax.random.split(key, runs)
    first = jax.vmap(lambda kk: jax.random.randint(kk, (), 0, n))(run_keys)
    c0 = _owner_rows(sh, first)  # [R, D]
    closest = jax.lax.map(
        lambda a: _sqdist(a[0], a[1], c0[:, None])[..., 0] * a[2][:, None], sh.blocks
    )
    centres = jnp.zeros((runs, k, sh.x.shape[1]), jnp.float32).at[:, 0].set(c0)

    def seed_step(ci, carry):
        centres, closest = carry  # closest [nbl, bs, R], zero on padding rows
        cand = _draw_candidates(sh, closest, run_keys, ci, n, trials)  # [R, L]
        rows = _owner_rows(sh, cand)  # [R, L, D]
        best, closest = _best_candidate(sh, rows, closest)
        return centres.at[:, ci].set(rows[jnp.arange(runs), best]), closest

    centres, _ = jax.lax.fori_loop(1, k, seed_step, (centres, closest))
    return centres


def _draw_candidates(sh, closest, run_keys, ci, n: int, trials: int) -> jax.Array:
    """D^2 sampling for centre ``ci``: ``trials`` global row ids per run ``[R, L]``, row i with
    probability ``closest_i / sum(closest)`` (``closest [nbl, bs, R]``), by inverse CDF over the
    rows in global order, so the draw does not depend on the device count."""
    runs = run_keys.shape[0]
    cum = jnp.cumsum(closest, axis=1)
    totals = jax.lax.all_gather(cum[:, -1], DATA, tiled=True)  # [nb, R]
    acc, prefix = jax.lax.scan(
        lambda acc, t: (acc + t, acc), jnp.zeros((runs,), jnp.float32), totals
    )  # exclusive prefix sums, block by block
    prefix = jax.lax.dynamic_slice_in_dim(prefix, jax.lax.axis_index(DATA) * sh.nbl, sh.nbl)
    cum = cum + prefix[:, None]
    u = jax.vmap(lambda kk: jax.random.uniform(jax.random.fold_in(kk, ci), (trials,)))(run_keys)
    r = u * acc[:, None]  # [R, L]
    # searchsorted(cumsum, r) == number of entries < r (cumsum is non-decreasing)
    below = jnp.sum(cum[..., None] < r, axis=(0, 1))
    return jnp.minimum(jax.lax.psum(below, DATA), n - 1)


def _best_candidate(sh: _Shard, rows: jax.Array, closest: jax.Array):
    """Greedy k-means++ choice among candidate centres ``rows [R, L, D]``: the one that lowers
    the potential (sum of ``closest``) most. Returns (its index ``[R]``, the updated
    ``closest [nbl, bs, R]``)."""

    def pot_block(a):
        xb, sqb, wb, cb = a
        m = jnp.minimum(cb[..., None], _sqdist(xb, sqb, rows)) * wb[:, None, None]
        return m, jnp.sum(m, 0)

    new, pots = jax.lax.map(pot_block, (*sh.blocks, closest))
    best = jnp.argmin(_ordered_sum(pots), axis=1)  # [R]
    return best, jnp.take_along_axis(new, best[None, None, :, None], 3)[..., 0]


# ---------------------------------------------------------------- Lloyd


def _assign(sh: _Shard, c: jax.Array):
    """Assigns this device's rows to the nearest of the centres ``c [R, K, D]`` of each run.

    Returns labels ``[nl, R]`` int32, squared distance to the assigned centre ``[nl, R]``, and
    per-block partials (for `_ordered_sum`): cluster sums ``[nbl, R, K, D]``, counts
    ``[nbl, R, K]``, inertia ``[nbl, R]``."""
    k = c.shape[1]

    def one(a):
        xb, sqb, wb = a
        d2 = _sqdist(xb, sqb, c)  # [bs, R, K]
        lab = jnp.argmin(d2, -1).astype(jnp.int32)
        mind = jnp.min(d2, -1)
        oh = jax.nn.one_hot(lab, k, dtype=jnp.float32) * wb[:, None, None]
        sums = jnp.einsum("brk,bd->rkd", oh, xb, precision=HI)
        return lab, mind, sums, jnp.sum(oh, 0), jnp.sum(mind * wb[:, None], 0)

    lab, mind, sums, cnt, inert = jax.lax.map(one, sh.blocks)
    r = c.shape[0]
    return lab.reshape(sh.nl, r), mind.reshape(sh.nl, r), sums, cnt, inert


def _relocate(sh: _Shard, sums, cnt, lab, mind):
    """Re-seeds empty clusters (``cnt [R, K] == 0``) with the points farthest from their
    assigned centre (``mind [nl, R]``, labels ``lab [nl, R]``): the j-th empty cluster takes the
    j-th farthest point, which leaves its old cluster. Returns the corrected ``sums [R, K, D]``
    and ``cnt [R, K]``."""
    k = cnt.shape[1]
    # Per-device top-k lists are sorted by (distance desc, index asc) and gathered in device
    # order, so the stable global top-k also breaks ties towards lower rows.
    empty = cnt == 0  # [R, K]
    far = jnp.where(sh.w[:, None] > 0, mind, -jnp.inf).T  # [R, nl]
    v, j = jax.lax.top_k(far, min(k, sh.nl))  # shards * min(k, nl) >= k rows in all
    cand = (v, sh.x[j], jnp.take_along_axis(lab.T, j, 1))
    v, rows, labs = (jax.lax.all_gather(a, DATA, axis=1, tiled=True) for a in cand)
    _, jj = jax.lax.top_k(v, k)
    rows = jnp.take_along_axis(rows, jj[..., None], 1)  # [R, k, D]
    labs = jnp.take_along_axis(labs, jj, 1)  # [R, k]
    rank = jnp.clip(jnp.cumsum(empty, axis=1) - 1, 0, k - 1)  # empty cluster -> point
    n_empty = jnp.sum(empty, axis=1)
    sums = jnp.where(empty[..., None], jnp.take_along_axis(rows, rank[..., None], 1), sums)
    cnt = jnp.where(empty, 1.0, cnt)
    used = jnp.arange(k)[None] < n_empty[:, None]
    out = jax.nn.one_hot(labs, k, dtype=jnp.float32) * used[..., None]  # [R, j, K]
    sums = sums - jnp.einsum("rjc,rjd->rcd", out, rows, precision=HI)
    return sums, cnt - jnp.sum(out, 1)


def _lloyd_step(sh: _Shard, spherical: bool, tol: jax.Array, state):
    """One Lloyd step of R runs in lockstep; runs already done stay frozen.

    state: (step count, centres [R, K, D], labels [nl, R], done [R] bool, n_iter [R] int32)."""
    it, c, lab_old, done, n_iter = state
    lab, mind, sums, cnt, _ = _assign(sh, c)
    sums, cnt = _relocate(sh, _ordered_sum(sums), _ordered_sum(cnt), lab, mind)
    if spherical:
        norm = jnp.linalg.norm(sums, axis=-1, keepdims=True)
        new = jnp.where(norm > 0, sums / jnp.where(norm > 0, norm, 1.0), c)
    else:
        new = jnp.where(cnt[..., None] > 0, sums / jnp.maximum(cnt, 1.0)[..., None], c)
    shift = jnp.sum((new - c) ** 2, axis=(1, 2))
    changed = jnp.sum((lab != lab_old) & (sh.w[:, None] > 0), axis=0)
    conv = (jax.lax.psum(changed, DATA) == 0) | (shift <= tol)
    c = jnp.where(done[:, None, None], c, new)
    lab = jnp.where(done[None], lab_old, lab)
    n_iter = jnp.where(done, n_iter, it + 1)
    return it + 1, c, lab, done | conv, n_iter


def _phase(step, max_iter: int, state, slots: int, stop_at: int):
    """Lockstep steps of the (at most ``slots``) unfinished runs, gathered into a batch of
    ``slots``, until at most ``stop_at`` remain unfinished (state as in `_lloyd_step`, R runs).
    Halving the batch as runs finish keeps the slowest run from making every run pay for its
    extra steps."""
    it, c, lab, done, n_iter = state
    pick = jnp.argsort(done, stable=True)[:slots]  # unfinished first, in run order
    sub = (it, c[pick], lab[:, pick], done[pick], n_iter[pick])
    sub = jax.lax.while_loop(lambda st: (st[0] < max_iter) & (jnp.sum(~st[3]) > stop_at), step, sub)
    it, cs, ls, ds, ns = sub
    return (
        it,
        c.at[pick].set(cs),
        lab.at[:, pick].set(ls),
        done.at[pick].set(ds),
        n_iter.at[pick].set(ns),
    )


def _lloyd(sh: _Shard, centres: jax.Array, max_iter: int, spherical: bool, tol: jax.Array):
    """All runs from their seeds ``centres [R, K, D]`` until each converges or ``max_iter``
    steps pass. Returns (centres ``[R, K, D]``, Lloyd steps of each run ``[R]`` int32)."""
    runs = centres.shape[0]
    state = (
        jnp.int32(0),
        centres,
        jnp.full((sh.nl, runs), -1, jnp.int32),
        jnp.zeros((runs,), bool),
        jnp.zeros((runs,), jnp.int32),
    )
    step = functools.partial(_lloyd_step, sh, spherical, tol)
    slots = runs
    while True:  # static schedule: R, ceil(R/2), ..., 1 slots
        nxt = 0 if slots == 1 else -(-slots // 2)
        state = _phase(step, max_iter, state, slots, nxt)
        if nxt == 0:
            break
        slots = nxt
    _, centres, _, _, n_iter = state
    return centres, n_iter


@functools.lru_cache(maxsize=8)
def _kmeans_program(mesh: Mesh, n: int, k: int, runs: int, max_iter: int, spherical: bool, bs: int):
    """Jitted ``(x [Np, D] rows over data, w [Np], key, tol) -> (centres [R, K, D],
    labels [Np, R], inertia [R], n_iter [R])`` for all ``R = runs`` runs; the caller keeps the
    run with the lowest inertia."""

    def local(x, w, key, tol):
        sh = _shard_view(x, w, bs)
        centres = _kmeans_pp(sh, key, n, k, runs)
        centres, n_iter = _lloyd(sh, centres, max_iter, spherical, tol)
        # The loop's labels belong to the centres before their last move: assign once more so
        # that labels and inertia match the returned centres (as sklearn does).
        lab, _, _, _, inert = _assign(sh, centres)
        return centres, lab, _ordered_sum(inert), n_iter

    fn = jax.shard_map(
        local,
        mesh=mesh,
        in_specs=(P(DATA), P(DATA), P(), P()),
        out_specs=(P(), P(DATA), P(), P()),
        check_vma=False,
    )
    return jax.jit(fn)


def kmeans(
    x,
    k: int,
    *,
    n_init: int = 10,
    max_iter: int = 300,
    tol: float = 1e-4,
    seed: int = 0,
    spherical: bool = False,
    mesh: Mesh | None = None,
    block: int = 4096,
    return_n_iter: bool = False,
):
    """k-means of the rows of ``x`` (Lloyd, k-means++ seeding, best of ``n_init``).

    Args:
      x: ``[N, D]`` features (numpy or jax; float32 on the host).
      k: number of clusters, ``1 <= k <= N``.
      n_init: independent seedings; all run together, the lowest inertia is kept.
      max_iter: Lloyd steps per run at most.
      tol: convergence threshold on the total squared centre shift, relative to the mean
        per-feature variance of ``x`` (sklearn's ``tol``).
      seed: PRNG seed; same seed, same result, on any number of devices.
      spherical: cosine k-means: rows and centroids are L2-normalised (centroid = normalised
        cluster sum) and inertia is ``sum ||x_i - c_{a_i}||^2 = sum 2 (1 - cos)`` on the unit rows.
      mesh: rows are split over its ``data`` axis; default: a mesh over all devices.
      block: upper bound on rows per block (blocks hold ``~N / 32`` rows).
      return_n_iter: also return the Lloyd steps the winning run took.

    Returns:
      ``(centroids [k, D] float32, assignments [N] int32, inertia float)`` as numpy / Python
      float (``+ (n_iter,)`` with ``return_n_iter``). Inertia is the sum of squared Euclidean
      distances of rows to their centroid, recomputed on the host (float64 total).
    """
    x = _rows.as_matrix(x)
    n, d = x.shape
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= N, got k={k}, N={n}")
    if n_init < 1 or max_iter < 1:
        raise ValueError(f"n_init and max_iter must be >= 1, got {n_init}, {max_iter}")
    if spherical:
        x, mean = _rows.normalize_rows(x), np.zeros(d, np.float32)
    else:
        x, mean = _rows.center_rows(x)  # better-conditioned float32 distances and sums
    # mean per-feature variance; x is centred (or unit rows: then var = E[x^2] - E[x]^2)
    mu = x.mean(axis=0, dtype=np.float64)
    tol_abs = np.float32(tol * (np.mean(np.square(x), dtype=np.float64) - np.mean(mu * mu)))
    mesh = _rows.get_mesh(mesh)
    bs = block_size(n, block)
    npad = _rows.round_up(n, bs * mesh.shape[DATA])
    w = (np.arange(npad) < n).astype(np.float32)
    program = _kmeans_program(mesh, n, k, n_init, max_iter, spherical, bs)
    centres, labels, inertia, n_iter = program(
        _rows.put(_rows.pad_rows(x, npad), mesh, rows=True),
        _rows.put(w, mesh, rows=True),
        jax.random.key_data(jax.random.key(seed)),
        tol_abs,
    )
    # all rows on every process (labels are split over `data`; allgather if multi-host)
    centres, labels, inertia, n_iter = parallel.fetch((centres, labels, inertia, n_iter))
    best = int(np.argmin(inertia))
    c, lab = np.asarray(centres[best]), np.asarray(labels[:n, best], np.int32)
    resid = x - c[lab]  # float32 rows, float64 total: accurate without a float64 copy of x
    inertia_host = float(np.einsum("nd,nd->n", resid, resid).sum(dtype=np.float64))
    out = (c + mean, lab, inertia_host)
    return (*out, int(n_iter[best])) if return_n_iter else out
