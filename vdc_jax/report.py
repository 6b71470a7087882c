"""The cleanser's outputs: per-sample scores, detection metrics, the cleaned dataset, plots.

    write_report(workdir, Table(...), threshold=0.5, config_summary={...})

writes (atomically, via `vl_jax.fileio.atomic_open`; on the writer process only,
`vl_jax.workdir.is_writer`):

- ``scores.csv``: one row per scored sample in dataset order: ``index, id, label, class, score,
  flagged, consistent, total`` and, when the ground truth is known (injected dirt),
  ``is_dirty, dirt_kind`` (``""`` for clean samples);
- ``metrics.json``: counts (``skipped``: samples left out because their image could not be
  read; ``dropped_answers``: empty answers left out under the official protocol), the
  threshold, the protocol (``protocol``: its name, general questions, empty-answer rule and
  detection rule; ``rule``) and the config summary and — with ground truth — TPR,
  FPR, precision, F1 (at the threshold) and AUROC (threshold-free; "dirtiness" = 1 - score):
  overall, per dirt kind (that kind's samples against all clean samples) and per class (the
  samples that carry the class's label, after corruption);
- ``kept_ids.txt``: ids of the samples not flagged, one per line, in dataset order;
- ``label_issues.npy``: ``bool [N]`` (``np.save``; N = dataset length, dataset order), True
  where a sample is flagged — cleanlab's ``find_label_issues`` mask;
- ``cleaned.csv``: ``path,label`` of the kept samples when they are files (absolute paths,
  class names), else ``id,label``;
- ``skipped.tsv``: ``id<TAB>reason`` (with a header) of every sample whose image could not
  be read (missing, truncated, not an image): it is not scored, so it is neither kept nor
  flagged (False in ``label_issues.npy``, absent from ``cleaned.csv``). Written on every run,
  header only when nothing was skipped, so a stale list never outlives its run;
- ``judgements.jsonl``: one JSON line per description the judge decided (``id, description,
  consistent, reason``), for the report; empty without a judge;
- ``scores_hist.png`` (score histograms, clean vs each dirt kind, or all samples without ground
  truth) and ``roc.png`` (overall and per kind; with ground truth only).
- ``report.html``: the browsable report of `vdc_jax.report_html` (flagged samples with their
  images as judged, every question and answer; filters), regenerated without the model by
  ``python -m vdc_jax.report_html --workdir DIR``.
"""

from __future__ import annotations

import csv
import io
import json
import os

import numpy as np

from vdc_jax import report_html
from vdc_jax.detection import compute_metrics
from vdc_jax.protocol import OURS, Rules
from vdc_jax.scoring import Table

__all__ = ["Table", "write_report"]
from vl_jax import metrics, plots
from vl_jax.data.pipeline import write_skipped
from vl_jax.fileio import atomic_open
from vl_jax.runlog import write_json
from vl_jax.workdir import is_writer


def _csv_text(header: list[str], rows) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def write_report(
    workdir: str,
    t: Table,
    *,
    threshold: float,
    config_summary: dict | None = None,
    rules: Rules | None = None,
    source=None,
) -> dict:
    """Writes every output listed in the module docstring; returns the metrics dict.

    `rules`: the protocol's rule set (default ours); metrics.json records it (``protocol``,
    ``rule``) and its detection rule decides the metrics' flags (`detection.compute_metrics`).
    `source`: the run's dataset (with its dirt), for report.html's images."""
    rules = OURS if rules is None else rules
    m = compute_metrics(t, rules, threshold)
    m["counts"]["skipped"] = len(t.skipped)
    if t.dropped is not None:
        m["counts"]["dropped_answers"] = int(t.dropped.sum())
    m["threshold"] = float(threshold)
    m["protocol"] = rules.summary()
    m["rule"] = rules.rule
    m["config"] = dict(config_summary or {})
    if not is_writer():
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
    write_skipped(path("skipped.tsv"), t.skipped)
    with atomic_open(path("judgements.jsonl"), "w", encoding="utf-8") as f:  # for report.html
        f.writelines(json.dumps({"id": i, "description": d, "consistent": bool(c), "reason": why})
                     + "\n" for i, d, c, why in t.judged)  # fmt: skip

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
    # Last: the page is built from the files above (the same code as its regenerate command).
    report_html.write(workdir, require_answers=False, source=source)
    return m
