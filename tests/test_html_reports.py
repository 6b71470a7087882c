"""The HTML reports (vdc_jax.report_html, mcla_jax.report_html, vl_jax.html_report) in a real
headless browser, their regenerate commands, and the quiet command lines.

The VDC workdir is built without a model: a small image folder with injected BadNets poisons
and label noise (the run's own `CorruptedSource`), hand-written answers (a poisoned or
mislabelled sample's answers name another shape), and `report.write_report` — the outputs of
a cleansing run up to the MLLM. The browser is the system Chromium (Debian's `chromium`),
driven by playwright; without one the browser tests skip with a reason, except under CI,
where they fail (.ci/run installs it).
"""

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
NOISE = ("PyTorch was not found", "Downloading and preparing dataset", "downloaded and prepared",
         "Traceback")  # fmt: skip


def _browser_path() -> str | None:
    found = [shutil.which(b) for b in BROWSERS]
    return next((p for p in found if p), None)


@pytest.fixture(scope="module")
def browser():
    """A headless Chromium page factory (playwright over the system browser)."""
    path = _browser_path()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        path, why = None, "playwright is not installed (pip install -e '.[test]')"
    else:
        why = "no chromium on PATH (apt-get install chromium)"
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"browser tests need a browser in CI: {why}")
        pytest.skip(why)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=["--no-sandbox"])
        yield b
        b.close()


def _open(browser, path: Path, shot: Path):
    """Loads ``path``; returns (page, console errors). Saves a screenshot to ``shot``."""
    page = browser.new_page(viewport={"width": 1280, "height": 1200})
    errors = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("dialog", lambda d: (errors.append(f"dialog: {d.message}"), d.dismiss()))
    page.on("request", lambda r: None if r.url.startswith(("file:", "data:")) else errors.append(
        f"network request: {r.url}"))  # fmt: skip
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    page.screenshot(path=str(shot), full_page=False)
    return page, errors


def _visible_images(page, gallery: str) -> int:
    return page.evaluate(
        f"Array.from(document.querySelectorAll('#{gallery} > .card'))"
        ".filter(c => !c.hidden && c.offsetParent !== null)"
        ".reduce((n, c) => n + c.querySelectorAll('img').length, 0)"
    )


def _select(page, key: str, value: str) -> None:
    page.select_option(f'select[data-filter="{key}"]', value)


# ---------------------------------------------------------------------------------- VDC


