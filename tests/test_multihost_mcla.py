"""Multi-host MCLA: 2 real JAX processes on localhost (gloo, 2 fake CPU devices each).

Both processes get the same global numpy arrays (as every host of a pod would read the same
feature file) and run on one 4-device mesh spanning both. They must produce what one process
computes: kNN, k-means and `mcla_jax.train.Trainer` against 4 and 8 devices in this process,
and the whole `mcla_jax.experiment.run` (semantic space, kNN, training with Orbax checkpoints,
metrics, outputs) against an 8-device run. Process 1 must write nothing into the workdir
itself: an audit hook (`sys.addaudithook`) records every Python-level file write it makes.
"""

import json
import os
import textwrap

import jax
import ml_collections
import numpy as np
import pytest
import test_mcla_train as synthetic_data  # module access only: its fixtures stay unregistered
from multihost_procs import AUDIT_WRITES, run_processes

import configs.mcla as mcla_configs
from configs.mcla.synthetic import get_config
from mcla_jax import experiment, wordnet
from mcla_jax import noun_embeddings as ne
from mcla_jax import train as T
from vl_jax.cluster import kmeans, knn
from vl_jax.parallel import create_mesh

# Real multi-process JAX runs: the full suite only.
pytestmark = pytest.mark.slow

EPOCHS, KNN = 2, 10

_WORKER = (
    textwrap.dedent(
        """
    import json, os, sys
    import numpy as np

    pid, port, root = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    """
    )
    + AUDIT_WRITES
    + textwrap.dedent(
        """

    from vl_jax import parallel as par
    assert par.initialize_distributed(f"127.0.0.1:{port}", num_processes=2, process_id=pid)
    import jax, ml_collections
    from mcla_jax import experiment
    from mcla_jax import train as T
    from vl_jax.cluster import kmeans, knn

    with np.load(os.path.join(root, "data.npz")) as z:
        x, t = z["x"], z["t"]
    with open(os.path.join(root, "train.json")) as f:
        cfg = ml_collections.ConfigDict(json.load(f))
    mesh = par.create_mesh()  # data=4: 2 devices in each process
    idx, dist = knn(x, int(sys.argv[4]), mesh=mesh)
    _, km, inertia = kmeans(x, 4, n_init=2, seed=0, mesh=mesh)
    run = T.Trainer(T.prepare(x), T.prepare(t), idx, cfg, mesh)
    hist = [run.epoch() for _ in range(int(cfg.epochs))]
    out = dict(pid=jax.process_index(), describe=par.describe(mesh), knn=idx.tolist(), dist=dist.tolist(),
               kmeans=km.tolist(), inertia=inertia, assign=run.assign.tolist(),
               predict=run.predict(T.prepare(x)).tolist(), history=hist)
    with open(os.path.join(root, "experiment.json")) as f:
        config = ml_collections.ConfigDict(json.load(f))
    workdir = os.path.join(root, "multi")
    out["experiment"] = experiment.run(config, workdir)["per_seed"]
    # Orbax's per-process metadata files (".../process_1") are this process's own, not shared.
    out["writes"] = [w for w in writes if os.path.abspath(w[1]).startswith(workdir)
                     and not w[1].endswith(f"process_{pid}")]
    # A file, not stdout: a full pipe would block this process while the other waits for it.
    with open(os.path.join(root, f"result_{pid}.json"), "w") as f:
        json.dump(out, f)
    """
    )
)


def _experiment_config(root: str) -> ml_collections.ConfigDict:
    """MCLA on precomputed features in ``root/features``: a stand-in CLIP directory whose noun
    embeddings (random unit rows, the whole WordNet table) are already in the noun cache."""
    cfg = mcla_configs.get("mcla", "runlocal")
    cfg.model.tiny = False
    cfg.model.clip = os.path.join(root, "clip")
    cfg.space.cache_dir = os.path.join(root, "noun_cache")
    cfg.data.protocol = "train_eq_eval"
    cfg.train.num_clusters = 4
    cfg.train.epochs = EPOCHS
    cfg.train.batch_size = 64
    cfg.knn = KNN
    # The stand-in CLIP has no weights to learn a prompt context through (prompt learning on a
    # sharded mesh: tests/test_mcla_prompts.py, 8 devices = 1).
    cfg.train.prompt.enabled = False
    return cfg


