"""Repository-wide guarantees: lint, safe loading only, package boundaries, the model registry."""

import ast
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

import vl_jax.models

ROOT = pathlib.Path(__file__).resolve().parents[1]
CODE_DIRS = ["vl_jax", "mcla_jax", "vdc_jax", "benchmarks", "configs"]


def _py_files(*dirs):
    for d in dirs:
        yield from sorted((ROOT / d).rglob("*.py"))


def test_ruff_clean():
    ruff = shutil.which("ruff") or pytest.fail("ruff is in the test extra; install .[test]")
    for args in (["check"], ["format", "--check"]):
        r = subprocess.run([ruff, *args, "."], cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 0, r.stdout + r.stderr


UNSAFE = re.compile(
    r"torch\.load\(|\bimport pickle\b|\bfrom pickle\b|cPickle|\bdill\b|joblib\.load|"
    r"allow_pickle\s*=\s*True|trust_remote_code\s*=\s*True"
)


def test_no_code_path_unpickles_or_runs_remote_code():
    offenders = []
    for f in [*_py_files(*CODE_DIRS, "tests"), ROOT / "main.py"]:
        if f.name == "test_repo.py":
            continue
        for i, line in enumerate(f.read_text().splitlines(), 1):
            if UNSAFE.search(line):
                offenders.append(f"{f.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def _imports(path: pathlib.Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize(
    "package, forbidden",
    [
        ("vl_jax", {"mcla_jax", "vdc_jax", "benchmarks", "configs"}),
        ("mcla_jax", {"vdc_jax", "benchmarks", "configs"}),
        ("vdc_jax", {"mcla_jax", "benchmarks", "configs"}),
    ],
)
def test_package_boundaries(package, forbidden):
    bad = {str(f.relative_to(ROOT)): _imports(f) & forbidden for f in _py_files(package)}
    assert not {k: v for k, v in bad.items() if v}


def test_model_registry():
    assert "clip" in vl_jax.models.list_models()
    for name in vl_jax.models.list_models():
        assert hasattr(vl_jax.models.get_model_module(name), "from_pretrained")
    with pytest.raises(KeyError, match="unknown model family"):
        vl_jax.models.get_model_module("nope")


@pytest.mark.slow
def test_main_rejects_unknown_config_keys(tmp_path):
    """lock_config: a mistyped override fails instead of being silently ignored."""
    r = subprocess.run(
        [sys.executable, "main.py", "--config=configs/smoke.py", f"--workdir={tmp_path}",
         "--config.encode.batchsize=4"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode != 0 and "batchsize" in r.stderr


def test_code_and_docs_cite_only_the_repository():
    """A reader of the repository must be able to follow every reference: no outside spec
    folders, no internal tracker numbers."""
    outside = r"\.\./" + "shared"  # spelled in two parts so this file does not cite it itself
    cite = re.compile(outside + r"|\bissue \d+|\bissue #\d+|\(issue\b", re.I)
    files = [*_py_files(*CODE_DIRS, "tests", "scripts"), ROOT / "main.py", ROOT / "README.md",
             *sorted((ROOT / "docs").glob("*.md"))]  # fmt: skip
    offenders = [
        f"{f.relative_to(ROOT)}:{i}: {line.strip()}"
        for f in files
        if f.name != "test_repo.py"
        for i, line in enumerate(f.read_text().splitlines(), 1)
        if cite.search(line)
    ]
    assert not offenders, "\n".join(offenders)


def test_library_holds_no_test_fixtures_and_reads_configs():
    """Production code never imports the smoke run, the tests or PyTorch (a test-only
    dependency), and never imports the configs that build its schema."""
    bad = {}
    for f in _py_files("vl_jax", "mcla_jax", "vdc_jax"):
        tree = ast.parse(f.read_text())
        mods = {
            n.module
            for n in ast.walk(tree)
            if isinstance(n, ast.ImportFrom) and n.module and n.level == 0
        } | {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        hit = {m for m in mods if m in ("vl_jax.smoke", "torch", "tests") or m.startswith("tests.")}
        if f.relative_to(ROOT).as_posix() == "vl_jax/smoke.py" or not hit:
            continue
        bad[str(f.relative_to(ROOT))] = hit
    assert not bad, bad


@pytest.mark.parametrize(
    "args",
    [
        ["-m", "mcla_jax.main", "--config=configs/mcla/mcla.py:imagenet_cats"],
        ["-m", "vdc_jax.main", "--config=configs/vdc/runlocal.py", "--config.vqa.batch_size=abc"],
        ["main.py", "--config=configs/smoke.py", "--config.encode.batchsize=4"],
    ],
    ids=["bad-config-arg", "bad-override-value", "mistyped-override"],
)
def test_command_line_errors_are_one_line_and_exit_2(args, tmp_path):
    """The one exit policy covers flag parsing too: a config file that rejects its argument or
    a bad override is one `error:` line, not absl's report with a traceback."""
    r = subprocess.run([sys.executable, *args, f"--workdir={tmp_path}"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert "Traceback" not in r.stderr
