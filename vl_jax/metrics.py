"""Clustering metrics: ACC (Hungarian-matched accuracy), NMI and ARI, equal to scikit-learn's.

The Hungarian matching is scipy's ``linear_sum_assignment``; NMI and ARI are computed here from
the contingency table (scikit-learn is not a runtime dependency) and follow
``sklearn.metrics.normalized_mutual_info_score`` (arithmetic normalisation) and
``adjusted_rand_score`` step by step, including their degenerate cases.

Labels may be any integers (not necessarily ``0..K-1``); numbers of clusters and classes may
differ. ``y_true == -1`` marks unlabelled samples (``vl_jax.encode`` writes -1 for images
outside class folders); ``clustering_metrics`` drops them by default. ``-1`` in ``y_pred``
(e.g. a "noise" cluster) is an ordinary cluster.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import optimize


def linear_sum_assignment(cost, maximize: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Minimum-cost (or maximum with ``maximize``) assignment: ``scipy.optimize``'s, on checked
    input.

    Args:
      cost: ``[n, m]`` finite costs; rectangular allowed (``min(n, m)`` pairs are matched).

    Returns:
      ``(rows, cols)`` int64 index arrays, rows increasing; ``cost[rows, cols].sum()`` is optimal.

    Raises:
      ValueError: ``cost`` is not 2-D, or holds NaN or inf (scipy reads inf as a forbidden pair;
        a table of counts never has one).
    """
    c = np.array(cost, dtype=np.float64)
    if c.ndim != 2:
        raise ValueError(f"cost must be 2-D, got shape {c.shape}")
    if not np.all(np.isfinite(c)):
        raise ValueError("cost contains NaN or inf")
    rows, cols = optimize.linear_sum_assignment(c, maximize=maximize)
    return rows.astype(np.int64), cols.astype(np.int64)


def _labels(y, name: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {y.shape}")
    return y


def confusion_matrix(y_true, y_pred) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Contingency table of classes against clusters.

    Returns:
      ``(counts [C, K] int64, classes [C], clusters [K])``: ``counts[i, j]`` = samples of class
      ``classes[i]`` put in cluster ``clusters[j]`` (sorted unique labels; sklearn's
      ``contingency_matrix`` layout).
    """
    y_true, y_pred = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred differ in length: {y_true.shape} vs {y_pred.shape}")
    classes, ti = np.unique(y_true, return_inverse=True)
    clusters, pi = np.unique(y_pred, return_inverse=True)
    counts = np.bincount(ti * len(clusters) + pi, minlength=len(classes) * len(clusters))
    return counts.reshape(len(classes), len(clusters)).astype(np.int64), classes, clusters


def hungarian_match(y_true, y_pred) -> dict:
    """Cluster -> class mapping that maximises the number of matched samples (one-to-one).

    With more clusters than classes the surplus clusters are left out of the mapping (their
    samples count as errors in ACC); with more classes than clusters some classes get none."""
    counts, classes, clusters = confusion_matrix(y_true, y_pred)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return {clusters[j].item(): classes[i].item() for i, j in zip(rows, cols)}


def _entropy(counts: np.ndarray) -> float:
    # = sklearn's _entropy on the label counts (natural log)
    if counts.size == 1:
        return 0.0
    pi = counts.astype(np.float64)
    total = pi.sum()
    return float(-np.sum((pi / total) * (np.log(pi) - math.log(total))))


def _nmi(counts: np.ndarray) -> float:
    """sklearn's ``normalized_mutual_info_score(average_method="arithmetic")`` from the table."""
    n_classes, n_clusters = counts.shape
    if n_classes == n_clusters == 1 or n_classes == n_clusters == 0:
        return 1.0  # neither labelling splits the data: a perfect match by convention
    if n_classes == 1 or n_clusters == 1:
        return 0.0  # mutual information is 0
    nzx, nzy = np.nonzero(counts)
    nz = counts[nzx, nzy].astype(np.float64)
    total = nz.sum()
    pi, pj = counts.sum(axis=1), counts.sum(axis=0)
    p = nz / total
    log_outer = -np.log(pi[nzx] * pj[nzy]) + math.log(pi.sum()) + math.log(pj.sum())
    mi = p * (np.log(nz) - math.log(total)) + p * log_outer
    mi = np.where(np.abs(mi) < np.finfo(mi.dtype).eps, 0.0, mi)
    mi = float(np.clip(mi.sum(), 0.0, None))
    if mi == 0:
        return 0.0
    return float(mi / np.mean([_entropy(pi), _entropy(pj)]))


def _ari(counts: np.ndarray) -> float:
    """sklearn's ``adjusted_rand_score`` from the table (pair counts in exact Python ints)."""
    n = int(counts.sum())
    n_c = [int(a) for a in counts.sum(axis=1)]
    n_k = [int(a) for a in counts.sum(axis=0)]
    sum_sq = sum(int(a) ** 2 for a in counts.ravel())
    tp = sum_sq - n
    fp = sum(int(a) * b for row in counts for a, b in zip(row, n_k)) - sum_sq
    fn = sum(int(a) * b for col in counts.T for a, b in zip(col, n_c)) - sum_sq
    tn = n * n - fp - fn - sum_sq
    if fn == 0 and fp == 0:
        return 1.0
    return 2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn))


