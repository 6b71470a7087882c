"""`python -m benchmarks.paper_tables`: the shipped published numbers, the tables it renders, what
it reports as missing, and a --quick run on a small slice of the offline demo."""

import json

import pytest

from benchmarks import paper_tables as pt


def test_published_csv_has_a_source_for_every_number():
    published = pt.read_published()
    metrics = {"clustering": {"acc", "nmi", "ari"}, "vdc": {"tpr", "fpr"}}
    for (task, method, dataset, setting), entry in published.items():
        assert task == "clustering" or setting, (method, dataset)
        assert task in metrics and set(entry) <= metrics[task], (task, method, dataset)
        for value, source in entry.values():
            assert 0 <= value <= 100 and len(source) > 20
        if task == "clustering":
            assert method in pt.CLUSTER_METHODS and dataset in pt.PAPER_CLUSTERING
    # the numbers the docs quote (docs/mcla.md, docs/vdc.md)
    assert published[("clustering", "tac", "imagenet_dogs", "")]["acc"][0] == 82.4
    assert published[("clustering", "sic", "imagenet_dogs", "")]["nmi"][0] == 69.0
    assert published[("vdc", "vdc", "imagenet_dog", "badnets")]["tpr"][0] == 98.89
    assert published[("vdc", "vdc", "cifar10", "poison avg")]["fpr"][0] == 2.75


def test_render_puts_ours_beside_published_and_lists_missing():
    ran = pt.Cell("clustering", "tac", "imagenet_dogs", "")
    ran.values = {"acc": [80.0, 82.0], "nmi": [77.0, 79.0], "ari": [70.0, 72.0]}
    gone = pt.Cell("clustering", "sic", "imagenet_dogs", "", missing="data: imagenet_dogs (x)")
    attacks = []
    for i, attack in enumerate(pt.ATTACKS):
        c = pt.Cell("vdc", "vdc", "cifar10", attack)
        c.values = {"tpr": [90.0 + i], "fpr": [2.0]}
        attacks.append(c)
    header = {"date": "D", "machine": "M", "seeds": "0,1", "flags": " --quick"}
    text = pt.render([ran, gone, *attacks], pt.read_published(), header)
    assert "| tac | imagenet_dogs | 81.00 ± 1.00 | 78.00 ± 1.00 | 71.00 ± 1.00 | 82.40 |" in text
    assert "| sic | imagenet_dogs | missing: data: imagenet_dogs (x) |" in text
    # the published poison average is compared with the mean over our six attacks
    assert "| cifar10 | poison avg | 92.50 ± 0.00 | 2.00 ± 0.00 | 99.91 | 2.75 |" in text
    assert "| imagenet100 | poison avg | missing: the six attacks |" in text
    # published rows we have no cell for still appear, ours as "-"
    assert "| kmeans | stl10 | - | - | - | 94.30 |" in text
    assert "Sources:" in text and "TAC (Li et al., ICML 2024)" in text


def test_missing_checks_need_no_network(tmp_path):
    assert pt.missing_weights("nobody/no-such-model-here").startswith("weights: nobody/")
    assert pt.missing_weights(str(tmp_path)) == ""
    why = pt.missing_data("cifar10", ("train",), str(tmp_path))
    assert why == "data: cifar10 (train) is not prepared (docs/data.md)"


def test_bad_seeds_are_one_line_and_exit_2(tmp_path, capsys):
    assert pt.main(["--out", str(tmp_path), "--seeds", "a,b"]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0


@pytest.mark.slow
def test_quick_run_on_a_slice(tmp_path):
    """--quick --only kmeans: CLIP k-means on 200 easy-VQA shapes per split with the demo CLIP;
    every paper dataset is listed as missing (none is prepared in the empty data dir, except the
    easy-VQA set the run prepares)."""
    out = tmp_path / "out"
    assert pt.main(["--out", str(out), "--quick", "--only", "kmeans",
                    "--data_dir", str(tmp_path / "tfds")]) == 0  # fmt: skip
    text = (out / "paper_tables.md").read_text()
    row = next(r for r in text.splitlines() if r.startswith("| kmeans | easy_vqa_shapes |"))
    acc = float(row.split("|")[3].split("±")[0])
    assert 50 < acc <= 100  # the demo CLIP separates the three shapes well (99.5 measured)
    assert "| kmeans | imagenet_dogs | missing: data: imagenet_dogs (train) is not prepared" in text
    assert "| imagenet_dog | badnets | missing: data: imagenet_dog10" in text
    record = json.loads((out / "paper_tables.json").read_text())
    ran = [c for c in record["cells"] if c["values"]]
    assert [(c["method"], c["dataset"]) for c in ran] == [("kmeans", "easy_vqa_shapes")]
    assert "foreign_cpu_cores" in ran[0] and ran[0]["seconds"] > 0
    assert not any(c["method"] == "mcla" and not c["missing"] for c in record["cells"])


def test_render_only_rewrites_the_tables_from_the_record(tmp_path, capsys):
    assert pt.main(["--out", str(tmp_path), "--render_only"]) == 2  # no record yet
    assert "needs" in capsys.readouterr().err
    cell = {"task": "clustering", "method": "tac", "dataset": "easy_vqa_colors", "setting": "",
            "missing": "", "values": {"acc": [95.0, 97.0], "nmi": [1.0, 1.0], "ari": [2.0, 4.0]},
            "seconds": 3.0, "foreign_cpu_cores": 0.1}  # fmt: skip
    record = {"date": "2026-01-01 00:00 UTC", "machine": "M", "seeds": "0,1", "flags": "",
              "foreign_cpu_cores": 0.1, "cells": [cell]}  # fmt: skip
    (tmp_path / "paper_tables.json").write_text(json.dumps(record))
    args = ["--out", str(tmp_path), "--render_only", "--data_dir", str(tmp_path / "tfds")]
    assert pt.main(args) == 0
    text = (tmp_path / "paper_tables.md").read_text()
    assert "| tac | easy_vqa_colors | 96.00 ± 1.00 | 1.00 ± 0.00 | 3.00 ± 1.00 |" in text
    assert "Generated 2026-01-01 00:00 UTC" in text
    assert "| mcla | easy_vqa_colors | - | - | - |" in text  # in the run's cells, not recorded
    assert "| kmeans | cifar10 | missing: data: cifar10 (train) is not prepared" in text
