"""Kill -9 at seeded random points of a real MCLA run (adapter and prompt context trained),
rerun the same command: same outputs.

An uninterrupted run with ``VL_JAX_FAULT_TRACE`` lists every fault point it passes
(`vl_jax.faults`). Then one fresh workdir goes through a chain of runs of the same command, each
SIGKILLed (by itself, like a preempted machine) at a pass drawn by a generator seeded with
``KILL_SEED``: during feature encoding, during noun embedding, after an epoch, while a
checkpoint is being written, and between an output file's temporary copy and its rename. Each
run resumes what the previous one left; the last, uninterrupted, must write the same metrics,
assignments and semantic space as the uninterrupted run. Set ``KILL_SEED`` to explore other
points.
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

import configs.mcla as mcla_configs
from mcla_jax import experiment
from vl_jax import faults

# Subprocess chains killed at every fault point: the full suite only.
pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEED = int(os.environ.get("KILL_SEED", "0"))


def _args(root, workdir, features, nouns):
    return [sys.executable, "-m", "mcla_jax.main", "--config", "configs/mcla/mcla.py:runlocal",
            f"--workdir={workdir}", "--config.model.tiny=False", f"--config.model.clip={root / 'clip'}",
            "--config.data.limit=240", f"--config.data.features_dir={features}",
            "--config.data.encode_batch=32", f"--config.space.cache_dir={nouns}",
            "--config.space.max_tokens=1", "--config.train.epochs=4",
            # MCLA as it runs by default: adapter and prompt context trained (and checkpointed)
            "--config.train.model.adapter=True", "--config.train.prompt.enabled=True"]  # fmt: skip


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
    cfg = mcla_configs.get("mcla", "runlocal")
    os.replace(
        experiment.clip_checkpoint(cfg, str(root), None).path, root / "clip"
    )  # the tiny random CLIP
    trace = root / "trace.txt"
    done = _run(
        _args(root, root / "ref", root / "features", root / "nouns"), VL_JAX_FAULT_TRACE=str(trace)
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # the checkpoints hold the trained embeddings: the prompt context and the adapter
    ckpts = root / "ref" / "seed_0" / "checkpoints"
    newest = max(ckpts.iterdir(), key=lambda p: int(p.name) if p.name.isdigit() else -1)
    keys = json.loads((newest / "state" / "_METADATA").read_text())["tree_metadata"]
    want = {"('params', 'context', 'value')", "('params', 'adapter', 'kernel', 'value')"}
    assert want <= set(keys), sorted(keys)
    return root, trace.read_text().split(), _outputs(root / "ref")


def _kill_chain(passes: list[str], seed: int) -> list[str]:
    """``VL_JAX_KILL_AT`` values, one per stage in run order. Each stage has not begun when the
    run before it is killed, so its passes in the next run are those of the uninterrupted run;
    only the checkpoint writes left depend on the epoch the previous kill stopped at."""
    rng = np.random.default_rng(seed)
    count = collections.Counter(passes)
    pick = lambda names: names[rng.integers(len(names))]
    encode = pick([f"encode.batch:{i + 1}" for i in range(count["encode.batch"])]
                  + [f"encode.saved:{i + 1}" for i in range(count["encode.saved"])])  # fmt: skip
    nouns = f"nouns.block:{rng.integers(count['nouns.block']) + 1}"
    epochs = count["train.epoch"]
    epoch = int(rng.integers(epochs)) + 1  # killed after this epoch, before its checkpoint
    saving = f"checkpoint.writing:{rng.integers(epochs - epoch + 1) + 1}"  # resumes at epoch - 1
    last = max(i for i, p in enumerate(passes) if p.startswith("checkpoint."))
    outputs = sorted({p for p in passes[last:] if p.startswith("file.temp/")})
    return [encode, nouns, f"train.epoch:{epoch}", saving, f"{pick(outputs)}:1"]


def test_killed_again_and_again_then_rerun_gives_the_same_outputs(reference, tmp_path):
    root, passes, want = reference
    assert {"encode.batch", "nouns.block", "train.epoch", "checkpoint.writing"} <= set(passes)
    args = _args(root, tmp_path / "run", tmp_path / "features", tmp_path / "nouns")
    chain = _kill_chain(passes, SEED)
    for kill in chain:
        killed = _run(args, VL_JAX_KILL_AT=kill)
        assert killed.returncode == -signal.SIGKILL, (chain, kill, killed.stderr[-3000:])
    done = _run(args)
    assert done.returncode == 0, (chain, done.stderr[-3000:])
    assert "resumed after epoch" in done.stderr
    assert _outputs(tmp_path / "run") == want, chain