def _prepare_experiment(root: str, x, y, workdirs) -> None:
    """Writes the stand-in CLIP dir, its cached noun embeddings and each workdir's features."""
    cfg = _experiment_config(root)
    os.makedirs(cfg.model.clip)
    with open(os.path.join(cfg.model.clip, "config.json"), "w") as f:
        f.write("{}")  # embed_nouns only fingerprints the directory when the cache is complete
    texts = sorted({str(s) for s in wordnet.load().lemmas})
    key = ne.cache_key(cfg.model.clip, ne.SINGLE_PROMPT, texts, "normalized", cfg.model.dtype)
    emb = np.random.default_rng(0).normal(size=(len(texts), x.shape[1])).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    ne._write_npz(os.path.join(cfg.space.cache_dir, f"nouns-{key[:24]}.npz"), key, emb=emb,
                  nouns=np.array(texts, dtype=str))  # fmt: skip
    split = cfg.data.train_split
    desc = dict(model=cfg.model.clip, data=cfg.data.source, split=split, limit=int(cfg.data.limit))
    for w in workdirs:
        os.makedirs(os.path.join(w, "features"))
        np.savez(os.path.join(w, "features", f"{split}.npz"), features=x, labels=y,
                 paths=np.array([f"img{i}.png" for i in range(len(x))]),
                 class_names=np.array(["a", "b", "c", "d"]))  # fmt: skip
        with open(os.path.join(w, "features", f"{split}.npz.json"), "w") as f:
            json.dump(desc, f)
    with open(os.path.join(root, "experiment.json"), "w") as f:
        f.write(cfg.to_json())


def _single_process(x, t, cfg, mesh):
    idx, dist = knn(x, KNN, mesh=mesh)
    run = T.Trainer(T.prepare(x), T.prepare(t), idx, cfg, mesh)
    hist = [run.epoch() for _ in range(int(cfg.epochs))]
    return idx, dist, run.assign, run.predict(T.prepare(x)), hist


def test_two_processes_equal_one(tmp_path):
    root = str(tmp_path)
    x, t, y, _ = synthetic_data.synthetic()
    np.savez(os.path.join(root, "data.npz"), x=x, t=t)
    cfg = get_config()
    cfg.epochs = EPOCHS
    with open(os.path.join(root, "train.json"), "w") as f:
        f.write(cfg.to_json())
    _prepare_experiment(root, x, y, [os.path.join(root, "multi"), os.path.join(root, "single")])

    run_processes(_WORKER, [root, KNN], timeout=240)
    res = {}
    for pid in (0, 1):
        with open(os.path.join(root, f"result_{pid}.json")) as f:
            res[pid] = json.load(f)
    assert sorted(res) == [0, 1]
    assert "process=0/2" in res[0]["describe"] and "global=4" in res[0]["describe"]
    for key in ("knn", "kmeans", "assign", "predict", "history", "experiment"):
        assert res[0][key] == res[1][key], key  # every process ends with the same global result

    mesh4 = create_mesh(devices=jax.devices()[:4])
    mesh8 = create_mesh()
    for mesh in (mesh4, mesh8):
        idx, dist, assign, predict, hist = _single_process(x, t, cfg, mesh)
        np.testing.assert_array_equal(np.asarray(res[0]["knn"]), idx)
        np.testing.assert_allclose(np.asarray(res[0]["dist"]), dist, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(res[0]["assign"]), assign)
        np.testing.assert_array_equal(np.asarray(res[0]["predict"]), predict)
        for a, b in zip(res[0]["history"], hist):
            assert a.keys() == b.keys()
            for k in a:
                assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-6), k
    # k-means is bitwise device-count independent (block-ordered sums)
    _, km4, inertia4 = kmeans(x, 4, n_init=2, seed=0, mesh=mesh4)
    np.testing.assert_array_equal(np.asarray(res[0]["kmeans"]), km4)
    assert res[0]["inertia"] == inertia4

    # The whole experiment: same metrics and outputs as one process on 8 devices.
    with open(os.path.join(root, "experiment.json")) as f:
        config = ml_collections.ConfigDict(json.load(f))
    single = experiment.run(config, os.path.join(root, "single"))
    for a, b in zip(res[0]["experiment"], single["per_seed"]):
        assert a == pytest.approx(b, abs=1e-6)
    multi, one = os.path.join(root, "multi"), os.path.join(root, "single")
    for name in ("assignments.csv", "semantic_space.tsv"):
        with open(os.path.join(multi, name)) as f, open(os.path.join(one, name)) as g:
            assert f.read() == g.read(), name
    with open(os.path.join(multi, "metrics.json")) as f:
        assert json.load(f)["per_seed"] == res[0]["experiment"]
    assert res[1]["writes"] == [], f"process 1 wrote shared files: {res[1]['writes']}"
