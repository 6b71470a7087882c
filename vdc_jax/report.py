"""The cleanser's outputs: per-sample scores, detection metrics, the cleaned dataset, plots.

    write_report(workdir, Table(...), threshold=0.5, config_summary={...})

writes (atomically, via `vl_jax.fileio.atomic_open`; process 0 only):

- ``scores.csv``: one row per sample in dataset order: ``index, id, label, class, score,
  flagged, consistent, total`` and, when the ground truth is known (injected dirt),
  ``is_dirty, dirt_kind`` (``""`` for clean samples);
- ``metrics.json``: counts, the threshold, the config summary and — with ground truth — TPR,
  FPR, precision, F1 (at the threshold) and AUROC (threshold-free; "dirtiness" = 1 - score):
  overall, per dirt kind (that kind's samples against all clean samples) and per class (the
  samples that carry the class's label, after corruption);
- ``kept_ids.txt``: ids of the samples not flagged, one per line, in dataset order;
- ``label_issues.npy``: ``bool [N]`` (``np.save``; N = dataset length, dataset order), True
  where a sample is flagged — cleanlab's ``find_label_issues`` mask;
- ``cleaned.csv``: ``path,label`` of the kept samples when they are files (absolute paths,
  class names), else ``id,label``;
- ``scores_hist.png`` (score histograms, clean vs each dirt kind, or all samples without ground
  truth) and ``roc.png`` (overall and per kind; with ground truth only).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os

import numpy as np

from vdc_jax.answers import detection_metrics
from vl_jax import metrics, plots
from vl_jax.fileio import atomic_open
from vl_jax.runlog import is_main_process, write_json


@dataclasses.dataclass
class Table:
    """Per-sample results, all [M] in dataset order (M <= N: samples without a label are not
    scored); `n` is the dataset length N for the label-issue mask."""

    index: np.ndarray  # int [M] dataset position
    ids: list[str]
    labels: np.ndarray  # int [M] label checked (after corruption)
    class_names: list[str]
    score: np.ndarray  # float [M]
    flagged: np.ndarray  # bool [M]
    consistent: np.ndarray  # int [M]
    total: np.ndarray  # int [M]
    n: int
    is_dirty: np.ndarray | None = None  # bool [M], when known
    kinds: np.ndarray | None = None  # str [M], "" = clean, when known
    paths: list[str] | None = None  # [M] image files, when known


def detection_block(score: np.ndarray, flagged: np.ndarray, dirty: np.ndarray) -> dict:
    """detection_metrics at the threshold + AUROC of 1 - score (NaN with one class only)."""
    out = dict(detection_metrics(flagged, dirty))
    both = dirty.any() and (~dirty).any()
    out["auroc"] = metrics.roc_auc(1.0 - score, dirty) if both else math.nan
    out["n"], out["n_dirty"] = int(dirty.size), int(dirty.sum())
    return out


def compute_metrics(t: Table) -> dict:
    """The ``metrics.json`` body without the config summary (see the module docstring)."""
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
    out["counts"]["dirty"] = int(d.sum())
    out["overall"] = detection_block(t.score, t.flagged, d)
    clean = ~d
    out["per_kind"] = {}
    for kind in sorted(set(t.kinds[d].tolist())):
        sel = clean | (t.kinds == kind)
        out["per_kind"][kind] = detection_block(t.score[sel], t.flagged[sel], d[sel])
    out["per_class"] = {}
    for c, name in enumerate(t.class_names):
        sel = t.labels == c
        if sel.any():
            out["per_class"][name] = detection_block(t.score[sel], t.flagged[sel], d[sel])
    return out


def _csv_text(header: list[str], rows) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def write_report(
    workdir: str, t: Table, *, threshold: float, config_summary: dict | None = None
) -> dict:
    """Writes every output listed in the module docstring; returns the metrics dict."""
    m = compute_metrics(t)
    m["threshold"] = float(threshold)
    m["rule"] = "dirty iff score < threshold"
    m["config"] = dict(config_summary or {})
    if not is_main_process():
        return m
    path = lambda name: os.path.join(workdir, name)
    known = t.is_dirty is not None
    header = ["index", "id", "label", "class", "score", "flagged", "consistent", "total"]
    header += ["is_dirty", "dirt_kind"] if known else []
    rows = []
    for k in range(len(t.ids)):
        row = [int(t.index[k]), t.ids[k], int(t.labels[k]), t.class_names[t.labels[k]],
               f"{t.score[k]:.6f}", int(t.flagged[k]), int(t.consistent[k]), int(t.total[k])]  # fmt: skip
        rows.append(row + ([int(t.is_dirty[k]), t.kinds[k]] if known else []))
    with atomic_open(path("scores.csv"), "w", encoding="utf-8", newline="") as f:
        f.write(_csv_text(header, rows))
    write_json(path("metrics.json"), m)

    kept = ~t.flagged
    with atomic_open(path("kept_ids.txt"), "w", encoding="utf-8") as f:
        f.writelines(f"{t.ids[k]}\n" for k in np.flatnonzero(kept))
    mask = np.zeros(t.n, bool)
    mask[np.asarray(t.index, int)[t.flagged]] = True
    with atomic_open(path("label_issues.npy"), "wb") as f:
        np.save(f, mask, allow_pickle=False)
    first = "path" if t.paths is not None else "id"
    names = t.paths if t.paths is not None else t.ids
    with atomic_open(path("cleaned.csv"), "w", encoding="utf-8", newline="") as f:
        f.write(_csv_text([first, "label"],
                          [[names[k], t.class_names[t.labels[k]]] for k in np.flatnonzero(kept)]))  # fmt: skip

    if known:
        groups = {"clean": t.score[~t.is_dirty]}
        groups |= {k: t.score[t.kinds == k] for k in m["per_kind"]}
        curves = {}
        for name, sel in [("all dirt", np.ones_like(t.is_dirty))] + [
            (k, ~t.is_dirty | (t.kinds == k)) for k in m["per_kind"]
        ]:
            d = t.is_dirty[sel]
            if d.any() and (~d).any():
                fpr, tpr, _ = metrics.roc_curve(1.0 - t.score[sel], d)
                curves[name] = (fpr, tpr, metrics.roc_auc(1.0 - t.score[sel], d))
        if curves:
            plots.roc_png(path("roc.png"), curves, title="VDC: dirty-sample detection")
    else:
        groups = {"all samples": t.score}
    plots.histograms_png(path("scores_hist.png"), groups, threshold=threshold,
                         title="VDC consistency score", xlabel="score (consistent / asked)")  # fmt: skip
    return m
