"""Confident learning on CLIP features, on the mesh: the label-noise signal a user tries first.

    probs = oof_probabilities(features, labels, num_classes, mesh=mesh)   # float32 [N, K]
    cl = find_label_issues(labels, probs, mesh=mesh)                      # ConfidentResult
    cl.issues                                                             # bool [N]

Two parts, as cleanlab splits them (Northcutt et al., "Confident learning", JAIR 2021):

1. **Out-of-fold probabilities** of a linear probe: multinomial logistic regression on the
   features, the objective of scikit-learn's ``LogisticRegression(C=l2_c)`` (mean
   cross-entropy + ||W||^2 / (2 C N), bias not penalised), minimised by L-BFGS for a fixed
   number of steps (deterministic: no early stop that could differ between meshes). Stratified
   K folds drawn by a seeded generator; each sample's probabilities come from the probe that
   did not see it. The rows are sharded over ``data`` (zero-weight padding rows make N split
   evenly); the loss is a global sum, so 1 and 8 devices give the same probe up to float
   summation order (tests/test_vdc_confident.py).
2. **Cleanlab's rule** ``cleanlab.filter.find_label_issues(labels, probs)`` with its defaults
   (``filter_by="prune_by_noise_rate"``, ``frac_noise=1``, ``min_examples_per_class=1``):
   per-class thresholds t_k = mean p_k over samples labelled k; the confident joint counts
   (given label, guessed true label) over samples with some p_j >= t_j (the guess: the only
   confident class, or the argmax when several are), calibrated to the label counts and
   rounded preserving row sums; then, per given class k and true class j, the n_kj samples of
   class k with the largest margin p_j - p_k are issues, except those whose given label is
   (within 1e-6) the argmax. The O(N K) parts run jitted on the sharded rows; the K x K
   calibration and rounding are cleanlab's own float64 arithmetic, ported as is. Equal to
   cleanlab's mask on the same probabilities (tested); where margins tie exactly at a cut,
   cleanlab's unstable ``np.argsort`` order is replaced by dataset order.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vl_jax import parallel

__all__ = ["ConfidentResult", "find_label_issues", "oof_probabilities", "stratified_folds"]

# cleanlab.internal.constants: fuzzy comparison, threshold floor, division guard.
EPS = 1e-6
THRESHOLD_FLOOR = 2 * EPS
TINY = 1e-100


@dataclasses.dataclass
class ConfidentResult:
    """Cleanlab's outputs: ``issues`` bool [N]; ``thresholds`` float [K] (per-class mean
    self-confidence); ``confident_joint`` int [K, K] (rows: given label, columns: true label,
    calibrated); ``prune_counts`` int [K, K] (rows: true label j, columns: given label k:
    how many of class k are pruned towards j); ``self_confidence`` float [N] (p of the given
    label, the score the fusion reads)."""

    issues: np.ndarray
    thresholds: np.ndarray
    confident_joint: np.ndarray
    prune_counts: np.ndarray
    self_confidence: np.ndarray


# ----------------------------------------------------------------------------- the probe


def stratified_folds(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """int [N] fold of each sample: each class shuffled by ``seed`` and dealt round-robin, so
    every fold holds ~1/folds of every class."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    out = np.zeros(len(labels), np.int64)
    for k in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == k))
        out[idx] = np.arange(len(idx)) % folds
    return out


@functools.partial(jax.jit, static_argnames=("num_classes", "steps"))
def _fit(x, y, w, l2_c, *, num_classes: int, steps: int):
    """L-BFGS on the weighted multinomial logistic loss; x [N, D] sharded over data,
    y int [N], w float [N] (0 = not in this fold's training set, or padding)."""
    n = jnp.sum(w)

    def loss(params):
        logits = x @ params["w"] + params["b"]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
        return jnp.sum(w * ce) / n + jnp.sum(params["w"] ** 2) / (2.0 * l2_c * n)

    params = {
        "w": jnp.zeros((x.shape[1], num_classes), x.dtype),
        "b": jnp.zeros(num_classes, x.dtype),
    }
    opt = optax.lbfgs()
    vg = optax.value_and_grad_from_state(loss)

    def step(_, carry):
        p, state = carry
        value, grad = vg(p, state=state)
        updates, state = opt.update(grad, state, p, value=value, grad=grad, value_fn=loss)
        return optax.apply_updates(p, updates), state

    params, _ = jax.lax.fori_loop(0, steps, step, (params, opt.init(params)))
    return params


