"""Side by side on one dataset: cleanlab (peer), our confident learning, VDC, pre-screened VDC,
fused — ``python -m vdc_jax.main --config configs/vdc/compare.py:badnets --workdir W`` (or
``python main.py``, job ``vdc_compare``).

    W/vdc/           full VDC (every sample asked): vdc_jax.cleanse outputs
    W/prescreened/   VDC with config.prescreen on (+ clip_view.npz, prescreen.tsv)
    W/metrics.json   {"detectors": {name: overall / per_kind / mllm_calls}, "targets": ...}
    W/samples.csv    per sample: ground truth, pre-screen decision, every detector's score, flag

Both VDC runs read the same config (only ``prescreen.enabled`` differs) and share one loaded
MLLM; each resumes from its own workdir. The confident-learning signal reads the CLIP view the
pre-screen wrote (the same images, encoded once): out-of-fold probe probabilities on the CLIP
image features of the samples VDC scored, with their (possibly corrupted) labels, then
cleanlab's rule (`vdc_jax.confident`). The peer is cleanlab itself as a user runs it —
``estimate_cv_predicted_probabilities`` with scikit-learn's default ``LogisticRegression`` on
the same features, then ``find_label_issues`` — only when cleanlab is importable (a test extra;
the library never needs it); otherwise metrics.json and stderr say it is missing.

Fusion (`vdc_jax.fusion`) of the pre-screened VDC score with our probe's self-confidence:
``fused`` in ``config.fusion.mode`` (the detector the targets read), ``fused_<other mode>``
reported beside it, and ``fused_full``: the configured mode on the full VDC run.

``mllm_calls`` counts the (image, question) generations in each run's answers.jsonl; the
confident-learning detectors make none. ``targets`` checks the goals stated in docs/vdc.md
("Pre-screen and confident learning") and records the numbers behind each. The ground truth
is read only to compute these metrics: no threshold, mode or setting depends on it.
"""

from __future__ import annotations

import copy
import csv
import logging
import os
import sys
import time

import numpy as np

from vdc_jax import cleanse, confident, fusion
from vdc_jax.models import load_mllm
from vdc_jax.prescreen import ClipView
from vl_jax import parallel
from vl_jax import workdir as wd
from vl_jax.errors import ConfigError
from vl_jax.fileio import atomic_open
from vl_jax.runlog import write_json

log = logging.getLogger(__name__)

__all__ = ["run"]


def _part(config, prescreen: bool):
    c = copy.deepcopy(config)
    c.job = "vdc"
    c.prescreen.enabled = prescreen
    return c


def cleanlab_peer(features: np.ndarray, labels: np.ndarray, folds: int, seed: int):
    """(issues bool [N], self-confidence [N], version) of cleanlab's own pipeline, or None
    when cleanlab (or scikit-learn) is not installed."""
    try:
        import cleanlab
        from cleanlab.count import estimate_cv_predicted_probabilities
        from cleanlab.filter import find_label_issues
    except ImportError:
        return None
    probs = estimate_cv_predicted_probabilities(features, labels, cv_n_folds=folds, seed=seed)
    issues = find_label_issues(labels, probs, n_jobs=1)
    return issues, probs[np.arange(len(labels)), labels], cleanlab.__version__


def run(config, workdir: str) -> dict:
    """Runs both VDC variants and the confident-learning signals; writes W/metrics.json."""
    if not config.corrupt.attack and not config.corrupt.noise:
        raise ConfigError("the comparison needs injected dirt (config.corrupt) to measure TPR/FPR")
    if not config.prescreen.clip:
        raise ConfigError("the comparison needs config.prescreen.clip (a CLIP checkpoint)")
    wd.makedirs(workdir)
    mesh = parallel.mesh_from_config(config.mesh.to_dict())
    mllm = load_mllm(config.model, workdir, mesh)
    seconds = {}
    results = {}
    for name, on in (("vdc", False), ("prescreened", True)):
        t0 = time.perf_counter()
        results[name] = cleanse.clean(_part(config, on), os.path.join(workdir, name), mllm=mllm)
        seconds[name] = time.perf_counter() - t0
    (m_full, t_full), (m_pre, t_pre) = results["vdc"], results["prescreened"]
    if not np.array_equal(t_full.index, t_pre.index):
        raise RuntimeError("the two VDC runs scored different samples")
    view = ClipView.load(os.path.join(workdir, "prescreened", "clip_view.npz"))
    row = {int(i): r for r, i in enumerate(view.index)}
    if any(int(i) not in row for i in t_full.index):
        raise RuntimeError("a sample VDC scored has no CLIP features")
    feats = view.features[[row[int(i)] for i in t_full.index]]
    labels, k = t_full.labels, len(t_full.class_names)

    t0 = time.perf_counter()
    cc = config.confident
    probs = confident.oof_probabilities(feats, labels, k, folds=cc.folds, seed=cc.seed,
                                        l2_c=cc.l2_c, steps=cc.steps, mesh=mesh)  # fmt: skip
    ours = confident.find_label_issues(labels, probs, mesh=mesh)
    seconds["ours_cl"] = time.perf_counter() - t0
    det = {
        "vdc": fusion.Detector(t_full.score, t_full.flagged),
        "prescreened_vdc": fusion.Detector(t_pre.score, t_pre.flagged),
        "ours_cl": fusion.Detector(ours.self_confidence, ours.issues),
        "fused": fusion.fuse(
            t_pre.score,
            ours.self_confidence,
            ours.issues,
            mode=config.fusion.mode,
            threshold=config.threshold,
        ),
        "fused_full": fusion.fuse(
            t_full.score,
            ours.self_confidence,
            ours.issues,
            mode=config.fusion.mode,
            threshold=config.threshold,
        ),
    }
    other = next(m for m in fusion.MODES if m != config.fusion.mode)
    det[f"fused_{other}"] = fusion.fuse(t_pre.score, ours.self_confidence, ours.issues,
                                        mode=other, threshold=config.threshold)  # fmt: skip
    t0 = time.perf_counter()
    peer = cleanlab_peer(feats, labels, cc.folds, cc.seed)
    if peer is None:
        print("vdc compare: cleanlab is not installed (pip install cleanlab): the peer column "
              "is left out", file=sys.stderr)  # fmt: skip
    else:
        det = {"cleanlab": fusion.Detector(peer[1], peer[0])} | det
        seconds["cleanlab"] = time.perf_counter() - t0
    calls = {"vdc": m_full["config"]["answers"], "prescreened_vdc": m_pre["config"]["answers"]}
    calls |= {"fused": calls["prescreened_vdc"], f"fused_{other}": calls["prescreened_vdc"],
              "fused_full": calls["vdc"]}  # fmt: skip
    table = fusion.side_by_side(det, t_full.is_dirty, t_full.kinds, calls)
    skipped = _skipped(os.path.join(workdir, "prescreened", "prescreen.tsv"), t_full.ids)
    m = {
        "detectors": table,
        "cleanlab": peer[2] if peer else "not installed",
        # what the pre-screen let through unasked, by ground-truth kind (a report, not a choice)
        "prescreen": m_pre["config"]["prescreen"]
        | {"skipped_by_kind": _by_kind(skipped, t_full.kinds)},
        "fusion": config.fusion.mode,
        "targets": targets(table, config.corrupt.attack),
        "seconds": seconds,
        "dataset": m_full["config"]["dataset"],
        "corrupt": m_full["config"]["corrupt"],
    }
    if wd.is_writer():
        _write_samples(os.path.join(workdir, "samples.csv"), t_full, det, skipped)
        write_json(os.path.join(workdir, "metrics.json"), m)
    print(fusion.format_table(table), file=sys.stderr)
    print(f"vdc compare: outputs in {workdir}", file=sys.stderr)
    return m