@pytest.fixture(scope="module")
def vdc_run(tmp_path_factory):
    """A cleansing workdir made by `report.write_report` from hand-written answers."""
    from configs.vdc.common import vdc_config
    from vdc_jax import cleanse, inputs, report
    from vdc_jax.corrupt import CorruptedSource
    from vdc_jax.scoring import Table

    root = tmp_path_factory.mktemp("vdc")
    images, work = root / "images", root / "work"
    inputs.write_shapes_folder(str(images), per_class=6, size=32, seed=1)
    c = vdc_config()
    c.data.kind, c.data.path = "folder", str(images)
    c.corrupt.attack, c.corrupt.target, c.corrupt.poison_per_class = "badnets", 0, 2
    c.corrupt.noise, c.corrupt.noise_rate = "sym", 0.2
    c.judge.kind = "none"
    data = inputs.load_dataset(c.data, str(work))
    source = CorruptedSource(data.source, cleanse.corrupt_spec(c.corrupt), seed=c.corrupt.seed)
    os.makedirs(work)
    with open(work / "run_config.json", "w") as f:
        json.dump(cleanse.fingerprint(c), f)
    names, ids, labels = data.class_names, source.ids(), source.labels()
    dirty = source.is_dirty
    rows, consistent = [], []
    for i, sid in enumerate(ids):
        said = names[source.labels_original[i]]  # what the image shows (a poison keeps its shape)
        desc = f"a gray {said}." if i != 1 else "<script>alert(1)</script> a <b>bold</b> shape"
        yn = "yes" if not dirty[i] else "no"
        for q, kind, a in (("Describe the image.", "describe", desc),
                           (f"Is there a {names[labels[i]]}?", "yes_no", yn),
                           (f"Does the image show a {names[labels[i]]}?", "yes_no", yn)):  # fmt: skip
            rows.append({"index": i, "id": sid, "label": int(labels[i]),
                         "class": names[labels[i]], "question": q, "kind": kind, "answer": a})  # fmt: skip
        consistent.append(0 if dirty[i] else (2 if i == 1 else 3))
    with open(work / "answers.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    n = len(ids)
    consistent = np.asarray(consistent)
    score = consistent / 3.0
    t = Table(index=np.arange(n), ids=list(ids), labels=np.asarray(labels), class_names=names,
              score=score, flagged=score < 0.5, consistent=consistent, total=np.full(n, 3), n=n,
              is_dirty=dirty, kinds=np.asarray(source.kinds, str), paths=list(data.paths))  # fmt: skip
    m = report.write_report(str(work), t, threshold=0.5, config_summary={"judge": "none"})
    run = SimpleNamespace(
        work=str(work),
        n=n,
        flagged=int(t.flagged.sum()),
        poisoned=int(source.is_poisoned.sum()),
        metrics=m,
    )
    return run, source


def _uris(html: str) -> dict[str, str]:
    """Card title (sample id) -> its thumbnail's data URI."""
    cards = re.findall(
        r'<img loading="lazy" src="(data:image/png;base64,[^"]+)" alt="([^"]*)">', html
    )
    return {alt: uri for uri, alt in cards}


def _pixels(uri: str) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB"))


def test_vdc_report_shows_the_image_as_judged(vdc_run):
    run, source = vdc_run
    html = (Path(run.work) / "report.html").read_text()
    assert "http://" not in html and "https://" not in html  # self-contained
    uris = _uris(html)
    assert len(uris) == run.n
    ids = source.ids()
    poisoned = np.flatnonzero(source.is_poisoned)
    assert len(poisoned) == run.poisoned > 0
    for i in poisoned:
        shown = _pixels(uris[ids[i]])
        np.testing.assert_array_equal(shown, source[i]["image"])  # with its trigger, exactly
        assert not np.array_equal(shown, source.source[i]["image"])  # not the clean original
    # an answer is text, never markup
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)" in html
    assert "recomputed verdicts differ" not in html  # judge "none": the rules give the counts


def test_vdc_report_in_the_browser(vdc_run, browser, tmp_path):
    run, source = vdc_run
    page, errors = _open(browser, Path(run.work) / "report.html", tmp_path / "vdc_report.png")
    assert errors == []
    assert _visible_images(page, "flagged") == run.flagged
    assert _visible_images(page, "kept") == run.n - run.flagged
    assert page.evaluate("document.querySelectorAll('.plots img').length") == 2
    assert all(
        page.evaluate("Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)")
    )
    _select(page, "kind", "badnets")
    assert _visible_images(page, "flagged") + _visible_images(page, "kept") == run.poisoned
    _select(page, "verdict", "kept")
    assert _visible_images(page, "flagged") == 0
    _select(page, "kind", "")
    _select(page, "verdict", "")
    cls = source.class_names[0]
    _select(page, "cls", cls)
    assert _visible_images(page, "flagged") + _visible_images(page, "kept") == int(
        np.sum(source.labels() == 0)
    )
    page.screenshot(path=str(tmp_path / "vdc_report_filtered.png"))
    assert errors == []
    page.close()


def _cli(module: str, *args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env=env)  # fmt: skip


