"""Declarative, verified weight conversion between checkpoints and NNX states.

A model module describes its checkpoint format as a list of `Rule`s: our parameter path, the
checkpoint key(s) it comes from, and a pair of inverse transforms (transpose, reshape, concatenate
q/k/v, ...). `load_state` fills an abstract (`nnx.eval_shape`) state from a checkpoint and refuses to
return unless every parameter is filled, every checkpoint key is used and every shape matches; the
error names the offending key. `export_state` runs the same table backwards, so every format we read
we can also write, and a round trip is an exact test of the table.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vl_jax.checkpoints.safetensors_io import CheckpointError

Array = np.ndarray


@dataclasses.dataclass(frozen=True)
class Rule:
    """One parameter: `target` (dotted NNX path) <- `sources` (checkpoint keys).

    `to_ours(*source_arrays) -> target array`; `to_ckpt(target array) -> tuple of source arrays`.
    """

    target: str
    sources: tuple[str, ...]
    to_ours: Callable[..., Array]
    to_ckpt: Callable[[Array], tuple[Array, ...]]


# ---- common transforms ------------------------------------------------------------------------


def copy(target: str, source: str) -> Rule:
    return Rule(target, (source,), lambda a: a, lambda a: (a,))


def linear(target: str, source: str) -> Rule:
    """torch `nn.Linear.weight` [out, in] <-> our kernel [in, out]."""
    return Rule(target, (source,), lambda w: w.T, lambda k: (k.T,))


def reshaped(target: str, source: str, ours: tuple[int, ...], theirs: tuple[int, ...], perm=None):
    """Checkpoint array of shape `theirs`, optionally transposed by `perm`, reshaped to `ours`.

    Used e.g. for a torch conv weight [D, C, p, p] -> perm (2, 3, 1, 0) -> [p*p*C, D].
    """
    perm = tuple(perm) if perm is not None else None
    inv = tuple(np.argsort(perm)) if perm is not None else None

    def to_ours(a):
        return (a.transpose(perm) if perm else a).reshape(ours)

    def to_ckpt(a):
        shape = [theirs[i] for i in perm] if perm else theirs
        b = a.reshape(shape)
        return ((b.transpose(inv) if perm else b),)

    return Rule(target, (source,), to_ours, to_ckpt)


def stacked(target: str, sources: Sequence[str], ours: tuple[int, ...], transpose: bool) -> Rule:
    """Several checkpoint arrays (e.g. q, k, v Linear weights) stacked on a new axis 0 of ours,
    or (with `transpose`) their transposes stacked on axis 1: [out, in] x n -> [in, n, out]."""
    n = len(sources)

    def to_ours(*arrays):
        arr = np.stack([a.T for a in arrays], axis=1) if transpose else np.stack(arrays, axis=0)
        return arr.reshape(ours)

    def to_ckpt(a):
        if transpose:
            a = a.reshape(ours[0], n, -1)
            return tuple(a[:, i].T for i in range(n))
        a = a.reshape(n, -1)  # non-transposed sources are 1-D (biases)
        return tuple(a[i] for i in range(n))

    return Rule(target, tuple(sources), to_ours, to_ckpt)


def split_rows(target: str, source: str, ours: tuple[int, ...], transpose: bool) -> Rule:
    """One checkpoint array of n stacked blocks along axis 0 (torch fused in_proj [3D, D] or [3D])
    -> ours. With `transpose`, [3D, D] -> [D, 3D] first."""

    def to_ours(a):
        return (a.T if transpose else a).reshape(ours)

    def to_ckpt(a):
        flat = a.reshape(ours[0], -1) if transpose else a.reshape(-1)
        return ((flat.T if transpose else flat),)

    return Rule(target, (source,), to_ours, to_ckpt)


# ---- load / export ----------------------------------------------------------------------------


def _flat(state: nnx.State) -> dict[str, nnx.Variable]:
    return {".".join(str(p) for p in path): var for path, var in nnx.to_flat_state(state)}


def _expected_source_shapes(rule: Rule, target_shape, dtype) -> tuple[tuple[int, ...], ...]:
    # Runs the inverse transform on a zero-stride dummy: exact per-key shapes at no memory cost
    # (transforms only use views: .T, reshape, transpose, indexing).
    dummy = np.broadcast_to(np.zeros((), dtype=np.float32), target_shape)
    return tuple(np.shape(a) for a in rule.to_ckpt(dummy))


def load_state(
    abstract_state: nnx.State,
    rules: Iterable[Rule],
    checkpoint: Mapping[str, Array],
    *,
    where: str = "checkpoint",
    ignore: Sequence[str] = (),
    dtype=None,
    shardings=None,
) -> nnx.State:
    """Fills `abstract_state` (from `nnx.eval_shape`) from `checkpoint`, verifying the table.

    Args:
      abstract_state: state whose leaves are `jax.ShapeDtypeStruct`s; modified in place and returned.
      rules: the mapping table.
      checkpoint: key -> array (e.g. a `SafetensorsReader`); arrays may be bf16/fp16/fp32.
      where: name of the checkpoint for error messages (its directory).
      ignore: regexes of checkpoint keys that are known non-parameters (e.g. `position_ids` buffers)
        or belong to parts of the checkpoint this model does not use.
      dtype: cast floating parameters to this dtype (default: the abstract state's dtype).
      shardings: optional pytree of `jax.sharding.Sharding` matching the state (see
        `vl_jax.parallel.param_shardings`); each parameter is placed directly with its sharding.

    Raises:
      CheckpointError: naming the missing / unexpected checkpoint key or the mismatching shape.
    """
    targets = _flat(abstract_state)
    flat_shardings = None
    if shardings is not None:
        flat_shardings = {
            ".".join(str(p) for p in path): s.get_value() if isinstance(s, nnx.Variable) else s
            for path, s in nnx.to_flat_state(shardings)
        }
    rules = list(rules)
    covered = {r.target for r in rules}
    unknown = sorted(covered - targets.keys())
    if unknown:
        raise CheckpointError(f"mapping table names parameters the model lacks: {unknown[:5]}")
    uncovered = sorted(targets.keys() - covered)
    if uncovered:
        raise CheckpointError(f"no checkpoint key maps to model parameter '{uncovered[0]}'")

    used: set[str] = set()
    for rule in rules:
        var = targets[rule.target]
        spec = var.get_value()
        expected = _expected_source_shapes(rule, spec.shape, spec.dtype)
        arrays = []
        for key, want in zip(rule.sources, expected):
            if key not in checkpoint:
                raise CheckpointError(
                    f"{where}: missing key '{key}' (needed for parameter '{rule.target}')"
                )
            got = tuple(checkpoint[key].shape)
            if got != tuple(want):
                raise CheckpointError(
                    f"{where}: key '{key}' has shape {got}, expected {tuple(want)} "
                    f"for parameter '{rule.target}' (does config.json match the weights?)"
                )
            arrays.append(np.asarray(checkpoint[key]))
            used.add(key)
        value = rule.to_ours(*arrays)
        target_dtype = (
            dtype if dtype is not None and jnp.issubdtype(spec.dtype, jnp.floating) else spec.dtype
        )
        if flat_shardings is None:
            value = jnp.asarray(value, dtype=target_dtype)
        else:
            value = place(value, flat_shardings[rule.target], target_dtype)
        var.set_value(value)

    patterns = [re.compile(p) for p in ignore]
    extra = sorted(
        k for k in checkpoint if k not in used and not any(p.search(k) for p in patterns)
    )
    if extra:
        more = f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""
        raise CheckpointError(
            f"{where}: unexpected key '{extra[0]}'{more}: no model parameter uses it"
        )
    return abstract_state


def place(value: Array, sharding: jax.sharding.Sharding, dtype) -> jax.Array:
    """`value` (a host array, e.g. a memory-mapped checkpoint view) as a `jax.Array` with
    `sharding`: each device receives only its own slice, cut and cast on the host.

    There is no full copy on one device first (which would not fit for a large model split over
    `model`), the cast reads only each slice (a memory-mapped source is never read whole when
    its shards are), and on a mesh spanning processes each process fills only the shards its
    own devices hold.
    """
    dtype = np.dtype(dtype)
    return jax.make_array_from_callback(
        np.shape(value), sharding, lambda idx: np.asarray(value[idx], dtype=dtype)
    )


def load_model(
    make: Callable[[], nnx.Module],
    rules: Iterable[Rule],
    checkpoint: Mapping[str, Array],
    *,
    where: str = "checkpoint",
    ignore: Sequence[str] = (),
    shardings=None,
) -> nnx.Module:
    """Builds `make()` abstractly (`nnx.eval_shape`: no parameter memory, no initialisation),
    fills it from `checkpoint` through the verified table (`load_state`) and returns the model.

    `shardings`: optional callable `abstract_state -> shardings` (e.g. a partial of
    `vl_jax.parallel.param_shardings`) placing every parameter directly on a mesh.
    """
    graphdef, abstract = nnx.split(nnx.eval_shape(make))
    placed = shardings(abstract) if shardings is not None else None
    state = load_state(abstract, rules, checkpoint, where=where, ignore=ignore, shardings=placed)
    return nnx.merge(graphdef, state)


def export_state(state: nnx.State, rules: Iterable[Rule], dtype=None) -> dict[str, Array]:
    """Runs the mapping table backwards: NNX state -> {checkpoint key: numpy array}."""
    values = _flat(state)
    out: dict[str, Array] = {}
    for rule in rules:
        arr = np.asarray(jax.device_get(values[rule.target].get_value()))
        if dtype is not None and np.issubdtype(arr.dtype, np.floating):
            arr = arr.astype(dtype)
        for key, piece in zip(rule.sources, rule.to_ckpt(arr)):
            out[key] = np.asarray(piece, order="C")
    return out
