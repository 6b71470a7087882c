"""vl_jax.metrics ROC vs sklearn, vl_jax.runlog outputs, vl_jax.plots PNGs."""

import json
import os

import numpy as np
import pytest
from PIL import Image
from sklearn import metrics as skm

from vl_jax import plots, runlog
from vl_jax.metrics import roc_auc, roc_curve


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_roc_equals_sklearn(seed):
    rng = np.random.default_rng(seed)
    y = rng.random(300) < 0.3
    s = np.round(rng.normal(size=300) + y, 1)  # rounding makes ties
    fpr, tpr, thr = roc_curve(s, y)
    sf, st, sth = skm.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sf)
    np.testing.assert_allclose(tpr, st)
    np.testing.assert_allclose(thr[1:], sth[1:])
    assert roc_auc(s, y) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)


def test_roc_rejects_one_class_and_nan():
    with pytest.raises(ValueError, match="both classes"):
        roc_curve([0.1, 0.2], [True, True])
    with pytest.raises(ValueError, match="NaN"):
        roc_curve([0.1, np.nan], [True, False])


def test_write_json_and_metric_writer(tmp_path):
    runlog.write_json(
        tmp_path / "m.json", {"a": np.float32(0.5), "b": np.arange(3), "c": float("nan")}
    )
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": 0.5, "b": [0, 1, 2], "c": "nan"}
    with runlog.MetricWriter(tmp_path) as w:
        w.scalars(0, {"loss": 1.0})
        w.scalars(1, {"loss": np.float32(0.5)})
    with open(tmp_path / "log.jsonl", "a") as f:
        f.write('{"step": 2, "lo')  # a torn line from a killed writer
    assert runlog.read_jsonl(tmp_path / "log.jsonl") == [
        {"step": 0, "loss": 1.0},
        {"step": 1, "loss": 0.5},
    ]
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(tmp_path / "tensorboard"))


def test_plots_write_pngs(tmp_path):
    rng = np.random.default_rng(0)
    p1 = plots.confusion_png(tmp_path / "c.png", rng.integers(0, 9, (4, 5)), row_names=list("abcd"))
    p2 = plots.histograms_png(
        tmp_path / "h.png", {"clean": rng.random(50), "dirty": np.zeros(0)}, threshold=0.5
    )
    y = rng.random(40) < 0.5
    s = rng.random(40)
    fpr, tpr, _ = roc_curve(s, y)
    p3 = plots.roc_png(tmp_path / "r.png", {"all": (fpr, tpr, roc_auc(s, y))})
    for p in (p1, p2, p3):
        with Image.open(p) as im:
            assert im.format == "PNG" and im.size[0] > 100
    assert sorted(os.listdir(tmp_path)) == ["c.png", "h.png", "r.png"]  # no temp debris
