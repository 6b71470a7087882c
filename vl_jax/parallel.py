"""Sharded runtime: process setup, the device mesh, and moving data on and off it.

Everything parallel in this codebase goes through a 2-D mesh with axes
``("data", "model")``: batches are split over ``data`` along their leading dim,
and parameters are replicated unless their NNX metadata asks for a ``model`` split.
The same code runs unchanged on 1 CPU, 8 fake CPU devices (tests), one GPU host or
a multi-host pod; in the multi-process case each process feeds only its own rows.

Typical driver::

    initialize_distributed(auto=True)          # first JAX call of the program
    mesh = mesh_from_config(cfg.mesh)
    state = shard_state(nnx.state(model), mesh)
    rows = process_slice(len(dataset))         # this process's share
    batch, mask = pad_batch(load(rows), multiple=local_batch)
    out = step(host_local_to_global(batch, mesh))
    preds = global_to_host_local(out)          # or fetch(out) for the full array
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA, MODEL = "data", "model"

_log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- processes


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: int | list[int] | None = None,
    *,
    auto: bool = False,
) -> bool:
    """Start JAX's multi-process runtime if (and only if) it was asked for.

    Must be called before any other JAX call that touches devices (``jax.devices``,
    ``device_put``, any computation): JAX refuses to initialise the distributed
    client once the XLA backend exists, and raises ``RuntimeError`` in that case.

    Multi-host is requested by any explicit argument, by ``JAX_COORDINATOR_ADDRESS``
    in the environment, or by ``auto=True`` (JAX's cluster auto-detection: Cloud TPU
    pods, SLURM, Open MPI, k8s). With nothing requested this is a no-op, so single-host
    scripts can call it unconditionally. Calling it again is a no-op too.

    Returns:
        True when more than one process takes part.
    """
    if jax.distributed.is_initialized():
        return jax.process_count() > 1
    explicit = any(a is not None for a in (coordinator_address, num_processes, process_id))
    explicit = explicit or bool(os.environ.get("JAX_COORDINATOR_ADDRESS"))
    if not (explicit or auto):
        return False  # without touching the backend, so a later initialize still works
    try:
        jax.distributed.initialize(
            coordinator_address=coordinator_address,
            num_processes=num_processes,
            process_id=process_id,
            local_device_ids=local_device_ids,
        )
    except ValueError as e:
        # Auto-detection found no cluster: JAX reports the missing coordinator/process
        # count as ValueError. Only swallow that for auto mode; explicit setups must fail.
        if explicit:
            raise
        _log.info("initialize_distributed(auto=True): no cluster detected (%s)", e)
        return False
    return jax.process_count() > 1


def process_slice(
    n: int, process_index: int | None = None, process_count: int | None = None
) -> slice:
    """This process's contiguous share of ``n`` items, as a ``slice``.

    The slices of all processes cover ``range(n)`` exactly once, in process order.
    Shares are balanced: the first ``n % process_count`` processes get one extra item,
    so sizes differ by at most one. Pad every share to ``ceil(n / process_count)``
    rows (``pad_batch``) so all processes run the same number of steps, and drop the
    padded rows using the mask.
    """
    pi = jax.process_index() if process_index is None else process_index
    pc = jax.process_count() if process_count is None else process_count
    if not 0 <= pi < pc:
        raise ValueError(f"process_index {pi} out of range for {pc} processes")
    base, extra = divmod(n, pc)
    start = pi * base + min(pi, extra)
    return slice(start, start + base + (pi < extra))


# --------------------------------------------------------------------------- mesh


def create_mesh(data: int = -1, model: int = 1, devices=None) -> Mesh:
    """Build the ``("data", "model")`` mesh over ``devices`` (default: all global devices).

    ``-1`` for one axis means "all remaining devices". The product must equal the
    device count exactly: silently using a subset of the accelerators is never what a
    training run wants; pass ``devices=...`` to run on fewer.

    Axes are ``AxisType.Auto`` (GSPMD propagation): jax 0.10's ``make_mesh`` default is
    ``Explicit``, which makes sharding part of array types and rejects many ordinary
    ops on sharded operands unless every call site annotates them.
    """
    devices = list(jax.devices() if devices is None else devices)
    n = len(devices)
    shape = (data, model)

    def bad(why: str) -> ValueError:
        return ValueError(
            f"Cannot build mesh (data={data}, model={model}) from {n} "
            f"{devices[0].platform if devices else ''} device(s): {why}"
        )

    if shape.count(-1) > 1:
        raise bad("at most one axis may be -1")
    if any(s == 0 or s < -1 for s in shape):
        raise bad("axis sizes must be positive or -1")
    fixed = math.prod(s for s in shape if s != -1)
    if -1 in shape:
        if n % fixed:
            raise bad(f"{fixed} does not divide the device count")
        shape = tuple(n // fixed if s == -1 else s for s in shape)
    elif fixed != n:
        raise bad(f"product {fixed} != device count")
    return jax.make_mesh(shape, (DATA, MODEL), axis_types=(AxisType.Auto,) * 2, devices=devices)


def mesh_from_config(cfg: Mapping[str, Any] | None = None, devices=None) -> Mesh:
    """``create_mesh`` from a ConfigDict/dict with optional keys ``data`` (-1), ``model`` (1)."""
    cfg = {} if cfg is None else cfg
    return create_mesh(int(cfg.get("data", -1)), int(cfg.get("model", 1)), devices=devices)


def describe(mesh: Mesh) -> str:
    """One-line summary for logs."""
    shape = " x ".join(f"{k}={v}" for k, v in mesh.shape.items())
    return (
        f"platform={jax.default_backend()} process={jax.process_index()}/{jax.process_count()} "
        f"devices local={jax.local_device_count()} global={jax.device_count()} mesh=({shape})"
    )


def global_batch_size(per_device: int, mesh: Mesh) -> int:
    """Global batch for ``per_device`` rows per data-parallel replica.

    Devices along ``model`` share their replica's rows, so only ``data`` multiplies.
    """
    return per_device * mesh.shape[DATA]


# --------------------------------------------------------------------------- shardings


def batch_sharding(mesh: Mesh, ndim: int | None = None) -> NamedSharding:
    """Leading (batch) dim split over ``data``, the rest replicated; ``ndim=0`` replicates."""
    if ndim == 0:
        return replicated(mesh)
    rest = () if ndim is None else (None,) * (ndim - 1)
    return NamedSharding(mesh, P(DATA, *rest))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def _var_spec(v: nnx.Variable) -> tuple:
    # flax 0.12 stores the annotation as `out_sharding` ('sharding_names'/'sharding' are
    # deprecated aliases remapped at construction). get_var_pspec also applies logical
    # axis rules (nnx.logical_axis_rules / sharding_rules) when present.
    return tuple(nnx.spmd.get_var_pspec(v) or ())


def _fit_spec(spec: tuple, shape: tuple, mesh: Mesh, where: str) -> P:
    """Restrict ``spec`` to what ``mesh`` and ``shape`` allow.

    Axis names absent from the mesh become None (so a model annotated for a bigger mesh
    still loads on 1 device); a dim not divisible by its mesh-axis product is replicated
    with a warning (device_put rejects uneven splits).
    """
    if len(spec) > len(shape):
        raise ValueError(f"{where}: partition spec {spec} has more dims than shape {shape}")
    used: set[str] = set()
    out = []
    for dim, entry in zip(shape, spec):
        names = (entry,) if isinstance(entry, str) else tuple(entry or ())
        names = tuple(a for a in names if a in mesh.shape and a not in used)
        size = math.prod(mesh.shape[a] for a in names)
        if names and dim % size:
            _log.warning(
                "%s: dim %d not divisible by %s=%d; replicating it", where, dim, names, size
            )
            names = ()
        used.update(names)
        out.append(None if not names else names[0] if len(names) == 1 else names)
    return P(*out)


def param_shardings(state: Any, mesh: Mesh) -> Any:
    """NamedShardings for a pytree of arrays / ``nnx.Variable`` s (e.g. an ``nnx.State``).

    The result has the structure of ``state`` (Variables keep their metadata and hold a
    NamedSharding as value), so it can be given to ``jax.device_put`` or as jit
    ``in_shardings``/``out_shardings``. Unannotated leaves are replicated.
    """

    def one(path, x):
        where = jax.tree_util.keystr(path)
        if isinstance(x, nnx.Variable):
            shape = np.shape(x.get_value())
            return x.replace(NamedSharding(mesh, _fit_spec(_var_spec(x), shape, mesh, where)))
        return replicated(mesh)

    return jax.tree_util.tree_map_with_path(
        one, state, is_leaf=lambda x: isinstance(x, nnx.Variable)
    )


def _put(x: Any, sharding: NamedSharding) -> jax.Array:
    if sharding.is_fully_addressable or (isinstance(x, jax.Array) and not x.is_fully_addressable):
        return jax.device_put(x, sharding)
    # Host-local value (identical on every process) onto a mesh spanning processes:
    # each process fills only the shards its own devices hold.
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def shard_state(state: Any, mesh: Mesh) -> Any:
    """Place ``state`` (concrete arrays, same value on every process) per ``param_shardings``."""
    return jax.tree.map(_put, state, param_shardings(state, mesh))


# --------------------------------------------------------------------------- batches


def local_data_shards(mesh: Mesh) -> int:
    # Number of distinct `data` positions owned by this process's devices: the
    # process-local batch is split over exactly these.
    me = jax.process_index()
    return len({i for (i, _), d in np.ndenumerate(mesh.devices) if d.process_index == me})


def host_local_to_global(batch: Any, mesh: Mesh) -> Any:
    """Process-local numpy rows -> global ``jax.Array`` s split over ``data``.

    Each leaf is ``[B_local, ...]``; the result is ``[B_local * process_count, ...]``
    (for a mesh whose ``data`` axis spans all processes), rows ordered by process.
    ``B_local`` must divide evenly over this process's data shards (see ``pad_batch``).
    Scalars (0-d) must be equal on all processes and come back replicated.
    """
    n_local = local_data_shards(mesh)

    def one(path, x):
        x = np.asarray(x)
        if x.ndim and x.shape[0] % n_local:
            raise ValueError(
                f"{jax.tree_util.keystr(path)}: local batch of {x.shape[0]} rows does not "
                f"split over {n_local} local data shards; pad it with pad_batch"
            )
        return jax.make_array_from_process_local_data(batch_sharding(mesh, x.ndim), x)

    return jax.tree_util.tree_map_with_path(one, batch)


def _local_rows(x: jax.Array) -> np.ndarray:
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
        return np.asarray(x)
    if x.ndim == 0:
        return np.asarray(x.addressable_data(0))
    # Assemble the rows held by this process's devices; shards replicated over
    # `model` (or split along later dims) overlap/tile and are written in place.
    shards = x.addressable_shards
    starts = [s.index[0].start or 0 for s in shards]
    stops = [x.shape[0] if s.index[0].stop is None else s.index[0].stop for s in shards]
    lo, hi = min(starts), max(stops)
    out = np.empty((hi - lo, *x.shape[1:]), x.dtype)
    for s, a, b in zip(shards, starts, stops):
        out[(slice(a - lo, b - lo), *s.index[1:])] = np.asarray(s.data)
    return out


def global_to_host_local(arrays: Any) -> Any:
    """Inverse of ``host_local_to_global``: numpy of the rows this process's devices hold.

    Assumes each process's rows are contiguous (true for ``create_mesh`` meshes). In a
    single process this is the full array.
    """
    return jax.tree.map(_local_rows, arrays)


def fetch(arrays: Any) -> Any:
    """Full global value of every leaf as numpy, on every process (allgather if needed)."""

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(jax.device_get(x))  # explicit: allowed under jax.transfer_guard

    return jax.tree.map(one, arrays)


def pad_batch(
    arrays: Mapping[str, np.ndarray], multiple: int
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Zero-pad the shared leading dim ``B`` up to the next multiple of ``multiple``.

    Returns ``(padded, mask)``: every array becomes ``[B_padded, ...]`` and ``mask`` is a
    bool ``[B_padded]``, True for real rows. ``B == 0`` stays empty (``B_padded == 0``);
    to pad to a fixed size, pass that size (a batch of ``size`` rows or fewer).
    """
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple}")
    sizes = {k: np.shape(v)[0] for k, v in arrays.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"pad_batch: leading dims differ: {sizes}")
    b = next(iter(sizes.values()), 0)
    padded_b = -(-b // multiple) * multiple
    mask = np.arange(padded_b) < b
    padded = {}
    for k, v in arrays.items():
        v = np.asarray(v)
        if padded_b != b:
            v = np.concatenate([v, np.zeros((padded_b - b, *v.shape[1:]), v.dtype)])
        padded[k] = v
    return padded, mask


def addressable_rows(n: int, mesh: Mesh) -> np.ndarray:
    """bool ``[n]``: the rows of an ``[n, ...]`` array placed with ``batch_sharding(mesh)`` that
    this process's devices hold (rows split over ``data``, replicated over ``model``).

    A process that fills only these rows of a host array and hands it to
    ``jax.make_array_from_callback`` (which reads only the addressable shards) builds the same
    global array as one that filled every row: inputs need decoding only where they are used.
    ``n`` must be a multiple of the mesh's ``data`` size.
    """
    if n % mesh.shape[DATA]:
        raise ValueError(f"{n} rows do not split over data={mesh.shape[DATA]}")
    held = np.zeros(n, bool)
    for index in batch_sharding(mesh, 1).addressable_devices_indices_map((n,)).values():
        held[index[0]] = True
    return held


def sync_processes(name: str) -> None:
    """Blocks until every process has reached ``sync_processes(name)``; a no-op in one process.

    For files one process writes and the others then read (a shared workdir): the writer
    finishes, then all pass the barrier, then the readers open the file. Every process must
    call it, the same number of times, in the same order.
    """
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)