@jax.jit
def _predict(params, x):
    return jax.nn.softmax(x @ params["w"] + params["b"], axis=-1)


def _on_mesh(x: np.ndarray, mesh) -> jax.Array:
    """A host array (the same on every process) as a global array sharded over ``data``."""
    sharding = parallel.batch_sharding(mesh, x.ndim)
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def oof_probabilities(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    *,
    folds: int = 5,
    seed: int = 0,
    l2_c: float = 1.0,
    steps: int = 100,
    mesh=None,
) -> np.ndarray:
    """Out-of-fold probabilities float32 [N, K] of the linear probe (see the module docstring).

    features float [N, D], labels int [N] in [0, K). ``l2_c``: scikit-learn's C."""
    mesh = parallel.create_mesh() if mesh is None else mesh
    labels = np.asarray(labels, np.int64)
    fold = stratified_folds(labels, folds, seed)
    padded, real = parallel.pad_batch(
        {"x": np.asarray(features, np.float32), "y": labels.astype(np.int32), "f": fold},
        mesh.shape[parallel.DATA],
    )
    x, y = _on_mesh(padded["x"], mesh), _on_mesh(padded["y"], mesh)
    out = np.zeros((len(labels), num_classes), np.float32)
    for f in range(folds):
        held = padded["f"] == f
        w = _on_mesh((real & ~held).astype(np.float32), mesh)
        params = _fit(x, y, w, jnp.float32(l2_c), num_classes=num_classes, steps=steps)
        probs = np.asarray(parallel.fetch(_predict(params, x)))
        sel = (held & real)[: len(labels)]
        out[sel] = probs[: len(labels)][sel]
    return out


# ----------------------------------------------------------------------------- the rule


@functools.partial(jax.jit, static_argnames=("num_classes",))
def _confident_counts(probs, labels, valid, *, num_classes: int):
    """cleanlab.count.compute_confident_joint before calibration, on sharded rows:
    thresholds [K], raw confident joint int [K, K] (given x guessed true), and the rows
    whose given label is the (fuzzy) argmax (never issues)."""
    onehot = jax.nn.one_hot(labels, num_classes, dtype=probs.dtype) * valid[:, None]
    count = jnp.sum(onehot, axis=0)
    mean = jnp.diagonal(onehot.T @ probs) / jnp.maximum(count, 1)
    thresholds = jnp.maximum(jnp.where(count > 0, mean, 2.0), THRESHOLD_FLOOR)
    confident = probs >= thresholds - EPS
    num = jnp.sum(confident, axis=1)
    guess = jnp.where(num > 1, jnp.argmax(probs, axis=1), jnp.argmax(confident, axis=1))
    counted = onehot * (num > 0)[:, None]
    joint = counted.T @ jax.nn.one_hot(guess, num_classes, dtype=probs.dtype)
    nudged = probs + EPS * jax.nn.one_hot(labels, num_classes, dtype=probs.dtype)
    agrees = jnp.argmax(nudged, axis=1) == labels
    return thresholds, jnp.round(joint).astype(jnp.int32), agrees


@functools.partial(jax.jit, static_argnames=("num_classes",))
def _prune(probs, labels, valid, prune, *, num_classes: int):
    """bool [N]: for each true class j, the prune[j, k] samples of each given class k with
    the largest margin p_j - p_k (ties: dataset order)."""
    n = probs.shape[0]
    index = jnp.arange(n)
    own = jnp.take_along_axis(probs, labels[:, None], axis=1)[:, 0]
    # invalid (padding) rows sort after every class
    group = jnp.where(valid > 0, labels, num_classes)
    start = jnp.cumsum(jnp.bincount(group, length=num_classes + 1)) - jnp.bincount(
        group, length=num_classes + 1
    )

    def per_true(j):
        margin = probs[:, j] - own
        order = jnp.lexsort((index, -margin, group))  # last key is the primary one
        rank = jnp.zeros(n, jnp.int32).at[order].set(jnp.arange(n, dtype=jnp.int32))
        rank = rank - start[group]
        quota = prune[j][jnp.minimum(labels, num_classes - 1)]
        return (rank < quota) & (labels != j) & (valid > 0)

    return jnp.any(jax.lax.map(per_true, jnp.arange(num_classes)), axis=0)


