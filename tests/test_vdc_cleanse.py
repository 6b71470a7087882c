"""The VDC driver end to end (vdc_jax.cleanse, report, inputs, main): runlocal in-process, a
killed-and-resumed run equal to an uninterrupted one, CSV / image-folder inputs, bad images
skipped and recorded (skipped.tsv, metrics.json), clear errors.

All runs share one tiny random LLaVA checkpoint (vl_jax.models.tiny.write_llava, once per
module), loaded once for the in-process runs; its answers mean nothing, so the tests check
plumbing and determinism, not accuracy."""

import csv
import json
import os
import runpy
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from configs.vdc.common import MLLMS
from vdc_jax import cleanse, models, scoring
from vdc_jax.inputs import write_shapes_folder
from vl_jax import faults, parallel
from vl_jax.data.files import DataError, FileSource
from vl_jax.errors import IncompatibleWorkdirError, UserError
from vl_jax.images import ImageError

REPO = Path(__file__).resolve().parents[1]
RUNLOCAL = REPO / "configs" / "vdc" / "runlocal.py"


def config_of(name: str, arg: str | None = None):
    get = runpy.run_path(str(REPO / "configs" / "vdc" / name))["get_config"]
    return get() if arg is None else get(arg)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from vl_jax.models import tiny

    return tiny.write_llava(str(tmp_path_factory.mktemp("tiny") / "llava"))


@pytest.fixture(scope="module")
def mllm(checkpoint):
    """The checkpoint loaded once for every in-process run (as a notebook would reuse it)."""
    c = config_of("runlocal.py")
    c.model.name = checkpoint
    return models.load_mllm(c.model, "", parallel.mesh_from_config(c.mesh.to_dict()))


def runlocal(checkpoint):
    c = config_of("runlocal.py")
    c.model.name = checkpoint  # the shared checkpoint instead of one built per workdir
    return c


@pytest.fixture(scope="module")
def reference(checkpoint, mllm, tmp_path_factory):
    """An uninterrupted runlocal run: (workdir, metrics)."""
    workdir = str(tmp_path_factory.mktemp("uninterrupted"))
    return workdir, cleanse.clean(runlocal(checkpoint), workdir, mllm=mllm)[0]


def _answers(workdir) -> dict:
    out = {}
    for line in Path(workdir, "answers.jsonl").read_text().splitlines():
        r = json.loads(line)
        assert (r["id"], r["question"]) not in out, "duplicate answer"
        out[(r["id"], r["question"])] = r
    return out


@pytest.mark.slow
def test_runlocal_end_to_end(reference):
    workdir, m = reference
    w = Path(workdir)
    for name in ["scores.csv", "metrics.json", "kept_ids.txt", "label_issues.npy", "cleaned.csv",
                 "scores_hist.png", "roc.png", "manifest.tsv", "questions.json", "answers.jsonl",
                 "run_config.json", "skipped.tsv"]:  # fmt: skip
        assert (w / name).exists(), name  # kept_ids.txt may be empty: all flagged
    rows = list(csv.DictReader(open(w / "scores.csv")))
    assert len(rows) == 24 and [int(r["index"]) for r in rows] == list(range(24))
    assert sum(int(r["is_dirty"]) for r in rows) == 4  # 2 poisoned per non-target class
    assert {r["dirt_kind"] for r in rows} == {"", "badnets"}
    for r in rows:
        assert float(r["score"]) == pytest.approx(int(r["consistent"]) / int(r["total"]), abs=1e-6)
        assert int(r["total"]) == 2 + 4 and int(r["flagged"]) == (float(r["score"]) < 0.5)
    assert len(_answers(workdir)) == 24 * 6
    mask = np.load(w / "label_issues.npy", allow_pickle=False)
    assert mask.dtype == bool and mask.shape == (24,)
    np.testing.assert_array_equal(mask, [int(r["flagged"]) == 1 for r in rows])
    kept = (w / "kept_ids.txt").read_text().splitlines()
    assert kept == [r["id"] for r in rows if r["flagged"] == "0"]
    saved = json.loads((w / "metrics.json").read_text())
    assert set(saved["overall"]) >= {"tpr", "fpr", "precision", "f1", "auroc"}
    assert set(saved["per_kind"]) == {"badnets"} and len(saved["per_class"]) == 3
    assert saved["counts"] == m["counts"] and saved["counts"]["dirty"] == 4
    assert saved["counts"]["skipped"] == 0 and (w / "skipped.tsv").read_text() == "id\treason\n"


