"""One clustering experiment end to end: features, semantic space, method, metrics, outputs.

    python -m mcla_jax.main --config configs/mcla/mcla.py:imagenet_dogs --workdir runs/dogs_mcla

Stages, each cached in the workdir so that rerunning the same command resumes where a killed
run stopped: (1) CLIP image features of the train and evaluation splits
(``features/<split>.npz``); (2) CLIP text embeddings of the WordNet nouns (the noun cache of
``mcla_jax.noun_embeddings``); (3) the semantic space (``semantic_space.tsv``); (4) the method,
once per seed -- trained methods save an Orbax checkpoint every epoch under
``seed_<s>/checkpoints`` and continue from it; (5) evaluation on the evaluation split with the
*last* epoch (labels never select anything), written to ``metrics.json`` (per seed, mean, std),
``assignments.csv``, ``confusion.png``, ``log.jsonl`` and TensorBoard files.

Methods (``config.method``): ``mcla``, ``sic``, ``tac`` (trained, ``mcla_jax.methods``),
``tac_notrain`` (spherical k-means on ``[u ; t~]``), ``kmeans`` (CLIP k-means), ``zeroshot``
(CLIP zero-shot with the class names -- uses the labels' names, so it is a reference, not
clustering). Config layout: ``base_config``; datasets: ``DATASETS``.
"""

from __future__ import annotations

import json
import os
import sys
import time

import ml_collections
import numpy as np

from mcla_jax import baselines, methods, semantic_space
from mcla_jax import train as train_lib
from vl_jax import faults, parallel, plots, runlog
from vl_jax.checkpoints.train_state import TrainCheckpoints
from vl_jax.fileio import atomic_open
from vl_jax.metrics import clustering_metrics, confusion_matrix, hungarian_match

# name -> (vl_jax.data name, train split, evaluation split, K). Evaluation splits follow SIC/TAC:
# ImageNet subsets are evaluated on their ILSVRC-2012 val images (750 for ImageNet-Dogs).
DATASETS = {
    "imagenet_dogs": ("imagenet_dogs", "train", "validation", 15),
    "imagenet10": ("imagenet10", "train", "validation", 10),
    "cifar10": ("cifar10", "train", "test", 10),
    "cifar20": ("cifar100_20", "train", "test", 20),
    "stl10": ("stl10", "train", "test", 10),
    "easy_vqa_shapes": ("easy_vqa_shapes", "train", "test", 3),
    "easy_vqa_colors": ("easy_vqa_colors", "train", "test", 8),
}
CLIP_MODELS = {
    "b32": "openai/clip-vit-base-patch32",
    "b16": "openai/clip-vit-base-patch16",
    "l14": "openai/clip-vit-large-patch14",
}
TRAINED = tuple(methods.METHODS)
ALL_METHODS = (*TRAINED, "tac_notrain", "kmeans", "zeroshot")


