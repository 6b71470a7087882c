"""The README's main command (configs/offline_demo.py) on a reduced subset: its bounds hold.

The full command runs every part on the whole easy-VQA splits; here each part keeps its settings
but reads fewer images, so the suite stays within CI time (colours reads the whole split: on a
subset its margin over k-means is within run-to-run noise). Bounds: MCLA on shapes ACC
>= 0.95 and not below CLIP k-means on the same features; on colours above it; VDC TPR >= 0.95 at
FPR <= 0.05. "Not below" on shapes, not "above": k-means misses one image of this subset
(test/852, a small yellow circle on a pale background) that every classifier *trained with the
labels* on the frozen demo-CLIP features also misses (logistic regression, MLP, RBF-SVM; its 20
nearest training images are all triangles), so no method on these features can do better.
"""

import json
import os
import subprocess
import sys

import pytest

from configs.offline_demo import get_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def parts():
    return get_config().parts


def test_suite_lists_the_demo_parts(parts):
    assert set(parts) == {"kmeans_shapes", "mcla_shapes", "kmeans_colors", "mcla_colors",
                          "vdc_badnets", "vdc_blended"}  # fmt: skip
    for name in ("mcla_shapes", "vdc_badnets"):
        assert os.path.isdir(parts[name].model.get("clip", parts[name].model.get("name")))


def _subset_acc(parts, data, tmp_path, limit=800):
    """ACC of CLIP k-means and MCLA on ``data`` reading ``limit`` images (0: the whole split)."""
    from mcla_jax import experiment

    acc = {}
    for method in ("kmeans", "mcla"):
        c = parts[f"{method}_{data}"]
        if limit:
            c.data.limit = limit
        c.data.features_dir = str(tmp_path / "features")
        c.space.cache_dir = str(tmp_path / "nouns")
        acc[method] = experiment.run(c, str(tmp_path / method))["mean"]["acc"]
        assert (tmp_path / method / "clusters.html").exists()  # the demo's browsable report
    return acc


@pytest.mark.slow
def test_mcla_shapes_bounds(parts, tmp_path):
    acc = _subset_acc(parts, "shapes", tmp_path)
    assert acc["mcla"] >= 0.95
    assert acc["mcla"] >= acc["kmeans"] - 1e-9
    with open(tmp_path / "mcla" / "semantic_space.tsv") as f:
        lemmas = {line.split("\t")[0] for line in f}
    # the margin rule keeps the nouns that tell the shapes apart, not the colour words
    assert {"circle", "triangle", "rectangle"} <= lemmas
    assert not {"red", "green", "blue", "yellow", "black", "gray", "brown", "teal"} & lemmas


@pytest.mark.slow
def test_mcla_colors_above_kmeans(parts, tmp_path):
    # The whole split, as the demo runs it: on an 800-image subset the outcome flipped
    # (0.579 -> 0.518 vs k-means 0.513) under a change equal to 1e-7 in the text path plus
    # exact-kNN tie order, so the subset was testing chance. Full split: 0.779 vs 0.463.
    acc = _subset_acc(parts, "colors", tmp_path, limit=0)
    assert acc["mcla"] >= acc["kmeans"] + 0.03, acc


@pytest.mark.slow
def test_vdc_bounds(parts, tmp_path):
    from vdc_jax import cleanse

    c = parts["vdc_badnets"]
    c.data.split = "test[:300]"
    c.corrupt.poison_per_class = 10
    m = cleanse.run(c, str(tmp_path))
    o = m["overall"]
    assert m["counts"]["dirty"] >= 60  # 20 poisons + ~20 % noise of 300
    assert o["tpr"] >= 0.95 and o["fpr"] <= 0.05, o
    for name in ("scores.csv", "kept_ids.txt", "label_issues.npy", "cleaned.csv", "roc.png",
                 "report.html"):  # fmt: skip
        assert (tmp_path / name).exists(), name


@pytest.mark.slow
def test_main_prints_where_outputs_are(tmp_path):
    # The top-level entry point runs a suite part by part; one tiny part is enough to check it.
    cfg = tmp_path / "suite.py"
    cfg.write_text(
        "import ml_collections\n"
        "import configs.mcla\n"
        "def get_config():\n"
        "    c = ml_collections.ConfigDict()\n"
        "    c.job = 'suite'\n"
        "    k = configs.mcla.get('kmeans', 'runlocal')\n"
        "    k.data.limit = 200\n"
        "    c.parts = {'a': k}\n"
        "    return c\n"
    )
    done = subprocess.run([sys.executable, "main.py", f"--config={cfg}", f"--workdir={tmp_path / 'w'}"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    with open(tmp_path / "w" / "a" / "metrics.json") as f:
        assert json.load(f)["method"] == "kmeans"
    assert "kmeans on easy_vqa_shapes" in done.stderr
