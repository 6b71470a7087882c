"""Multi-host VDC: 2 real JAX processes on localhost (gloo, 2 fake CPU devices each) run
`vdc_jax.cleanse` on runlocal (tiny random LLaVA, generated shapes, injected BadNets) over one
4-device mesh.

Each process must decode only its own rows of every batch (the input pipeline's per-process
schedule: process p reads rows [p * B/2, (p + 1) * B/2) of global batch k; recorded by wrapping
`vl_jax.data.files.FileSource.__getitem__`), both must end with the same verdicts, and the
outputs must equal one process on 8, 4 and 1 devices (this process, 8 fake devices from
conftest, the mesh cut to 4 / 1). Batches of 16 images over 24 samples (16 on every mesh here,
so the batches are the same in every run): the last batch holds 8 images, all in process 0's
rows, so process 1 runs that batch's generate calls with no image of its own. Sample 9 (in
process 1's rows) is unreadable in every run: it is skipped, and process 0 writes the reason it
got from process 1 into skipped.tsv, equal to the single-process runs'. Process 1 must write
nothing into the workdir: an audit hook (`sys.addaudithook`) records every Python-level file
write it makes.
"""

import json
import math
import runpy
import textwrap
from pathlib import Path

import jax
import ml_collections
import pytest
from multihost_procs import AUDIT_WRITES, run_processes

from vdc_jax import cleanse
from vl_jax import parallel

REPO = Path(__file__).resolve().parents[1]
BATCH = 16  # 24 samples -> batches of 16 and 8 (round_batch keeps 16 on 2x2, 4, 8 and 1 devices)
BAD = 9  # an unreadable image, decoded by process 1
SAME_TEXT = ("scores.csv", "kept_ids.txt", "questions.json", "answers.jsonl", "skipped.tsv")