def base_config(method: str, arg: str = "imagenet_dogs") -> ml_collections.ConfigDict:
    """The config of ``method`` on a dataset; ``arg`` = ``DATASET[,b16|l14][,train_eq_eval]``
    or ``runlocal`` (tiny random CLIP built in the workdir, easy-VQA shapes, a minute on a CPU)."""
    if method not in ALL_METHODS:
        raise ValueError(f"unknown method {method!r}; known: {ALL_METHODS}")
    parts = [p.strip() for p in arg.split(",") if p.strip()] or ["imagenet_dogs"]
    runlocal = parts[0] == "runlocal"
    name = "easy_vqa_shapes" if runlocal else parts[0]
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known: {sorted(DATASETS)} or runlocal")
    data_name, train_split, eval_split, k = DATASETS[name]
    c = ml_collections.ConfigDict()
    c.job = "mcla"
    c.method = method
    c.seeds = "0"  # comma-separated; metrics.json reports each and mean +- std
    c.data = ml_collections.ConfigDict(
        dict(name=name, source=data_name, train_split=train_split, eval_split=eval_split,
             protocol="train_eval", data_dir="", manual_dir="", encode_batch=256, limit=0,
             features_dir="")
    )  # fmt: skip
    if "train_eq_eval" in parts:  # the older protocol: evaluate on the training images
        c.data.protocol = "train_eq_eval"
    size = next((p for p in parts if p in CLIP_MODELS), "b32")
    c.model = ml_collections.ConfigDict(
        dict(clip=CLIP_MODELS[size], dtype="float32", tiny=runlocal)
    )
    c.space = ml_collections.ConfigDict(
        dict(kind={"sic": "sic", "tac": "tac", "tac_notrain": "tac"}.get(method, "mcla"),
             prompts="tac" if method.startswith("tac") and not runlocal else "single", cache_dir="",
             gamma_r=500, gamma_u=0.05, tac_per_centre=5, max_tokens=0, rule="nearest")
    )  # fmt: skip
    # space.rule (mcla space only): "nearest" = each k-means centre lists its gamma_r nearest
    # nouns (SIC); "margin" = the gamma_r nouns that single it out from the other centres.
    c.knn = 50 if method.startswith("tac") else 20
    c.kmeans_n_init = 10
    c.train = train_lib.get_config()
    c.train.num_clusters = k
    c.train.method = method if method in TRAINED else "mcla"
    if method == "sic":  # SIC's official settings (clustering.md §2)
        c.train.lr, c.train.weight_decay, c.train.batch_size, c.train.epochs = 1e-4, 1e-4, 128, 100
        c.train.b1, c.train.b2, c.train.warmup_epochs = 0.9, 0.999, 0
        c.train.weights = ml_collections.ConfigDict(dict(neighbour=1.0, entropy=5.0, semantic=0.1))
        if name == "imagenet_dogs":
            c.train.weight_decay = 0.009
    elif method == "tac":  # TAC's official settings (clustering.md §3)
        c.train.lr, c.train.batch_size, c.train.epochs, c.train.warmup_epochs = 1e-3, 512, 20, 0
        c.train.model.hidden = 512
        c.train.weights = ml_collections.ConfigDict(dict(cluster=1.0, consistency=1.0, entropy=5.0))
    if runlocal:
        c.data.limit = 800  # images per split (at most the smallest split)
        c.space.gamma_r = 50
        c.train.epochs = 5 if method != "sic" else 10
        c.train.batch_size = 128
        c.train.model.hidden = min(int(c.train.model.hidden), 64)
    # The random CLIP built in the workdir when model.tiny (runlocal; plumbing checks only).
    c.tiny = ml_collections.ConfigDict(
        dict(image_size=64, patch_size=16, width=64, layers=2, heads=4, text_width=64,
             text_layers=2, text_heads=4, context_length=32, embed_dim=32, act="quick_gelu")
    )  # fmt: skip
    c.mesh = ml_collections.ConfigDict(dict(data=-1, model=1))
    return c


# ------------------------------------------------------------------------------------ stages


def clip_path(config, workdir: str) -> str:
    """The CLIP checkpoint: the configured hub id / directory, or (``model.tiny``) a random tiny
    CLIP written once into ``workdir/tiny_clip`` and loaded like any checkpoint."""
    if not config.model.tiny:
        return config.model.clip
    from vl_jax.models import clip
    from vl_jax.smoke import tiny_clip_config, write_checkpoint

    path = os.path.join(workdir, "tiny_clip")
    if not os.path.exists(os.path.join(path, "model.safetensors")):
        write_checkpoint(clip.init(tiny_clip_config(config.tiny), seed=0), path + ".tmp")
        os.replace(path + ".tmp", path)
    return path