def _skipped(path: str, ids: list[str]) -> np.ndarray:
    """bool [M]: the samples ``prescreen.tsv`` marks skipped, aligned with ``ids``."""
    with open(path, encoding="utf-8", newline="") as f:
        skip = {
            r["id"]
            for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
            if r["skipped"] == "1"
        }
    return np.asarray([i in skip for i in ids], bool)


def _by_kind(mask: np.ndarray, kinds: np.ndarray) -> dict:
    kinds = np.where(np.asarray(kinds, str) == "", "clean", np.asarray(kinds, str))
    return {k: int((mask & (kinds == k)).sum()) for k in sorted(set(kinds.tolist()))}


def _write_samples(path: str, t, det: dict, skipped: np.ndarray) -> None:
    """``samples.csv``: per scored sample (dataset order) its id, label, ground truth, whether
    the pre-screen skipped it, and each detector's score and flag."""
    names = list(det)
    head = ["index", "id", "label", "dirt_kind", "prescreen_skipped"]
    head += [f"{n}_{c}" for n in names for c in ("score", "flagged")]
    with atomic_open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(head)
        for r in range(len(t.ids)):
            row = [int(t.index[r]), t.ids[r], int(t.labels[r]), t.kinds[r], int(skipped[r])]
            for n in names:
                row += [f"{float(det[n].score[r]):.6f}", int(det[n].flags[r])]
            w.writerow(row)


def targets(table: dict, attack: str) -> dict:
    """The goals of docs/vdc.md, each with the numbers it compares and whether it holds:
    pre-screen calls saved >= 50 % with |TPR - full| <= 0.01 and FPR <= full + 0.005; fused
    TPR >= the better of VDC and cleanlab at FPR <= VDC's; the poisons' fused TPR above VDC's."""
    o = lambda name: table[name]["overall"]
    full, pre, fused = o("vdc"), o("prescreened_vdc"), o("fused")
    saved = 1.0 - table["prescreened_vdc"]["mllm_calls"] / max(table["vdc"]["mllm_calls"], 1)
    peer = table["cleanlab"]["overall"]["tpr"] if "cleanlab" in table else o("ours_cl")["tpr"]
    best = max(full["tpr"], peer)
    out = {
        "prescreen_calls_saved": {"value": saved, "met": saved >= 0.5},
        "prescreen_tpr_delta": {"value": pre["tpr"] - full["tpr"],
                                "met": abs(pre["tpr"] - full["tpr"]) <= 0.01},
        "prescreen_fpr_delta": {"value": pre["fpr"] - full["fpr"],
                                "met": pre["fpr"] - full["fpr"] <= 0.005},
        "fused_tpr_vs_best": {"value": fused["tpr"], "best": best, "met": fused["tpr"] >= best},
        "fused_fpr_vs_vdc": {"value": fused["fpr"], "vdc": full["fpr"],
                             "met": fused["fpr"] <= full["fpr"]},
    }  # fmt: skip
    if attack and attack in table["vdc"]["per_kind"]:
        f, v = table["fused"]["per_kind"][attack]["tpr"], table["vdc"]["per_kind"][attack]["tpr"]
        # VDC at 1.0 cannot be exceeded: None = not applicable, not a failure
        out["fused_poison_tpr_vs_vdc"] = {"value": f, "vdc": v, "met": f > v if v < 1 else None}
    return out
