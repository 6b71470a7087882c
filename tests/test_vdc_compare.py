"""The side-by-side command (vdc_jax.compare, configs/vdc/compare.py) end to end on 24 generated
shapes with the demo VLM and CLIP, and the pre-screen hook of the cleanser it runs."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from vdc_jax import compare, fusion

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUESTIONS = 5  # the demo's questions: 1 description + 4 yes/no per class


@pytest.mark.slow  # two VDC runs with the demo VLM, the CLIP view, two probes (~30 s)
def test_compare_end_to_end_on_generated_shapes(tmp_path, mesh8):
    from benchmarks.vdc_prescreen import _config

    c = _config(True, str(tmp_path))  # 24 shapes, 2 BadNets poisons per class + 20 % noise
    c.job = "vdc_compare"
    m = compare.run(c, str(tmp_path / "w"))
    det = m["detectors"]
    want = {"cleanlab", "vdc", "prescreened_vdc", "ours_cl", "fused", "fused_union", "fused_full"}
    assert set(det) == want
    assert m["cleanlab"] == __import__("cleanlab").__version__
    on_disk = json.loads((tmp_path / "w" / "metrics.json").read_text())
    assert on_disk["detectors"]["vdc"]["overall"]["tp"] == det["vdc"]["overall"]["tp"]

    with open(tmp_path / "w" / "samples.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 24
    skip = np.array([r["prescreen_skipped"] == "1" for r in rows])
    col = lambda name: np.array([float(r[name]) for r in rows])
    asked = int((~skip).sum())
    assert m["prescreen"]["skipped"] == int(skip.sum()) and m["prescreen"]["asked"] == asked
    assert sum(m["prescreen"]["skipped_by_kind"].values()) == int(skip.sum())
    # MLLM calls: every question of every sample asked, against those of the asked ones only
    assert det["vdc"]["mllm_calls"] == 24 * QUESTIONS
    assert det["prescreened_vdc"]["mllm_calls"] == asked * QUESTIONS
    assert det["fused"]["mllm_calls"] == asked * QUESTIONS
    assert det["ours_cl"]["mllm_calls"] == det["cleanlab"]["mllm_calls"] == 0
    # an asked sample gets the same answers (and score) whichever batch it is in; a skipped one
    # scores 1 and is kept
    np.testing.assert_allclose(col("prescreened_vdc_score")[~skip], col("vdc_score")[~skip])
    assert (col("prescreened_vdc_score")[skip] == 1).all()
    assert not col("prescreened_vdc_flagged")[skip].any()
    # the fused columns are the stated rules of the columns they fuse
    p = col("ours_cl_score")
    mean = fusion.fuse(col("prescreened_vdc_score"), p, col("ours_cl_flagged") > 0)
    np.testing.assert_allclose(col("fused_score"), mean.score, atol=1e-6)
    np.testing.assert_array_equal(col("fused_flagged") > 0, mean.flags)
    union = (col("prescreened_vdc_flagged") > 0) | (col("ours_cl_flagged") > 0)
    np.testing.assert_array_equal(col("fused_union_flagged") > 0, union)
    assert set(m["targets"]) >= {"prescreen_calls_saved", "fused_tpr_vs_best", "fused_fpr_vs_vdc"}
    # each VDC run is an ordinary cleansing workdir; only the pre-screened one wrote the CLIP files
    for sub in ("vdc", "prescreened"):
        assert (tmp_path / "w" / sub / "scores.csv").exists()
    assert (tmp_path / "w" / "prescreened" / "prescreen.tsv").exists()
    assert not (tmp_path / "w" / "vdc" / "prescreen.tsv").exists()
    assert json.loads((tmp_path / "w" / "vdc" / "metrics.json").read_text())["config"][
        "prescreen"
    ] == {"enabled": False}


@pytest.mark.slow  # a subprocess importing jax
def test_compare_without_clip_is_one_line_exit_2(tmp_path):
    """The command through vdc_jax.main (job vdc_compare): a bad setting is one error line."""
    r = subprocess.run(
        [sys.executable, "-m", "vdc_jax.main", "--config", "configs/vdc/compare.py:blended",
         "--workdir", str(tmp_path), "--config.prescreen.clip="],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr[-2000:]
    assert "config.prescreen.clip" in r.stderr and "Traceback" not in r.stderr
    assert not os.listdir(tmp_path)  # nothing written


def test_targets_poison_ceiling_is_not_applicable():
    e = lambda tpr, fpr, calls, poison: {
        "overall": {"tpr": tpr, "fpr": fpr}, "per_kind": {"blended": {"tpr": poison}},
        "mllm_calls": calls,
    }  # fmt: skip
    t = {"vdc": e(1.0, 0.008, 5000, 1.0), "prescreened_vdc": e(1.0, 0.005, 1400, 1.0),
         "ours_cl": e(0.98, 0.001, 0, 0.97), "fused": e(1.0, 0.005, 1400, 1.0)}  # fmt: skip
    g = compare.targets(t, "blended")
    assert g["fused_poison_tpr_vs_vdc"]["met"] is None
    assert g["fused_tpr_vs_best"]["best"] == 1.0  # no cleanlab column: ours stands in


def test_compare_config_arms():
    from configs.vdc.compare import get_config
    from vl_jax.errors import ConfigError

    c = get_config("badnets")
    assert c.job == "vdc_compare" and c.prescreen.clip and not c.prescreen.enabled
    assert (c.prescreen.min_prob, c.prescreen.neighbours, c.prescreen.min_agree) == (0.9, 10, 0.5)
    assert c.fusion.mode in fusion.MODES and c.corrupt.noise_rate == 0.2
    assert dict(c.corrupt.attack_kwargs) == {}
    cb = get_config("badnets,checkerboard").corrupt.attack_kwargs
    assert dict(cb) == {"pattern": "checkerboard", "trigger_size": None}
    with pytest.raises(ConfigError, match="checkerboard"):
        get_config("blended,checkerboard")