@pytest.mark.slow
def test_vdc_report_regenerates_without_the_model(vdc_run, tmp_path):
    run, _ = vdc_run
    work = tmp_path / "w"
    shutil.copytree(run.work, work)
    (work / "report.html").unlink()
    done = _cli("vdc_jax.report_html", f"--workdir={work}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert (work / "report.html").read_text() == (Path(run.work) / "report.html").read_text()
    with open(work / "answers.jsonl", "a") as f:
        f.write("not json\n")
    done = _cli("vdc_jax.report_html", f"--workdir={work}")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().startswith("error: ") and len(done.stderr.strip().splitlines()) == 1
    assert "answers.jsonl, line" in done.stderr
    (work / "scores.csv").unlink()
    done = _cli("vdc_jax.report_html", f"--workdir={work}")
    assert done.returncode == 2 and "scores.csv: not found" in done.stderr, done.stderr


def test_vdc_report_reads_errors_as_one_line(tmp_path):
    from vdc_jax import report_html
    from vl_jax.data.files import DataError

    (tmp_path / "scores.csv").write_text("index,id\n0,a\n")
    with pytest.raises(DataError, match="missing column"):
        report_html.read_scores(str(tmp_path / "scores.csv"))
    (tmp_path / "answers.jsonl").write_text('{"id": "a", "question": "q", "kind": "yes_no"}\n')
    with pytest.raises(DataError, match="line 1"):
        report_html.read_answers(str(tmp_path / "answers.jsonl"))
    # a torn last line (a killed run) is what the run itself ignores
    (tmp_path / "answers.jsonl").write_text(
        '{"id": "a", "question": "q", "kind": "yes_no", "answer": "yes"}\n{"id": "a", "qu'
    )
    assert report_html.read_answers(str(tmp_path / "answers.jsonl")) == {
        "a": [{"question": "q", "kind": "yes_no", "answer": "yes"}]
    }


def test_thumbnails_keep_small_images_exact_and_shrink_photos():
    from vl_jax.html_report import esc, image_uri

    rng = np.random.default_rng(0)
    small = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)
    uri = image_uri(small)
    assert uri.startswith("data:image/png;base64,")
    np.testing.assert_array_equal(_pixels(uri), small)
    big = rng.integers(0, 256, (300, 200, 3), dtype=np.uint8)
    uri = image_uri(big)
    assert uri.startswith("data:image/jpeg;base64,") and _pixels(uri).shape == (128, 85, 3)
    assert _pixels(image_uri(np.full((4, 4, 1), 0.5, np.float32)))[0, 0, 0] == 128  # float, 1 ch
    assert esc('<a href="x">&</a>') == "&lt;a href=&quot;x&quot;&gt;&amp;&lt;/a&gt;"


# --------------------------------------------------------------------------------- MCLA


def test_cluster_summary_purity_and_typicality():
    from mcla_jax.report_html import summarise

    # cluster 0: three along e0 and one tilted towards e1; cluster 1: two along e1
    f = np.array([[1, 0], [1, 0.05], [1, -0.05], [1, 0.9], [0, 1], [0.1, 1]], np.float32)
    pred = np.array([0, 0, 0, 0, 1, 1])
    labels = np.array([0, 0, 1, 0, 1, -1])
    nouns = np.array([[0, 1], [1, 0], [1, 1]], np.float32)
    out = summarise(f * 3.0, pred, [f"s{i}" for i in range(6)], labels, ["a", "b"],
                    noun_embeddings=nouns, noun_names=["up", "right", "diag"])  # fmt: skip
    c0, c1 = out
    assert (c0["size"], c0["majority"], c0["purity"]) == (4, "a", 0.75)
    assert (c1["size"], c1["majority"], c1["purity"]) == (2, "b", 1.0)  # the -1 is not counted
    # s3 tilts the mean towards e1: s1 is the core, s3 the fringe; 4 members fit in "most"
    assert [i for i, _ in c0["most"]] == ["s1", "s0", "s2", "s3"] and c0["least"] == []
    assert [n for n, _ in c0["nouns"]][:2] == ["right", "diag"]
    assert c1["nouns"][0][0] == "up"


