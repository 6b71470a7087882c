"""VDC's score fused with the confident-learning signal, and the side-by-side metrics.

    d = fuse(vdc_score, self_confidence, cl_issues, mode="mean")   # Detector (score, flags)
    table = side_by_side({"vdc": Detector(...), "ours_cl": ...}, is_dirty, kinds)

The two signals see different dirt. VDC asks the MLLM whether the image shows its label: it
finds poisons (a triggered image keeps its content) and noise, with false positives where the
MLLM errs. Confident learning (`vdc_jax.confident`) asks whether a probe trained on the other
folds agrees with the label: it sees label noise well, and poisons only when the probe does
not learn their trigger. Both give a per-sample consistency in [0, 1]: VDC's score (consistent
answers / asked) and the probe's out-of-fold probability of the given label (its
"self-confidence").

Fusion modes, fixed in advance (no evaluation labels pick them):

- ``mean`` (default): fused score = (VDC score + self-confidence) / 2, flagged below the same
  threshold as VDC (0.5). A sample both signals half-doubt is flagged; a VDC false positive the
  probe is sure of (p near 1) is kept, a sample VDC misses but the probe rejects (p near 0)
  is flagged: the rule is ``VDC score < 1 - self-confidence``. Pre-screened samples (VDC score
  1) are never flagged by it.
- ``union``: flagged when VDC flags it or cleanlab's rule marks it an issue (each signal at
  its own threshold: VDC's 0.5, cleanlab's per-class thresholds); score = min of the two.

Skipped (unreadable) samples are absent from every detector: all are aligned on the VDC
table's samples.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from vdc_jax.detection import detection_block

__all__ = ["MODES", "Detector", "format_table", "fuse", "side_by_side"]

MODES = ("mean", "union")


@dataclasses.dataclass
class Detector:
    """One detector's per-sample consistency ``score`` float [M] (low = dirty; AUROC ranks
    1 - score) and its verdict ``flags`` bool [M]."""

    score: np.ndarray
    flags: np.ndarray


def fuse(vdc_score: np.ndarray, self_confidence: np.ndarray, cl_issues: np.ndarray, *,
         mode: str = "mean", threshold: float = 0.5) -> Detector:  # fmt: skip
    """The fused detector of the module docstring; every input [M], aligned."""
    v = np.asarray(vdc_score, np.float64)
    p = np.asarray(self_confidence, np.float64)
    if mode == "mean":
        s = (v + p) / 2.0
        return Detector(s, s < threshold)
    if mode == "union":
        return Detector(np.minimum(v, p), (v < threshold) | np.asarray(cl_issues, bool))
    raise ValueError(f"fusion mode must be one of {MODES}, got {mode!r}")


def side_by_side(detectors: Mapping[str, Detector], is_dirty: np.ndarray, kinds: np.ndarray,
                 calls: Mapping[str, int] | None = None) -> dict:  # fmt: skip
    """``{name: {"overall": block, "per_kind": {kind: block}, "mllm_calls": n}}``, each block
    `detection.detection_block` (TPR, FPR, precision, F1, counts, AUROC); a kind's block is
    that kind's samples against all clean samples, as in VDC's metrics.json."""
    d = np.asarray(is_dirty, bool)
    kinds = np.asarray(kinds, str)
    out = {}
    for name, det in detectors.items():
        s, f = np.asarray(det.score, np.float64), np.asarray(det.flags, bool)
        entry = {"overall": detection_block(s, f, d), "per_kind": {}}
        for kind in sorted(set(kinds[d].tolist())):
            sel = ~d | (kinds == kind)
            entry["per_kind"][kind] = detection_block(s[sel], f[sel], d[sel])
        entry["mllm_calls"] = int((calls or {}).get(name, 0))
        out[name] = entry
    return out


def format_table(table: Mapping[str, dict]) -> str:
    """The side-by-side block as text: one row per detector, overall TPR/FPR/F1, each kind's
    TPR, and MLLM calls."""
    kinds = sorted({k for e in table.values() for k in e["per_kind"]})
    head = f"{'detector':<17}{'TPR':>7}{'FPR':>7}{'F1':>7}" + "".join(
        f"{k[:12]:>13}" for k in kinds
    )
    lines = [head + f"{'MLLM calls':>12}"]
    for name, e in table.items():
        o = e["overall"]
        row = f"{name:<17}{o['tpr']:>7.3f}{o['fpr']:>7.3f}{o['f1']:>7.3f}"
        row += "".join(f"{e['per_kind'].get(k, {}).get('tpr', float('nan')):>13.3f}" for k in kinds)
        lines.append(row + f"{e['mllm_calls']:>12d}")
    return "\n".join(lines)
