"""Detection metrics of the cleanser against the injected ground truth, in one place.

    flagged = flag_dirty(scores, threshold)            # bool [N]: score < threshold
    detection_metrics(flagged, dirty)                  # TPR, FPR, precision, F1 (+ counts)
    compute_metrics(table)                             # metrics.json body: overall / kind / class

TPR is recall on the dirty samples, FPR the share of clean samples flagged; AUROC is
threshold-free, ranking samples by "dirtiness" = 1 - score. Undefined ratios are NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from vl_jax import metrics

if TYPE_CHECKING:
    from vdc_jax.protocol import Rules
    from vdc_jax.scoring import Table

__all__ = ["compute_metrics", "detection_block", "detection_metrics", "flag_dirty"]


def flag_dirty(scores: Sequence[float], threshold: float = 0.5) -> np.ndarray:
    """``bool [N]``: dirty iff ``score < threshold`` (one rule for every sample; see docs/vdc.md).

    The paper's code flags ``score <= 0.5`` for poisoned samples; with Q questions per sample
    that equals ``score < threshold`` for any threshold in (0.5, 0.5 + 1/Q].
    """
    return np.asarray(scores, np.float64) < threshold


def detection_metrics(flagged: Sequence[bool], dirty: Sequence[bool]) -> dict[str, float]:
    """TPR (recall on dirty), FPR (flagged among clean), precision and F1; NaN where undefined."""
    f, d = np.asarray(flagged, bool), np.asarray(dirty, bool)
    if f.shape != d.shape:
        raise ValueError(f"flagged {f.shape} and dirty {d.shape} differ in shape")
    tp, fp = int(np.sum(f & d)), int(np.sum(f & ~d))
    fn, tn = int(np.sum(~f & d)), int(np.sum(~f & ~d))
    div = lambda a, b: a / b if b else math.nan
    tpr, precision = div(tp, tp + fn), div(tp, tp + fp)
    f1 = div(2 * tp, 2 * tp + fp + fn)
    return {"tpr": tpr, "fpr": div(fp, fp + tn), "precision": precision, "f1": f1} | {
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
    }


def detection_block(score: np.ndarray, flagged: np.ndarray, dirty: np.ndarray) -> dict:
    """detection_metrics at the threshold + AUROC of 1 - score (NaN with one class only)."""
    out = dict(detection_metrics(flagged, dirty))
    both = dirty.any() and (~dirty).any()
    out["auroc"] = metrics.roc_auc(1.0 - score, dirty) if both else math.nan
    out["n"], out["n_dirty"] = int(dirty.size), int(dirty.sum())
    return out


def compute_metrics(t: Table, rules: Rules | None = None, threshold: float = 0.5) -> dict:
    """The ``metrics.json`` body without the config summary (see the module docstring).

    The detection blocks count `rules.detected(score, is_dirty, threshold)` — under the official
    protocol a dirty sample at exactly the threshold is detected — while ``counts`` (flagged,
    kept) are the outputs' flags, ``t.flagged`` (score < threshold under both protocols)."""
    out = {
        "counts": {
            "dataset": int(t.n),
            "scored": len(t.ids),
            "flagged": int(t.flagged.sum()),
            "kept": int(len(t.ids) - t.flagged.sum()),
        },
        "score_mean": float(np.mean(t.score)) if len(t.score) else math.nan,
    }
    if t.is_dirty is None:
        return out
    d = t.is_dirty
    flags = t.flagged if rules is None else rules.detected(t.score, d, threshold)
    out["counts"]["dirty"] = int(d.sum())
    out["overall"] = detection_block(t.score, flags, d)
    clean = ~d
    out["per_kind"] = {}
    for kind in sorted(set(t.kinds[d].tolist())):
        sel = clean | (t.kinds == kind)
        out["per_kind"][kind] = detection_block(t.score[sel], flags[sel], d[sel])
    out["per_class"] = {}
    for c, name in enumerate(t.class_names):
        sel = t.labels == c
        if sel.any():
            out["per_class"][name] = detection_block(t.score[sel], flags[sel], d[sel])
    return out
