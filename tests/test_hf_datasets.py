"""Hugging Face datasets in and out (vl_jax.data.hf, vdc_jax.export_hf): save_to_disk folders,
image folders and parquet read as sources; VDC cleans one and exports it with label_issue and
score columns, read back with datasets.load_from_disk; MCLA clusters one; bad columns, hub names
and bad images are clear. Every dataset is built in the test; nothing is downloaded."""

import csv
import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import datasets  # the test extra
import numpy as np
import pytest

from vdc_jax import export_hf
from vdc_jax.inputs import SHAPES, write_shapes_folder
from vl_jax.data import get_source
from vl_jax.data.files import DataError, FileSource
from vl_jax.data.hf import HFSpec, hf_source
from vl_jax.data.pipeline import make_pipeline
from vl_jax.errors import NotFoundError
from vl_jax.images import ImageError

REPO = Path(__file__).resolve().parents[1]


def _dataset_dict(folder: Path, bad_row: int | None = None):
    """``train`` = every shape image of ``folder`` (``file`` = its relative path), ``test`` =
    the first 2 of each class; ``label`` a ClassLabel. ``bad_row``: that train row's bytes are
    cut in half (a truncated PNG)."""
    src = FileSource.from_folder(str(folder), labelled_only=True)
    features = datasets.Features(
        {"img": datasets.Image(), "file": datasets.Value("string"),
         "label": datasets.ClassLabel(names=list(SHAPES))}
    )  # fmt: skip

    def rows(indices):
        data = [Path(src.paths[i]).read_bytes() for i in indices]
        if bad_row is not None and bad_row in indices:
            k = list(indices).index(bad_row)
            data[k] = data[k][: len(data[k]) // 2]
        return datasets.Dataset.from_dict(
            {"img": [{"bytes": d, "path": None} for d in data],
             "file": [src.ids()[i] for i in indices],
             "label": [int(src.labels()[i]) for i in indices]},
            features=features,
        )  # fmt: skip

    per_class = len(src) // len(SHAPES)
    test = [c * per_class + k for c in range(len(SHAPES)) for k in range(2)]
    return datasets.DatasetDict(train=rows(range(len(src))), test=rows(test)), src


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """(save_to_disk folder, the FileSource of the same images)."""
    root = tmp_path_factory.mktemp("hf")
    write_shapes_folder(str(root / "imgs"), per_class=4)
    dd, src = _dataset_dict(root / "imgs")
    dd.save_to_disk(str(root / "saved"))
    return root / "saved", src


# ------------------------------------------------------------------------------------ reading
def test_save_to_disk_source_reads_images_labels_ids_and_class_names(saved):
    path, files = saved
    spec = HFSpec(str(path), image_column="img", id_column="file")
    src = get_source(spec.name, "train")
    assert src.name == f"hf:{path}?image=img&id=file" and HFSpec.parse(src.name) == spec
    assert src.class_names == list(SHAPES) and len(src) == len(files) == 12
    assert src.ids() == files.ids()
    np.testing.assert_array_equal(src.labels(), files.labels())
    for i in (0, 5, -1):  # the same pixels as the files they were made from
        np.testing.assert_array_equal(src[i]["image"], files[i]["image"])
        assert src[i]["id"] == files[i]["id"] and src[i]["label"] == files[i]["label"]
    # split strings as datasets spells them; default ids are "<split>/<row in the split>"
    part = hf_source(path, "train[4:6]", image_column="img")
    assert part.ids() == ["train/4", "train/5"]
    np.testing.assert_array_equal(part[1]["image"], files[5]["image"])
    assert len(hf_source(path, "test[:50%]", image_column="img")) == 3
    # one saved Dataset (not a dict) is the split it was saved as, "train" when it has none
    one = path.parent / "one"
    datasets.load_from_disk(str(path))["test"].save_to_disk(str(one))
    assert len(get_source(f"hf:{one}?image=img", "train")) == 6


def test_imagefolder_and_parquet_inputs(saved, tmp_path):
    path, files = saved
    folder = hf_source(files.name, "train", cache_dir=str(tmp_path / "cache"))  # imagefolder
    assert folder.class_names == list(SHAPES) and len(folder) == len(files)
    by_label = sorted(zip(folder.labels().tolist(), [folder[i]["image"].sum() for i in range(12)]))
    want = sorted(zip(files.labels().tolist(), [files[i]["image"].sum() for i in range(12)]))
    assert by_label == want  # the same images under the same classes (row order is datasets')

    pq = tmp_path / "pq"
    pq.mkdir()
    datasets.load_from_disk(str(path))["train"].to_parquet(str(pq / "part-0.parquet"))
    for where in (pq / "part-0.parquet", pq):  # one file, or a folder of them
        src = hf_source(where, "train", image_column="img", id_column="file",
                        cache_dir=str(tmp_path / "cache"))  # fmt: skip
        assert src.ids() == files.ids() and src.class_names == list(SHAPES)
        np.testing.assert_array_equal(src[7]["image"], files[7]["image"])


def test_plain_label_columns_and_path_images(tmp_path):
    """String labels (sorted names), integer labels named by ``class_names``, paths as images."""
    write_shapes_folder(str(tmp_path / "imgs"), per_class=2)
    files = FileSource.from_folder(str(tmp_path / "imgs"), labelled_only=True)
    names = [SHAPES[int(k)] for k in files.labels()]
    ds = datasets.Dataset.from_dict(
        {"path": list(files.paths), "shape": names, "k": files.labels().tolist()}
    )
    ds.save_to_disk(str(tmp_path / "d"))
    src = hf_source(tmp_path / "d", image_column="path", label_column="shape")
    assert src.class_names == sorted(SHAPES)
    np.testing.assert_array_equal(src[3]["image"], files[3]["image"])
    src = hf_source(tmp_path / "d", image_column="path", label_column="k", class_names=SHAPES)
    np.testing.assert_array_equal(src.labels(), files.labels())
    assert src.class_names == list(SHAPES)
    with pytest.raises(DataError, match=r"outside -1\.\.1"):
        hf_source(tmp_path / "d", image_column="path", label_column="k", class_names=["a", "b"])
    assert (hf_source(tmp_path / "d", image_column="path", label_column="").labels() == -1).all()


def test_bad_columns_splits_and_hub_names_are_clear(saved):
    path, _ = saved
    with pytest.raises(DataError, match=r"no label column 'breed'; columns: \['img', 'file', "):
        hf_source(path, image_column="img", label_column="breed")
    with pytest.raises(DataError, match="no image column 'image'"):
        hf_source(path)
    with pytest.raises(DataError, match=r"column 'label' holds ClassLabel.*not images"):
        hf_source(path, image_column="label")
    with pytest.raises(DataError, match=r"bad split 'validation' \(splits: \['test', 'train'\]"):
        hf_source(path, "validation", image_column="img")
    with pytest.raises(DataError, match="unknown option"):
        get_source(f"hf:{path}?colour=img", "train")
    with pytest.raises(NotFoundError, match="never downloaded"):
        get_source("hf:cifar10", "train")


def test_bad_image_is_an_image_error_the_pipeline_records(tmp_path, mesh8):
    from vl_jax.preprocess import ClipPreprocess

    write_shapes_folder(str(tmp_path / "imgs"), per_class=2)
    dd, _ = _dataset_dict(tmp_path / "imgs", bad_row=3)
    dd.save_to_disk(str(tmp_path / "d"))
    src = hf_source(tmp_path / "d", image_column="img", id_column="file")
    with pytest.raises(
        ImageError, match=r"^square/001.png: .*truncated.* \(at .*/d, train row 3\)"
    ):
        src[3]
    pre = ClipPreprocess(size=16, crop_size=(16, 16))
    it = make_pipeline(src, batch_size=8, mesh=mesh8, transform=pre, train=False, workers=1)
    batches = list(it)
    assert sum(int(np.asarray(b["mask"]).sum()) for b in batches) == 5
    assert [s.id for s in it.skipped] == ["square/001.png"]
    assert "truncated" in it.skipped[0].reason and "train row 3" in it.skipped[0].reason


def test_export_config_values():
    import ml_collections

    c = ml_collections.ConfigDict(dict(data=dict(kind="hf"), export_hf="auto"))
    assert export_hf.wanted(c)
    c.data.kind = "tfds"
    assert not export_hf.wanted(c)
    c.export_hf = "true"
    assert export_hf.wanted(c)
    c.export_hf = "sometimes"
    with pytest.raises(Exception, match="auto, true or false"):
        export_hf.wanted(c)


# --------------------------------------------------------------------------- VDC round trip
def _vdc_config(checkpoint, path):
    c = runpy.run_path(str(REPO / "configs" / "vdc" / "runlocal.py"))["get_config"]()
    c.model.name = checkpoint
    c.data.kind, c.data.path, c.data.split = "hf", str(path), "train"
    c.data.image_column, c.data.id_column = "img", "file"
    c.corrupt.attack = ""
    c.vqg.llm, c.judge.kind = "", "none"  # template questions, keyword judge: fast
    return c


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from vl_jax.models import tiny

    return tiny.write_llava(str(tmp_path_factory.mktemp("tiny") / "llava"))


@pytest.fixture(scope="module")
def mllm(checkpoint):
    """Loaded once for both runs of the round-trip test."""
    from vdc_jax import models
    from vl_jax import parallel

    c = _vdc_config(checkpoint, "")
    return models.load_mllm(c.model, "", parallel.mesh_from_config(c.mesh.to_dict()))


@pytest.mark.slow
def test_vdc_cleans_an_hf_dataset_and_exports_it(checkpoint, mllm, tmp_path):
    """A saved DatasetDict with one truncated image, cleaned by VDC (tiny LLaVA), exported to
    W/cleaned_hf and read back with load_from_disk: every scored row with its id, label and
    original columns, label_issue = label_issues.npy, score = scores.csv; the bad image skipped
    and recorded. Then the same data with BadNets injected: the export holds the images as
    judged and their dirt kind."""
    from vdc_jax import cleanse

    write_shapes_folder(str(tmp_path / "imgs"), per_class=3)
    dd, files = _dataset_dict(tmp_path / "imgs", bad_row=4)
    dd.save_to_disk(str(tmp_path / "saved"))
    run = tmp_path / "run"
    m = cleanse.clean(_vdc_config(checkpoint, tmp_path / "saved"), str(run), mllm=mllm)[0]
    assert m["counts"]["dataset"] == 9 and m["counts"]["scored"] == 8
    assert m["counts"]["skipped"] == 1
    assert (run / "skipped.tsv").read_text().splitlines()[1].startswith("square/001.png\t")

    out = datasets.load_from_disk(str(run / "cleaned_hf"))
    scores = list(csv.DictReader(open(run / "scores.csv")))
    assert out.column_names == ["img", "file", "label", "id", "label_issue", "score"]
    assert out["file"] == out["id"] == [r["id"] for r in scores]
    assert "square/001.png" not in out["file"]
    keep = [i for i in range(9) if i != 4]
    assert list(out["label"]) == files.labels()[keep].tolist()
    assert out.features["label"].names == list(SHAPES)
    mask = np.load(run / "label_issues.npy", allow_pickle=False)
    assert list(out["label_issue"]) == mask[keep].tolist()
    np.testing.assert_allclose(out["score"], [float(r["score"]) for r in scores], atol=1e-6)
    first = np.asarray(out[0]["img"].convert("RGB"))
    np.testing.assert_array_equal(first, files[0]["image"])  # the image bytes, intact

    c = _vdc_config(checkpoint, tmp_path / "saved")
    c.corrupt.attack, c.corrupt.poison_per_class = "badnets", 1
    m = cleanse.clean(c, str(tmp_path / "dirty"), mllm=mllm)[0]
    out = datasets.load_from_disk(str(tmp_path / "dirty" / "cleaned_hf"))
    assert out.column_names == ["image", "label", "id", "label_issue", "score", "dirt_kind"]
    manifest = [r.split("\t") for r in (tmp_path / "dirty" / "manifest.tsv").read_text()
                .splitlines()[1:]]  # fmt: skip
    poisoned = {r[1] for r in manifest if r[2] == "badnets"}
    assert poisoned and {i for i, k in zip(out["id"], out["dirt_kind"]) if k} == poisoned
    row = out["id"].index(sorted(poisoned)[0])
    clean_pixels = files[files.ids().index(out[row]["id"])]["image"]
    judged = np.asarray(out[row]["image"])
    assert judged.shape == clean_pixels.shape and (judged != clean_pixels).any()  # the trigger
    assert json.loads((tmp_path / "dirty" / "metrics.json").read_text())["counts"]["scored"] == 8


@pytest.mark.slow
def test_mcla_kmeans_clusters_an_hf_dataset(saved, tmp_path):
    import configs.mcla as mcla_configs
    from mcla_jax import experiment

    path, _ = saved
    c = mcla_configs.get("kmeans", "runlocal")
    c.data.kind, c.data.path, c.data.image_column, c.data.id_column = "hf", str(path), "img", "file"
    c.data.limit = 0
    summary = experiment.run(c, str(tmp_path))
    assert summary["n_eval"] == 6
    rows = list(csv.DictReader(open(tmp_path / "assignments.csv")))
    test = datasets.load_from_disk(str(path))["test"]
    assert [r["id"] for r in rows] == test["file"]
    assert [int(r["label"]) for r in rows] == list(test["label"])
    assert {r["class"] for r in rows} == set(SHAPES)


@pytest.mark.slow
def test_cli_bad_column_is_one_line_and_exit_2(saved, tmp_path):
    path, _ = saved
    cmd = [sys.executable, "-m", "vdc_jax.main", f"--config={REPO}/configs/vdc/runlocal.py",
           f"--workdir={tmp_path / 'w'}", "--config.data.kind=hf", f"--config.data.path={path}",
           "--config.data.image_column=img", "--config.data.label_column=breed"]  # fmt: skip
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"})  # fmt: skip
    assert p.returncode == 2, p.stderr
    assert "Traceback" not in p.stderr
    err = [line for line in p.stderr.splitlines() if "error" in line.lower()]
    assert len(err) == 1 and "no label column 'breed'; columns: ['img', 'file', 'label']" in err[0]