@pytest.mark.slow
def test_kill_and_resume_equals_uninterrupted(reference, checkpoint, mllm, tmp_path):
    """A run SIGKILLed (fault point ``vdc.answers``) after a batch of answers drawn by a seeded
    generator (``KILL_SEED``), plus a torn half line as a kill mid-write leaves; a second run
    SIGKILLed between an output file's temporary copy and its rename (a seeded choice of the
    outputs); then the same run again: same answers, same scores.csv, no duplicates."""
    workdir = tmp_path / "killed"
    cmd = [sys.executable, "-m", "vdc_jax.main", f"--config={RUNLOCAL}", f"--workdir={workdir}",
           f"--config.model.name={checkpoint}"]  # fmt: skip
    workdir.mkdir()  # the reference's questions: the subprocess skips VQG (test time)
    shutil.copy(Path(reference[0], "questions.json"), workdir / "questions.json")
    rng = np.random.default_rng(int(os.environ.get("KILL_SEED", "0")))
    per_batch = 8 * 6  # 8 images x 6 questions
    batches = len(_answers(reference[0])) // per_batch
    after = int(rng.integers(1, batches))  # killed after this batch, before the last
    env = {**os.environ, faults.ENV: f"vdc.answers:{after}"}
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == -signal.SIGKILL, p.stderr[-3000:]
    assert len(_answers(workdir)) == after * per_batch
    assert not (workdir / "scores.csv").exists()
    with open(workdir / "answers.jsonl", "a") as f:
        f.write(f'{{"index": {after * 8}, "id": "square/000.png", "question": "Descr')
    output = ["scores.csv", "metrics.json", "kept_ids.txt", "label_issues.npy", "cleaned.csv"]
    env[faults.ENV] = f"file.temp/{output[rng.integers(len(output))]}:1"
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == -signal.SIGKILL, (env[faults.ENV], p.stderr[-3000:])
    cleanse.clean(runlocal(checkpoint), str(workdir), mllm=mllm)
    assert _answers(workdir) == _answers(reference[0])
    ref = Path(reference[0], "scores.csv").read_text()
    assert (workdir / "scores.csv").read_text() == ref


def test_changed_settings_are_refused(reference, checkpoint, mllm):
    c = runlocal(checkpoint)
    c.vqa.describe_tokens += 1
    with pytest.raises(IncompatibleWorkdirError, match=r"vqa\.describe_tokens: 12 -> 13"):
        cleanse.clean(c, reference[0], mllm=mllm)


def _write_csv(path, rows):
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)


def test_csv_and_folder_inputs(checkpoint, mllm, tmp_path):
    write_shapes_folder(str(tmp_path / "imgs"), per_class=3)
    folder = FileSource.from_folder(str(tmp_path / "imgs"), labelled_only=True)
    assert folder.class_names == ["circle", "square", "triangle"] and len(folder) == 9
    assert folder[4]["id"] == "square/001.png" and folder[4]["label"] == 1
    rows = [["path", "label"]] + [[f"imgs/{i}", i.split("/")[0]] for i in folder.ids()[1:]]
    _write_csv(tmp_path / "data.csv", rows)
    data = FileSource.from_csv(str(tmp_path / "data.csv"))
    assert data.ids() == [r[0] for r in rows[1:]]  # ids: the paths as written
    assert data.class_names == folder.class_names
    np.testing.assert_array_equal(data.labels(), folder.labels()[1:])
    np.testing.assert_array_equal(data[0]["image"], folder[1]["image"])

    # The whole pipeline on the CSV (8 images: one batch), no dirt, template questions, no judge.
    c = runlocal(checkpoint)
    c.data.kind, c.data.path = "csv", str(tmp_path / "data.csv")
    c.corrupt.attack = ""
    c.vqg.llm, c.judge.kind = "", "none"
    m = cleanse.clean(c, str(tmp_path / "run"), mllm=mllm)[0]
    assert m["counts"]["scored"] == 8 and "overall" not in m
    cleaned = list(csv.reader(open(tmp_path / "run" / "cleaned.csv")))
    assert cleaned[0] == ["path", "label"] and len(cleaned) == 1 + m["counts"]["kept"]
    assert all(os.path.isfile(p) for p, _ in cleaned[1:])
    header = next(csv.reader(open(tmp_path / "run" / "scores.csv")))
    assert "is_dirty" not in header  # no ground truth without injected dirt
    qs = json.loads((tmp_path / "run" / "questions.json").read_text())
    assert qs["classes"]["circle"][0] == "Is there a circle in the image?"  # templates


