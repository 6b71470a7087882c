"""Kill -9 at seeded random points of a real MCLA run, rerun the same command: same outputs.

An uninterrupted run with ``VL_JAX_FAULT_TRACE`` lists every fault point it passes
(`vl_jax.faults`). For each stage -- feature encoding, noun embedding, training, a checkpoint
being written, an output file being written -- a generator seeded by ``KILL_SEED`` picks one of
that stage's passes; a fresh run is SIGKILLed there (by itself, like a preempted machine), the
same command is rerun, and its metrics, assignments and semantic space must equal the
uninterrupted run's. Stages before the one under test read caches the uninterrupted run filled,
so each case pays only for its own stage onwards. Set ``KILL_SEED`` to explore other points.
"""

import collections
import csv
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from mcla_jax import experiment
from vl_jax import faults

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED = int(os.environ.get("KILL_SEED", "0"))
# stage -> (fault points it may be killed at, caches it starts without)
STAGES = {
    "encoding": (("encode.batch", "encode.saved"), ("features", "nouns")),
    "nouns": (("nouns.block",), ("nouns",)),
    "training": (("train.epoch", "checkpoint.saved"), ()),
    "checkpoint": (("checkpoint.writing",), ()),
    "outputs": (("file.temp",), ("features", "nouns")),  # any atomic write, caches included
}


def _args(root, workdir, features, nouns):
    return [sys.executable, "-m", "mcla_jax.main", "--config", "configs/mcla/mcla.py:runlocal",
            f"--workdir={workdir}", "--config.model.tiny=False", f"--config.model.clip={root / 'clip'}",
            "--config.data.limit=240", f"--config.data.features_dir={features}",
            "--config.data.encode_batch=32", f"--config.space.cache_dir={nouns}",
            "--config.space.max_tokens=1", "--config.train.epochs=4"]  # fmt: skip


def _run(args, **env):
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", **env)
    for name in (faults.ENV, faults.TRACE_ENV):
        if name not in env or not env[name]:
            env.pop(name, None)
    return subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _outputs(workdir) -> dict:
    with open(os.path.join(workdir, "metrics.json")) as f:
        m = json.load(f)
    with open(os.path.join(workdir, "assignments.csv"), newline="") as f:
        assign = list(csv.DictReader(f))
    with open(os.path.join(workdir, "semantic_space.tsv"), encoding="utf-8") as f:
        space = f.read()
    return dict(per_seed=m["per_seed"], assignments=assign, space=space)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run (features and noun caches of its own) and the points it passed."""
    root = tmp_path_factory.mktemp("kill")
    cfg = experiment.base_config("mcla", "runlocal")
    os.replace(experiment.clip_path(cfg, str(root)), root / "clip")  # the tiny random CLIP
    trace = root / "trace.txt"
    done = _run(
        _args(root, root / "ref", root / "features", root / "nouns"), VL_JAX_FAULT_TRACE=str(trace)
    )
    assert done.returncode == 0, done.stderr[-3000:]
    passes = trace.read_text().split()
    return root, passes, _outputs(root / "ref")


@pytest.mark.parametrize("stage,seed", [(stage, SEED) for stage in STAGES])
def test_kill_anywhere_then_rerun_gives_the_same_outputs(reference, stage, seed, tmp_path):
    root, passes, want = reference
    names, fresh = STAGES[stage]
    counts = collections.Counter(passes)
    choices = [(name, i + 1) for name in names for i in range(counts[name])]
    assert choices, f"the reference run passed no {names} point: {counts}"
    rng = np.random.default_rng([seed, list(STAGES).index(stage)])
    if stage == "outputs" and rng.random() < 0.5:
        # Most atomic writes are noun-cache parts; half the seeds pick one of the run's own
        # outputs instead (metrics.json, assignments.csv, ...: the writes after the last checkpoint).
        last = max(i for i, p in enumerate(passes) if p.startswith("checkpoint."))
        choices = choices[passes[:last].count("file.temp") :]
    point, n = choices[rng.integers(len(choices))]
    features = tmp_path / "features" if "features" in fresh else root / "features"
    nouns = tmp_path / "nouns" if "nouns" in fresh else root / "nouns"
    args = _args(root, tmp_path / "run", features, nouns)

    killed = _run(args, VL_JAX_KILL_AT=f"{point}:{n}")
    assert killed.returncode == -signal.SIGKILL, (point, n, killed.stderr[-3000:])
    assert not (tmp_path / "run" / "metrics.json").exists() or stage == "outputs"
    again = _run(args)
    assert again.returncode == 0, (point, n, again.stderr[-3000:])
    assert _outputs(tmp_path / "run") == want, (point, n)