def load_features(config, workdir: str, split: str, model: str, mesh) -> dict:
    """Features of one split, encoded once into ``<features_dir>/<split>.npz`` (default
    ``workdir/features``; point several methods' runs at one folder to encode once; ``{workdir}``
    in it is replaced by the workdir), reused when
    the model and dataset match its ``.json`` description."""
    from vl_jax.encode import encode_dataset

    # "{workdir}" in features_dir stands for this run's workdir (suites share a sibling folder)
    folder = config.data.features_dir.replace("{workdir}", workdir) or os.path.join(
        workdir, "features"
    )
    out = os.path.join(folder, f"{split}.npz")
    desc = dict(model=model, data=config.data.source, split=split, limit=int(config.data.limit))
    if os.path.exists(out) and os.path.exists(out + ".json"):
        with open(out + ".json") as f:
            if json.load(f) == desc:
                return _read_npz(out)
    data = f"{config.data.source}:{split}"
    if config.data.limit:
        data += f"[:{int(config.data.limit)}]"
    r = encode_dataset(
        model, data, out, data_dir=config.data.data_dir or None,
        manual_dir=config.data.manual_dir or None, batch_size=int(config.data.encode_batch),
        dtype=config.model.dtype, mesh=mesh,
    )  # fmt: skip
    runlog.write_json(out + ".json", desc)  # after the .npz: its presence marks a complete pair
    # Every process has the result; only process 0 wrote the file (do not read it back here).
    return dict(features=r.features, labels=r.labels, paths=np.asarray(r.paths, str),
                class_names=np.asarray(r.class_names, str))  # fmt: skip


def _read_npz(path: str) -> dict:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def noun_space(config, workdir: str, model: str, train_u: np.ndarray, mesh):
    """Noun embeddings ``[M, E]`` and the configured semantic space over ``train_u``; writes
    ``semantic_space.tsv``. Returns ``(space_embeddings [S, E], space)``."""
    from mcla_jax import wordnet
    from mcla_jax.noun_embeddings import embed_nouns, vocabulary_mask

    table = wordnet.load()
    # Optional vocabulary filter: only nouns the tokenizer spells in <= max_tokens tokens.
    cand = None
    if int(config.space.max_tokens) > 0:
        cand = vocabulary_mask(model, table.lemmas, int(config.space.max_tokens))
        print(f"vocabulary filter: {int(cand.sum())} of {len(cand)} nouns", file=sys.stderr)
    emb, _ = embed_nouns(
        model, list(table.lemmas), prompts=config.space.prompts, dtype=config.model.dtype,
        cache_dir=config.space.cache_dir or None, mesh=mesh,
    )  # fmt: skip
    k, kind = int(config.train.num_clusters), config.space.kind
    x = methods.prepare(train_u, "normalize")[0]
    if kind == "sic":
        space = semantic_space.sic_space(x, emb, n_clusters=k, gamma_r=int(config.space.gamma_r),
                                         gamma_u=float(config.space.gamma_u), candidates=cand)  # fmt: skip
    elif kind == "tac":
        space = semantic_space.tac_space(x, emb, per_centre=int(config.space.tac_per_centre),
                                         candidates=cand)  # fmt: skip
    elif kind == "mcla":
        space = semantic_space.mcla_space(x, emb, table, n_clusters=k,
                                          gamma_r=int(config.space.gamma_r),
                                          gamma_u=float(config.space.gamma_u), candidates=cand,
                                          rule=str(config.space.rule))  # fmt: skip
    else:
        raise ValueError(f"unknown semantic space {kind!r}; known: sic, tac, mcla")
    if len(space) == 0:
        raise ValueError(f"the {kind} semantic space is empty; loosen config.space filters")
    if runlog.is_main_process():  # one writer for shared files
        tsv = semantic_space.write_tsv(space, workdir, table)
        os.replace(tsv, os.path.join(workdir, "semantic_space.tsv"))
    return emb[space.indices], space


def prepare_inputs(config, train_u, eval_u, nouns, mesh) -> dict:
    """What every seed of a trained method shares, computed once: prepared features and text
    counterparts of both splits (``u, t, ue, te``) and the kNN indices (``knn_img``, ``knn_txt``)."""
    from vl_jax.cluster import knn

    method = methods.get_method(config.train.method)
    tau = config.train.tau.text
    u, mean = methods.prepare(train_u, method.prepare)
    t, tmean = methods.prepare(
        train_lib.build_text_counterparts(train_u, nouns, tau), method.prepare
    )
    ue = methods.prepare(eval_u, method.prepare, mean)[0]
    te = methods.prepare(
        train_lib.build_text_counterparts(eval_u, nouns, tau), method.prepare, tmean
    )[0]
    metric = "l2" if method.name == "sic" else "cosine"  # SIC: L2 on raw features
    return dict(
        u=u, t=t, ue=ue, te=te,
        knn_img=knn(u, int(config.knn), metric, mesh=mesh)[0],
        knn_txt=knn(t, int(config.knn), "cosine", mesh=mesh)[0] if method.text_knn else None,
    )  # fmt: skip


