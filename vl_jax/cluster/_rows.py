"""Shared plumbing of the clustering kernels: row padding, block sizes, placement on a mesh."""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh

from vl_jax import parallel


def round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def as_matrix(x, name: str = "x") -> np.ndarray:
    """``x`` as a C-contiguous float32 numpy ``[N, D]``; rejects other ranks and non-finite values."""
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty [N, D] matrix, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} contains NaN or inf")
    return np.ascontiguousarray(x, dtype=np.float32)


def knn_inputs(x, k: int, metric: str, metrics: tuple[str, ...]) -> np.ndarray:
    """The checks every kNN entry point makes: ``metric`` known, ``x`` a finite ``[N, D]``
    matrix (returned as float32, see `as_matrix`) and ``1 <= k < N`` (a row is never its own
    neighbour, so k = N is impossible)."""
    if metric not in metrics:
        raise ValueError(f"metric must be one of {metrics}, got {metric!r}")
    x = as_matrix(x)
    if not 1 <= k < x.shape[0]:
        raise ValueError(
            f"need 1 <= k < N (neighbours exclude the row itself); k={k}, N={x.shape[0]}"
        )
    return x


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Unit L2 rows (float64 norms); all-zero rows stay zero (cosine similarity 0 to anything)."""
    norms = np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    return (x / np.where(norms > 0, norms, 1.0)).astype(np.float32)


def center_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(x - mean, mean)``. Distances are translation invariant, and the float32 expansion
    ``|q|^2 + |d|^2 - 2 q.d`` loses far fewer digits on centred data (sklearn does the same)."""
    mean = x.mean(axis=0, dtype=np.float64).astype(np.float32)
    return x - mean, mean  # the float32 shift actually applied, to add back to centroids


def get_mesh(mesh: Mesh | None) -> Mesh:
    """``mesh`` or, if None, the default mesh over every device (``data`` = all of them)."""
    return parallel.create_mesh() if mesh is None else mesh


def pad_rows(x: np.ndarray, n: int) -> np.ndarray:
    if n == x.shape[0]:
        return x
    return np.concatenate([x, np.zeros((n - x.shape[0], *x.shape[1:]), x.dtype)])


def put(x: np.ndarray, mesh: Mesh, *, rows: bool) -> jax.Array:
    """Host array (same on every process) onto ``mesh``: rows split over ``data`` or replicated.

    ``make_array_from_callback`` lets each process fill only its own devices' shards, so this
    also works when the mesh spans several hosts."""
    sharding = parallel.batch_sharding(mesh, x.ndim) if rows else parallel.replicated(mesh)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])