@pytest.fixture(scope="module")
def clusters_run(tmp_path_factory):
    """clusters.json / clusters.html of a made-up clustering of an image folder."""
    from mcla_jax import report_html
    from vdc_jax.inputs import write_shapes_folder
    from vl_jax.data import get_source

    root = tmp_path_factory.mktemp("mcla")
    write_shapes_folder(str(root / "images"), per_class=7, size=32, seed=2)
    data = {"name": f"image_folder:{root / 'images'}", "split": "train",
            "data_dir": str(root / "tfds"), "manual_dir": ""}  # fmt: skip
    src = get_source(data["name"], "train", data_dir=data["data_dir"])
    labels = np.asarray(src.labels())
    rng = np.random.default_rng(0)
    feats = np.eye(3)[labels] + 0.3 * rng.normal(size=(len(labels), 3))
    pred = labels.copy()
    pred[:2] = (pred[:2] + 1) % 3  # two misplaced samples
    clusters = report_html.summarise(feats, pred, src.ids(), labels, src.class_names)
    work = root / "work"
    report_html.write(str(work), clusters, data, "kmeans on shapes")
    return work, clusters


def test_clusters_page_in_the_browser(clusters_run, browser, tmp_path):
    work, clusters = clusters_run
    html = (work / "clusters.html").read_text()
    assert "http://" not in html and "https://" not in html
    page, errors = _open(browser, work / "clusters.html", tmp_path / "clusters.png")
    assert errors == []
    shown = sum(len(c["most"]) + len(c["least"]) for c in clusters)
    assert _visible_images(page, "clusters") == shown
    assert all(
        page.evaluate("Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)")
    )
    one = clusters[0]
    _select(page, "majority", one["majority"])
    same = [c for c in clusters if c["majority"] == one["majority"]]
    assert _visible_images(page, "clusters") == sum(len(c["most"]) + len(c["least"]) for c in same)
    assert page.locator("text=purity").count() >= 1
    page.close()


@pytest.mark.slow
def test_clusters_page_regenerates(clusters_run, tmp_path):
    work, _ = clusters_run
    copy = tmp_path / "w"
    shutil.copytree(work, copy)
    (copy / "clusters.html").unlink()
    done = _cli("mcla_jax.report_html", f"--workdir={copy}")
    assert done.returncode == 0, done.stderr[-2000:]
    assert (copy / "clusters.html").read_text() == (work / "clusters.html").read_text()
    (copy / "clusters.json").unlink()
    done = _cli("mcla_jax.report_html", f"--workdir={copy}")
    assert (
        done.returncode == 2
        and done.stderr.startswith("error: ")
        and "Traceback" not in done.stderr
    )


# ---------------------------------------------------------------------------- quiet CLIs


@pytest.mark.slow
def test_cli_prints_no_library_noise(tmp_path):
    """A clustering run through its command line on a fresh image folder (prepared by TFDS
    here) with PyTorch hidden, as on a machine without it: no transformers banner, no TFDS
    "Downloading and preparing", one line per stage; clusters.html written."""
    from vdc_jax.inputs import write_shapes_folder

    write_shapes_folder(str(tmp_path / "images"), per_class=6, size=32, seed=3)
    flag = tmp_path / "imported.txt"
    driver = (
        "import runpy, sys\n"
        "sys.modules['torch'] = None  # as if PyTorch were not installed\n"
        "sys.argv = ['mcla_jax.main'] + sys.argv[1:]\n"
        "try:\n"
        "    runpy.run_module('mcla_jax.main', run_name='__main__', alter_sys=True)\n"
        "finally:\n"
        f"    open({str(flag)!r}, 'w').write(str('transformers' in sys.modules))\n"
    )
    args = ["--config=configs/mcla/kmeans.py:runlocal", f"--workdir={tmp_path / 'w'}",
            f"--config.data.source=image_folder:{tmp_path / 'images'}",
            f"--config.data.data_dir={tmp_path / 'tfds'}", "--config.data.train_split=train",
            "--config.data.eval_split=train", "--config.data.limit=0",
            "--config.train.num_clusters=3"]  # fmt: skip
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("TRANSFORMERS_NO_ADV", "TF_CPP"))
    }
    done = subprocess.run([sys.executable, "-c", driver, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env=env)  # fmt: skip
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert flag.read_text() == "True"  # the banner's module was imported, and stayed quiet
    for noise in NOISE:
        assert noise not in out, (noise, out[-3000:])
    assert "preparing image_folder" in done.stderr  # one honest line for the local build
    assert "kmeans on " in done.stderr
    assert (tmp_path / "w" / "clusters.html").exists()