def fit_trained(config, workdir, seed, inputs: dict, nouns, mesh, writer) -> tuple:
    """One seed of a trained method with per-epoch checkpoints; returns (train, eval) clusters."""
    cfg = ml_collections.ConfigDict(config.train.to_dict())
    cfg.seed = seed
    method = methods.get_method(cfg.method)
    u, t, knn_img, knn_txt = inputs["u"], inputs["t"], inputs["knn_img"], inputs["knn_txt"]
    aux = {"nouns": nouns} if method.name == "sic" else None
    centres = None
    if cfg.init == "kmeans":  # heads start at k-means centres of the prepared features
        from vl_jax.cluster import kmeans

        c_img, assign, _ = kmeans(u, int(cfg.num_clusters), n_init=int(config.kmeans_n_init),
                                  seed=seed, mesh=mesh)  # fmt: skip
        assign = np.asarray(assign)
        c_txt = np.stack([t[assign == j].mean(0) if np.any(assign == j) else np.zeros(t.shape[1])
                          for j in range(int(cfg.num_clusters))])  # fmt: skip
        centres = (np.asarray(c_img), None if method.name == "sic" else c_txt)
    elif cfg.init != "random":
        raise ValueError(f"train.init must be 'random' or 'kmeans', got {cfg.init!r}")
    run = train_lib.Trainer(u, t, knn_img, cfg, mesh, knn_txt=knn_txt, aux=aux, centres=centres)
    fingerprint = dict(config=cfg.to_json(sort_keys=True), n=len(u), features=float(np.sum(u[:64])))
    with TrainCheckpoints(
        os.path.join(workdir, f"seed_{seed}", "checkpoints"), meta=fingerprint
    ) as ck:
        step, state = ck.restore_latest(run.state())
        if step is not None:
            run.load_state(state)
            print(f"seed {seed}: resumed after epoch {step}", file=sys.stderr)
        for _ in runlog.progress(
            range(run.epochs_done, int(cfg.epochs)), desc=f"{cfg.method} seed {seed}"
        ):
            rec = run.epoch()
            faults.point("train.epoch")
            writer.scalars(
                rec["epoch"], {f"seed{seed}/{k}": v for k, v in rec.items() if k != "epoch"}
            )
            ck.save(run.epochs_done, run.state())
    return run.assign, run.predict(inputs["ue"], inputs["te"])


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs the experiment ``config`` (``base_config``-shaped) into ``workdir``; returns the
    contents of ``metrics.json``."""
    t0 = time.perf_counter()
    if runlog.is_main_process():  # the others only read what process 0 writes
        os.makedirs(workdir, exist_ok=True)
    mesh = parallel.mesh_from_config(config.mesh)
    model = clip_path(config, workdir)
    train = load_features(config, workdir, config.data.train_split, model, mesh)
    same = config.data.protocol == "train_eq_eval"
    evals = train if same else load_features(config, workdir, config.data.eval_split, model, mesh)
    seeds = [int(s) for s in str(config.seeds).split(",") if s.strip()]
    method, k = config.method, int(config.train.num_clusters)
    class_names = [str(c) for c in evals["class_names"]]

    nouns = space = None
    if method in (*TRAINED, "tac_notrain"):
        nouns, space = noun_space(config, workdir, model, train["features"], mesh)
    per_seed, assign = [], {}
    if method in TRAINED:
        inputs = prepare_inputs(config, train["features"], evals["features"], nouns, mesh)
    with runlog.MetricWriter(workdir) as writer:
        for seed in seeds:
            if method in TRAINED:
                _, pred = fit_trained(config, workdir, seed, inputs, nouns, mesh, writer)
            elif method == "tac_notrain":
                pred = baselines.tac_notrain(train["features"], evals["features"], nouns, k, seed,
                                             config.train.tau.text, mesh)  # fmt: skip
            elif method == "kmeans":
                pred = baselines.kmeans_baseline(train["features"], evals["features"], k, seed,
                                                 int(config.kmeans_n_init), mesh)  # fmt: skip
            else:
                pred = baselines.zeroshot(model, evals["features"], class_names,
                                          config.space.prompts, config.model.dtype, mesh)  # fmt: skip
            assign[seed] = pred
            per_seed.append({"seed": seed, **clustering_metrics(evals["labels"], pred)})
            writer.scalars(
                len(per_seed), {f"eval/{m}": per_seed[-1][m] for m in ("acc", "nmi", "ari")}
            )
    summary = {
        "method": method,
        "dataset": config.data.name,
        "protocol": "train on the train split, evaluate on the evaluation split"
        if not same
        else "train = evaluate (older protocol)",
        "splits": {
            "train": config.data.train_split,
            "eval": config.data.train_split if same else config.data.eval_split,
        },
        "n_train": len(train["labels"]),
        "n_eval": len(evals["labels"]),
        "num_clusters": k,
        "clip": config.model.clip if not config.model.tiny else "tiny random CLIP (runlocal)",
        "semantic_space_size": None if space is None else len(space),
        "selection": "last epoch; labels are used only for these metrics",
        "per_seed": per_seed,
        "mean": {m: float(np.mean([r[m] for r in per_seed])) for m in ("acc", "nmi", "ari")},
        "std": {m: float(np.std([r[m] for r in per_seed])) for m in ("acc", "nmi", "ari")},
        "seconds": time.perf_counter() - t0,
    }
    if runlog.is_main_process():
        _write_outputs(workdir, evals, assign[seeds[0]], class_names)
    runlog.write_json(os.path.join(workdir, "metrics.json"), summary)
    m, s = summary["mean"], summary["std"]
    print(
        f"{method} on {config.data.name} ({len(seeds)} seed(s)): ACC {m['acc']:.4f}+-{s['acc']:.4f} "
        f"NMI {m['nmi']:.4f}+-{s['nmi']:.4f} ARI {m['ari']:.4f}+-{s['ari']:.4f}; outputs in {workdir}",
        file=sys.stderr,
    )
    return summary


def _write_outputs(workdir: str, evals: dict, pred: np.ndarray, class_names: list[str]) -> None:
    """``assignments.csv`` (id, cluster, label, class) and ``confusion.png`` (classes x
    clusters, clusters ordered by their Hungarian-matched class) of the first seed."""
    labels = evals["labels"]
    with atomic_open(os.path.join(workdir, "assignments.csv"), "w", encoding="utf-8") as f:
        f.write("id,cluster,label,class\n")
        for i, c, y in zip(evals["paths"], pred, labels):
            name = class_names[y] if 0 <= y < len(class_names) else ""
            f.write(f"{_csv(str(i))},{int(c)},{int(y)},{_csv(name)}\n")
    known = labels >= 0
    if not known.any():
        return
    counts, classes, clusters = confusion_matrix(labels[known], pred[known])
    match = hungarian_match(labels[known], pred[known])
    order = sorted(range(len(clusters)), key=lambda j: (match.get(clusters[j].item(), 1 << 30), j))
    names = [class_names[c] if 0 <= c < len(class_names) else str(c) for c in classes]
    plots.confusion_png(os.path.join(workdir, "confusion.png"), counts[:, order], row_names=names,
                        col_names=[str(clusters[j]) for j in order], title="evaluation split")  # fmt: skip


def _csv(s: str) -> str:
    return '"' + s.replace('"', '""') + '"' if any(ch in s for ch in ',"\n') else s


def fail_clearly(exc: BaseException) -> str | None:
    """The message to print instead of a traceback for a data-preparation error, else None."""
    from vl_jax.data.sources import DatasetNotPreparedError

    if isinstance(exc, (DatasetNotPreparedError, FileNotFoundError)):
        return f"error: {exc}"
    return None
