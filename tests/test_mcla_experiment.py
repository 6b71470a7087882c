"""`python -m mcla_jax.main` end to end: every method's runlocal config, outputs, seeds, resume
after a kill, and the clear error for an unprepared dataset.

One tiny random CLIP, one features folder and one noun-embedding cache are shared by all runs
(`data.features_dir`, `space.cache_dir`), so each test pays only for its own method.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from flax import nnx

import configs.mcla as mcla_configs
from mcla_jax import experiment
from vl_jax.metrics import clustering_metrics

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIMIT = 400  # images per split


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    root = tmp_path_factory.mktemp("mcla_shared")
    cfg = mcla_configs.get("kmeans", "runlocal")
    clip_dir = experiment.clip_checkpoint(
        cfg, str(root), None
    ).path  # the tiny random CLIP, written once
    return dict(clip=clip_dir, features=str(root / "features"), cache=str(root / "nouns"))


def _config(method, shared, **overrides):
    c = mcla_configs.get(method, "runlocal")
    c.model.tiny = False
    c.model.clip = shared["clip"]
    c.data.limit = LIMIT
    c.data.features_dir = shared["features"]
    c.space.cache_dir = shared["cache"]
    c.train.epochs = 3
    for key, value in overrides.items():
        target = c
        *path, last = key.split(".")
        for p in path:
            target = target[p]
        target[last] = value
    return c


def _assignments(workdir):
    with open(os.path.join(workdir, "assignments.csv"), newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("method", experiment.ALL_METHODS)
@pytest.mark.slow
def test_runlocal_every_method_writes_its_outputs(method, shared, tmp_path):
    summary = experiment.run(_config(method, shared), str(tmp_path))
    with open(tmp_path / "metrics.json") as f:
        assert json.load(f) == json.loads(json.dumps(summary))
    assert summary["method"] == method and summary["n_eval"] == LIMIT
    assert summary["protocol"].startswith("train on the train split")
    rows = _assignments(tmp_path)
    assert len(rows) == LIMIT and set(rows[0]) == {"id", "cluster", "label", "class"}
    pred = np.array([int(r["cluster"]) for r in rows])
    labels = np.array([int(r["label"]) for r in rows])
    assert pred.min() >= 0 and pred.max() < 3
    # metrics.json is what the assignments file scores
    m = clustering_metrics(labels, pred)
    assert summary["per_seed"][0]["acc"] == pytest.approx(m["acc"])
    assert (tmp_path / "confusion.png").stat().st_size > 1000
    if method in ("mcla", "sic", "tac", "tac_notrain"):
        lines = (tmp_path / "semantic_space.tsv").read_text().splitlines()
        assert (
            lines[0].startswith("lemma\twnid") and len(lines) - 1 == summary["semantic_space_size"]
        )
    if method in experiment.TRAINED:
        logged = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
        assert [r["step"] for r in logged if "seed0/loss" in r] == [0, 1, 2]
        assert os.listdir(tmp_path / "tensorboard")


@pytest.mark.slow
def test_seeds_give_mean_and_std(shared, tmp_path):
    summary = experiment.run(_config("kmeans", shared, seeds="0,1,2"), str(tmp_path))
    accs = [r["acc"] for r in summary["per_seed"]]
    assert [r["seed"] for r in summary["per_seed"]] == [0, 1, 2]
    assert summary["mean"]["acc"] == pytest.approx(np.mean(accs))
    assert summary["std"]["acc"] == pytest.approx(np.std(accs))


def test_train_eq_eval_protocol(shared, tmp_path):
    c = _config("kmeans", shared)
    c.data.protocol = "train_eq_eval"
    summary = experiment.run(c, str(tmp_path))
    assert summary["splits"]["eval"] == "train" and "older protocol" in summary["protocol"]


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_result(shared, tmp_path):
    """Kill -9 a training run after its 2nd epoch checkpoint; the rerun resumes (not restarts)
    and its outputs equal an uninterrupted run's."""
    epochs = 6
    whole = experiment.run(_config("mcla", shared, **{"train.epochs": epochs}), str(tmp_path / "a"))

    workdir = tmp_path / "b"
    args = [sys.executable, "-m", "mcla_jax.main", "--config", "configs/mcla/mcla.py:runlocal",
            f"--workdir={workdir}", "--config.model.tiny=False", f"--config.model.clip={shared['clip']}",
            f"--config.data.limit={LIMIT}", f"--config.data.features_dir={shared['features']}",
            f"--config.space.cache_dir={shared['cache']}", f"--config.train.epochs={epochs}"]  # fmt: skip
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
    proc = subprocess.Popen(
        args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    ckpt = workdir / "seed_0" / "checkpoints"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if (ckpt / "2").is_dir() and (ckpt / "2" / "commit_success.txt").exists():
            break
        time.sleep(0.05)
    assert proc.poll() is None, (
        "the run ended before it could be killed: " + proc.stderr.read().decode()[-2000:]
    )
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (workdir / "metrics.json").exists()

    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed after epoch" in done.stderr
    with open(workdir / "metrics.json") as f:
        resumed = json.load(f)
    assert resumed["per_seed"] == whole["per_seed"]
    assert _assignments(workdir) == _assignments(tmp_path / "a")


@pytest.mark.slow
def test_unprepared_dataset_is_a_clear_error(tmp_path):
    # CIFAR-10 is a registered TFDS dataset that is never downloaded here: the CLI must say how to
    # prepare it, not print a traceback.
    args = [sys.executable, "-m", "mcla_jax.main", "--config", "configs/mcla/kmeans.py:cifar10",
            f"--workdir={tmp_path / 'w'}", f"--config.data.data_dir={tmp_path / 'tfds'}",
            "--config.model.tiny=True"]  # fmt: skip
    done = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "cifar10" in done.stderr and "download_and_prepare" in done.stderr


def test_bad_config_names():
    with pytest.raises(ValueError, match="'imagenet_cats' is not known"):
        mcla_configs.get("mcla", "imagenet_cats")
    with pytest.raises(ValueError, match="unknown method"):
        mcla_configs.get("dbscan", "cifar10")


@pytest.mark.slow
def test_clip_is_loaded_once_onto_the_mesh_and_not_at_all_when_cached(
    shared, tmp_path, monkeypatch
):
    """One run loads its CLIP once (encoding both splits, noun embeddings and zero-shot share
    it), each parameter placed in a NamedSharding on the run's mesh as it is read; a rerun whose
    stages are all cached never reads the weights."""
    from vl_jax.models import clip

    loads = []
    real = clip.from_pretrained

    def counting(path, *args, **kwargs):
        loads.append(kwargs.get("shardings") is not None)
        model = real(path, *args, **kwargs)
        leaves = jax.tree.leaves(nnx.state(model))
        loads[-1] &= all(isinstance(x.sharding, jax.sharding.NamedSharding) for x in leaves)
        return model

    monkeypatch.setattr(clip, "from_pretrained", counting)
    c = _config("zeroshot", shared, **{"data.features_dir": str(tmp_path / "features"),
                                       "space.cache_dir": str(tmp_path / "nouns")})  # fmt: skip
    experiment.run(c, str(tmp_path / "a"))
    assert loads == [True]  # once for both splits and the class names, into its shardings
    loads.clear()
    experiment.run(_config("kmeans", shared, **{"data.features_dir": str(tmp_path / "features")}),
                   str(tmp_path / "c"))  # fmt: skip
    assert loads == []  # every stage cached: the weights are never read


@pytest.mark.slow
def test_features_of_other_settings_are_recomputed(shared, tmp_path):
    """The fingerprint rule for derived results: a features file made with another limit is
    not reused, it is encoded again (and the fingerprint beside it updated)."""
    feats = str(tmp_path / "features")
    experiment.run(_config("kmeans", shared, **{"data.features_dir": feats}), str(tmp_path / "a"))
    with open(os.path.join(feats, "train.npz.json")) as f:
        assert json.load(f)["limit"] == LIMIT
    summary = experiment.run(
        _config("kmeans", shared, **{"data.features_dir": feats, "data.limit": LIMIT // 2}),
        str(tmp_path / "b"),
    )
    assert summary["n_train"] == LIMIT // 2
    with open(os.path.join(feats, "train.npz.json")) as f:
        assert json.load(f)["limit"] == LIMIT // 2