def clustering_metrics(y_true, y_pred, *, ignore_label: int | None = -1) -> dict[str, float]:
    """ACC, NMI and ARI of a clustering ``y_pred`` against classes ``y_true``.

    Args:
      y_true: ``[N]`` integer class labels.
      y_pred: ``[N]`` integer cluster labels (any values; any number of clusters).
      ignore_label: samples with ``y_true == ignore_label`` are dropped first (default -1,
        "unlabelled"); ``None`` keeps every sample.

    Returns:
      ``{"acc", "nmi", "ari"}`` as floats in [0, 1] ([-0.5, 1] for ARI). ACC is the fraction
      of samples whose cluster is matched (one-to-one, Hungarian, see ``hungarian_match``) to
      their class; NMI and ARI equal sklearn's, degenerate cases included (one class and one
      cluster: NMI = ARI = 1; one of them alone: NMI = 0).

    Raises:
      ValueError: different lengths, or no samples left.
    """
    y_true, y_pred = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred differ in length: {y_true.shape} vs {y_pred.shape}")
    if ignore_label is not None:
        keep = y_true != ignore_label
        y_true, y_pred = y_true[keep], y_pred[keep]
    if y_true.size == 0:
        raise ValueError("no samples to score (all labels ignored, or empty input)")
    counts, _, _ = confusion_matrix(y_true, y_pred)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    acc = float(counts[rows, cols].sum() / y_true.size)
    return {"acc": acc, "nmi": _nmi(counts), "ari": _ari(counts)}


def roc_curve(scores, positive) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC curve of a detector: higher ``scores`` mean "more likely positive".

    Args:
      scores: ``[N]`` float scores; positive: ``[N]`` bool ground truth.

    Returns:
      ``(fpr [M], tpr [M], thresholds [M])`` with one point per distinct score (ties move
      together), starting at ``(0, 0)`` with threshold ``inf``: sklearn's ``roc_curve`` with
      ``drop_intermediate=False``. A sample is called positive when ``score >= threshold``.

    Raises:
      ValueError: shapes differ, NaN scores, or only one class present.
    """
    s = np.asarray(scores, np.float64).ravel()
    y = np.asarray(positive, bool).ravel()
    if s.shape != y.shape:
        raise ValueError(f"scores and positive differ in length: {s.shape} vs {y.shape}")
    if np.isnan(s).any():
        raise ValueError("scores contain NaN")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"ROC needs both classes; got {n_pos} positive and {n_neg} negative")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]  # last index of each distinct score
    tps = np.cumsum(y)[last]
    fps = (last + 1) - tps
    fpr = np.r_[0.0, fps / n_neg]
    tpr = np.r_[0.0, tps / n_pos]
    return fpr, tpr, np.r_[np.inf, s[last]]


def roc_auc(scores, positive) -> float:
    """Area under the ROC curve (trapezoidal, ties counted half), = sklearn's ``roc_auc_score``."""
    fpr, tpr, _ = roc_curve(scores, positive)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))