def _round_preserving_sum(floats: np.ndarray) -> np.ndarray:
    """cleanlab.internal.util.round_preserving_sum, as written there."""
    floats = np.asarray(floats, dtype=float)
    ints = floats.round()
    orig_sum = np.sum(floats).round()
    int_sum = np.sum(ints).round()
    while abs(int_sum - orig_sum) > EPS:
        diff = np.round(orig_sum - int_sum)
        increment = -1 if int(diff < 0.0) else 1
        changes = min(int(abs(diff)), len(floats))
        for i in np.argsort(floats - ints)[::-increment][:changes]:
            ints[i] = ints[i] + increment
        int_sum = np.sum(ints).round()
    return ints.astype(int)


def _round_rows(m: np.ndarray) -> np.ndarray:
    return np.apply_along_axis(_round_preserving_sum, 1, m).astype(int)


def _calibrate(joint: np.ndarray, label_counts: np.ndarray) -> np.ndarray:
    """cleanlab.count.calibrate_confident_joint (single label)."""
    cal = (joint.T / np.clip(joint.sum(axis=1), TINY, None) * label_counts).T
    cal = cal / np.clip(np.sum(cal), TINY, None) * np.sum(label_counts)
    return _round_rows(cal)


def _keep_at_least(prune: np.ndarray, n: int) -> np.ndarray:
    """cleanlab.filter._keep_at_least_n_per_class with frac_noise=1 (prune: true x given)."""
    diag = np.diagonal(prune)
    new_diag = np.maximum(diag, n)
    per_col = np.maximum(np.count_nonzero(prune, axis=0) - 1.0, 1.0)
    new = prune - (new_diag - diag) / per_col
    new[new < 0] = 0
    np.fill_diagonal(new, new_diag)
    return _round_rows(new.astype(int)).astype(int)  # _reduce_prune_counts(frac_noise=1) truncates


def find_label_issues(
    labels: np.ndarray, probs: np.ndarray, *, min_per_class: int = 1, mesh=None
) -> ConfidentResult:
    """cleanlab's ``find_label_issues(labels, probs)`` (defaults) on the mesh; see the module
    docstring. labels int [N] in [0, K), probs float [N, K] (K = probs.shape[1])."""
    mesh = parallel.create_mesh() if mesh is None else mesh
    labels = np.asarray(labels, np.int64)
    probs = np.asarray(probs, np.float32)
    k = probs.shape[1]
    padded, real = parallel.pad_batch(
        {"p": probs, "y": labels.astype(np.int32)}, mesh.shape[parallel.DATA]
    )
    p, y = _on_mesh(padded["p"], mesh), _on_mesh(padded["y"], mesh)
    valid = _on_mesh(real.astype(np.float32), mesh)
    thresholds, raw, agrees = parallel.fetch(_confident_counts(p, y, valid, num_classes=k))
    joint = np.asarray(raw, np.int64)
    np.fill_diagonal(joint, joint.diagonal().clip(min=1))  # every class has one correct example
    counts = np.bincount(labels, minlength=k)
    joint = _calibrate(joint, counts)
    prune = _keep_at_least(joint.T, min_per_class)
    # a class with min_per_class examples or fewer is never pruned (cleanlab warns and skips)
    prune[:, counts <= min_per_class] = 0
    flagged = parallel.fetch(_prune(p, y, valid, jnp.asarray(prune, jnp.int32), num_classes=k))
    issues = np.asarray(flagged)[: len(labels)] & ~np.asarray(agrees)[: len(labels)]
    return ConfidentResult(
        issues=issues,
        thresholds=np.asarray(thresholds, np.float64),
        confident_joint=joint,
        prune_counts=prune,
        self_confidence=probs[np.arange(len(labels)), labels].astype(np.float64),
    )