_WORKER = (
    textwrap.dedent(
        """
    import json, os, sys

    pid, port, root, BAD = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
    workdir = os.path.join(root, "multi")
    """
    )
    + AUDIT_WRITES
    + textwrap.dedent(
        """

    from vl_jax import parallel as par
    assert par.initialize_distributed(f"127.0.0.1:{port}", num_processes=2, process_id=pid)
    import jax, ml_collections
    from vdc_jax import cleanse
    from vl_jax.data.files import FileSource
    from vl_jax.images import ImageError

    decoded = []  # dataset positions whose image this process read for the model
    get = FileSource.__getitem__
    def counting(self, i):
        if not report[0]:  # report.html's thumbnails (the writer only) are not counted
            decoded.append(int(i))
        if int(i) == BAD:
            raise ImageError(self.paths[i], f"unreadable (test), decoded by process {pid}")
        return get(self, i)
    FileSource.__getitem__ = counting
    from vdc_jax import report_html
    report, page = [False], report_html.write
    def counted_page(*a, **k):
        report[0] = True
        try:
            return page(*a, **k)
        finally:
            report[0] = False
    report_html.write = counted_page

    with open(os.path.join(root, "config.json")) as f:
        config = ml_collections.ConfigDict(json.load(f))
    m, table = cleanse.clean(config, workdir)
    out = dict(describe=par.describe(par.mesh_from_config(config.mesh.to_dict())), metrics=m,
               flagged=table.flagged.tolist(), score=table.score.tolist(), decoded=decoded,
               writes=[w for w in writes if os.path.abspath(w[1]).startswith(workdir)])
    # A file outside the workdir, not stdout: a full pipe would block this process.
    with open(os.path.join(root, f"result_{pid}.json"), "w") as f:
        json.dump(out, f)
    """
    )
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from vl_jax.models import tiny

    return tiny.write_llava(str(tmp_path_factory.mktemp("tiny") / "llava"))


def _config(checkpoint: str) -> ml_collections.ConfigDict:
    c = runpy.run_path(str(REPO / "configs" / "vdc" / "runlocal.py"))["get_config"]()
    c.model.name = checkpoint  # one checkpoint for all runs (not one per workdir)
    c.vqa.batch_size = BATCH
    c.vqg.llm = ""  # template questions: the random decoder's VQG costs 3 compiles (test time)
    return c


def _same(a, b, where: str = "") -> None:
    """Equal JSON trees, numbers within 1e-6; NaN equals NaN (metrics.json writes "nan")."""
    a, b = (float(x) if x == "nan" else x for x in (a, b))
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        assert math.isnan(b), where
    elif isinstance(a, (int, float)) and not isinstance(a, bool):
        assert b == pytest.approx(a, abs=1e-6), where
    else:
        assert a == b, where


def _metrics(m: dict) -> dict:
    """metrics without the dataset description (it names the run's own workdir)."""
    m = json.loads(json.dumps(m))
    m["config"].pop("dataset")
    return m


def _single(config, workdir: str, devices: int, monkeypatch):
    from vl_jax.data.files import FileSource
    from vl_jax.images import ImageError

    mesh = parallel.create_mesh(devices=jax.devices()[:devices])
    monkeypatch.setattr(parallel, "mesh_from_config", lambda cfg, devices=None: mesh)
    get = FileSource.__getitem__

    def bad(self, i):  # the workers' unreadable image, with the reason process 1 gives
        if int(i) == BAD:
            raise ImageError(self.paths[i], "unreadable (test), decoded by process 1")
        return get(self, i)

    monkeypatch.setattr(FileSource, "__getitem__", bad)
    return cleanse.clean(config, workdir)


@pytest.mark.slow
def test_two_processes_equal_one(checkpoint, tmp_path, monkeypatch):
    root = tmp_path
    config = _config(checkpoint)
    (root / "config.json").write_text(config.to_json())
    run_processes(_WORKER, [root, BAD], n=2, devices=2, timeout=240)
    res = [json.loads((root / f"result_{pid}.json").read_text()) for pid in (0, 1)]
    assert "process=0/2" in res[0]["describe"] and "global=4" in res[0]["describe"]
    assert (root / "multi" / "report.html").is_file()  # the writer alone built the page
    assert res[1]["writes"] == [], f"process 1 wrote shared files: {res[1]['writes']}"
    # Every process ends with the same verdicts, scores and metrics.
    for key in ("flagged", "score", "metrics"):
        assert res[0][key] == res[1][key], key
    # The per-process split: each image decoded once, by one process; both did some.
    d0, d1 = set(res[0]["decoded"]), set(res[1]["decoded"])
    assert len(res[0]["decoded"]) == len(d0) and len(res[1]["decoded"]) == len(d1)
    assert not d0 & d1 and d0 | d1 == set(range(24)) and d1, (sorted(d0), sorted(d1))
    # Batches of 16 rows, 8 per process: batch 0 gives process 0 samples 0-7 and process 1
    # samples 8-15; batch 1 (samples 16-23, then 8 padding rows) is all process 0's.
    assert sorted(d1) == list(range(8, 16))

    multi = root / "multi"
    answers = (multi / "answers.jsonl").read_text()
    assert len(answers.splitlines()) == 23 * 6  # all but the unreadable sample's
    assert res[0]["metrics"]["counts"]["skipped"] == 1 and len(res[0]["flagged"]) == 23
    skipped = (multi / "skipped.tsv").read_text().splitlines()
    assert len(skipped) == 2 and skipped[1].endswith("unreadable (test), decoded by process 1")
    for devices in (8, 4, 1):  # 1 vs 8 devices: the same verdicts (determinism)
        workdir = root / f"single{devices}"
        m, table = _single(config, str(workdir), devices, monkeypatch)
        assert table.flagged.tolist() == res[0]["flagged"], devices
        _same(_metrics(res[0]["metrics"]), _metrics(m), f"metrics ({devices} devices)")
        _same(_metrics(json.loads((multi / "metrics.json").read_text())), _metrics(m))
        for name in SAME_TEXT:
            assert (multi / name).read_text() == (workdir / name).read_text(), (name, devices)
        assert (multi / "label_issues.npy").read_bytes() == (
            workdir / "label_issues.npy"
        ).read_bytes()