@pytest.mark.slow
def test_bad_images_are_skipped_and_recorded(checkpoint, mllm, tmp_path):
    """The one bad-image policy end to end: a CSV listing 6 good images, a truncated PNG and a
    missing file runs to the end; the 2 bad ones are not asked, not scored (neither kept nor
    flagged), listed in skipped.tsv (id, reason) and counted in metrics.json; a rerun tries
    them again and writes the same outputs. An image folder with the truncated file: the same."""
    write_shapes_folder(str(tmp_path / "imgs"), per_class=2)
    good = FileSource.from_folder(str(tmp_path / "imgs"), labelled_only=True).ids()
    png = (tmp_path / "imgs" / "circle" / "000.png").read_bytes()
    (tmp_path / "imgs" / "circle" / "cut.png").write_bytes(png[: len(png) // 2])
    listed = [[f"imgs/{i}", i.split("/")[0]] for i in good]
    listed[2:2], listed[5:5] = [["imgs/circle/cut.png", "circle"]], [["imgs/nope.png", "square"]]
    rows = [["path", "label"], *listed]  # the bad ones on lines 4 and 7
    _write_csv(tmp_path / "data.csv", rows)
    c = runlocal(checkpoint)
    c.data.kind, c.data.path = "csv", str(tmp_path / "data.csv")
    c.corrupt.attack = ""
    c.vqg.llm, c.judge.kind = "", "none"
    run = tmp_path / "run"
    m = cleanse.clean(c, str(run), mllm=mllm)[0]
    assert m["counts"]["dataset"] == 8 and m["counts"]["scored"] == 6
    assert m["counts"]["skipped"] == 2 == json.loads((run / "metrics.json").read_text())[
        "counts"]["skipped"]  # fmt: skip
    lines = (run / "skipped.tsv").read_text().splitlines()
    assert lines[0] == "id\treason" and [x.split("\t")[0] for x in lines[1:]] == [
        "imgs/circle/cut.png", "imgs/nope.png"]  # fmt: skip
    assert "truncated" in lines[1] and "data.csv, line 4" in lines[1]
    assert "FileNotFoundError" in lines[2] and "data.csv, line 7" in lines[2]
    scores = list(csv.DictReader(open(run / "scores.csv")))
    assert [r["id"] for r in scores] == [f"imgs/{i}" for i in good]
    assert {r["id"] for r in _answers(run).values()} == {f"imgs/{i}" for i in good}
    mask = np.load(run / "label_issues.npy", allow_pickle=False)
    assert mask.shape == (8,) and not mask[[2, 5]].any()
    cleaned = [p for p, _ in list(csv.reader(open(run / "cleaned.csv")))[1:]]
    assert not any(p.endswith(("cut.png", "nope.png")) for p in cleaned)
    before = {n: (run / n).read_bytes() for n in ("scores.csv", "skipped.tsv", "answers.jsonl")}
    assert cleanse.clean(c, str(run), mllm=mllm)[0]["counts"] == m["counts"]
    assert {n: (run / n).read_bytes() for n in before} == before

    c.data.kind, c.data.path = "folder", str(tmp_path / "imgs")
    m = cleanse.clean(c, str(tmp_path / "folder_run"), mllm=mllm)[0]
    assert m["counts"]["scored"] == 6 and m["counts"]["skipped"] == 1
    lines = (tmp_path / "folder_run" / "skipped.tsv").read_text().splitlines()
    assert len(lines) == 2 and lines[1].startswith("circle/cut.png\t")


def test_bad_inputs_name_file_and_line(tmp_path):
    write_shapes_folder(str(tmp_path / "imgs"), per_class=1)
    (tmp_path / "imgs" / "circle" / "broken.png").write_text("not an image")
    good = ["imgs/circle/000.png", "circle"]
    cases = {
        "fields.csv": ([good, ["imgs/square/000.png", "square", "x"]], "line 2: expected 2 fields"),
        "label.csv": ([good, ["imgs/square/000.png", ""]], "line 2: empty path or label"),
        "dup.csv": ([good, good], "listed twice"),
    }
    for name, (rows, message) in cases.items():
        _write_csv(tmp_path / name, rows)
        with pytest.raises(DataError, match=message):
            FileSource.from_csv(str(tmp_path / name))
    _write_csv(tmp_path / "names.csv", [good, ["imgs/square/000.png", "dog"]])
    with pytest.raises(DataError, match="line 2: unknown label 'dog'"):
        FileSource.from_csv(str(tmp_path / "names.csv"), class_names=["circle", "square"])
    # A missing or unreadable image is an ImageError when read (the run skips and lists it),
    # naming the file and the CSV line that listed it.
    for name, rel in [("missing.csv", "imgs/nope.png"), ("broken.csv", "imgs/circle/broken.png")]:
        _write_csv(tmp_path / name, [good, [rel, "circle"]])
        data = FileSource.from_csv(str(tmp_path / name))
        with pytest.raises(ImageError, match=rf"{rel.split('/')[-1]}.*{name}, line 2"):
            data[1]
    with pytest.raises(UserError, match="does not exist"):
        FileSource.from_folder(str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="CSV file not found"):
        FileSource.from_csv(str(tmp_path / "nowhere.csv"))


def test_configs_and_args():
    dog = config_of("imagenet_dog.py", "wanet")
    assert (dog.data.name, dog.data.split, dog.corrupt.attack) == (
        "imagenet_dog10",
        "train_800",
        "wanet",
    )
    assert dog.corrupt.poison_per_class == 80 and dog.model.name == MLLMS["instructblip"]
    assert config_of("imagenet_dog.py", "ssba,small").model.name == MLLMS["small"]
    assert config_of("cifar10.py", "sig").corrupt.poison_per_class == 500
    assert config_of("imagenet100.py", "trojannn").corrupt.poison_per_class == 50
    noise = config_of("noise.py", "cifar10,asym")
    assert (noise.corrupt.noise, noise.corrupt.noise_rate, noise.corrupt.attack) == (
        "asym",
        0.4,
        "",
    )
    hybrid = config_of("hybrid.py")
    assert (hybrid.corrupt.attack, hybrid.corrupt.noise) == ("badnets", "sym")
    for name, arg in [("imagenet_dog.py", "nope"), ("noise.py", "cifar10,both"),
                      ("cifar10.py", "badnets,extra")]:  # fmt: skip
        with pytest.raises(ValueError, match="config arg"):
            config_of(name, arg)


@pytest.mark.slow
def test_cli_dataset_not_prepared_is_a_clear_error(tmp_path):
    cmd = [sys.executable, "-m", "vdc_jax.main", f"--config={REPO}/configs/vdc/cifar10.py",
           f"--workdir={tmp_path / 'w'}", f"--config.data.data_dir={tmp_path / 'tfds'}"]  # fmt: skip
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2  # vl_jax.errors: a UserError is one line and exit status 2
    assert "error: cifar10: TFDS dataset" in p.stderr and "not prepared" in p.stderr
    assert "download_and_prepare" in p.stderr
    assert "Traceback" not in p.stderr


def test_scoring_in_blocks_from_disk_equals_in_memory(reference):
    """`score` over answers read back from answers.jsonl in blocks of 5 samples (as the
    cleanser does, in blocks of 4096) equals one block over the records held in memory."""
    from vdc_jax.answers import Verdict
    from vdc_jax.questions import load_questions
    from vdc_jax.vqa import AnswerStore, Item

    w = Path(reference[0])
    questions = load_questions(w / "questions.json")
    rows = list(csv.DictReader(open(w / "scores.csv")))
    items = [Item(int(r["index"]), r["id"], int(r["label"])) for r in rows]
    names = ["circle", "square", "triangle"]
    calls = []

    def judge(descriptions, labels):  # deterministic stand-in for the LLM judge
        calls.append(len(descriptions))
        return [Verdict("yes" if len(d) % 3 else "no", "fake") for d in descriptions]

    lean = AnswerStore(w / "answers.jsonl", write=False, keep=False)
    blocks = scoring.score(items, lean, questions, names, judge, 0.5, 24, block=5)
    whole = scoring.score(items, AnswerStore(w / "answers.jsonl", write=False), questions, names,
                          judge, 0.5, 24)  # fmt: skip
    assert len(calls) == 5 + 1 and sum(calls[:5]) == calls[5]  # 5 blocks, then 1
    for field in ("index", "labels", "score", "flagged", "consistent", "total"):
        np.testing.assert_array_equal(getattr(blocks, field), getattr(whole, field), field)
    assert blocks.ids == whole.ids == [r["id"] for r in rows]
    assert lean.records == {}
