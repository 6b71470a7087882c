"""One clustering experiment end to end: features, semantic space, method, metrics, outputs.

    python -m mcla_jax.main --config configs/mcla/mcla.py:imagenet_dogs --workdir runs/dogs_mcla

Stages, each cached in the workdir so that rerunning the same command resumes where a killed
run stopped: (1) CLIP image features of the train and evaluation splits
(``features/<split>.npz``); (2) CLIP text embeddings of the WordNet nouns (the noun cache of
``mcla_jax.noun_embeddings``); (3) the semantic space (``semantic_space.tsv``); (4) the method,
once per seed -- trained methods save an Orbax checkpoint every epoch under
``seed_<s>/checkpoints`` and continue from it; (5) evaluation on the evaluation split with the
*last* epoch (labels never select anything), written to ``metrics.json`` (per seed, mean, std),
``assignments.csv``, ``confusion.png``, ``clusters.json`` / ``clusters.html`` (per cluster: size,
nouns, most and least typical members, majority class; ``mcla_jax.report_html``),
``log.jsonl`` and TensorBoard files.

Methods (``config.method``): ``mcla``, ``sic``, ``tac`` (trained, ``mcla_jax.methods``),
``tac_notrain`` (spherical k-means on ``[u ; t~]``), ``kmeans`` (CLIP k-means), ``zeroshot``
(CLIP zero-shot with the class names -- uses the labels' names, so it is a reference, not
clustering). The config schema is documented in docs/mcla.md; the files that build it are
configs/mcla/<method>.py. The CLIP checkpoint is one object for the whole run
(``vl_jax.models.loaded.ClipCheckpoint``), loaded at most once, onto the mesh, and only when a
stage that needs it is not cached.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import sys
import time
from typing import TYPE_CHECKING

import ml_collections
import numpy as np

from mcla_jax import baselines, methods, report_html, semantic_space
from mcla_jax import train as train_lib
from vl_jax import faults, parallel, plots, runlog
from vl_jax import workdir as wd
from vl_jax.checkpoints.train_state import TrainCheckpoints
from vl_jax.errors import ConfigError
from vl_jax.fileio import atomic_open
from vl_jax.metrics import clustering_metrics, confusion_matrix, hungarian_match
from vl_jax.models import tiny
from vl_jax.models.loaded import ClipCheckpoint

if TYPE_CHECKING:
    from mcla_jax.prompts import PromptText

TRAINED = tuple(methods.METHODS)
ALL_METHODS = (*TRAINED, "tac_notrain", "kmeans", "zeroshot")


@dataclasses.dataclass
class Features:
    """CLIP image features of one split: ``features [N, E]`` float32, ``labels [N]`` int32
    (-1 = none), ``ids [N]`` example ids, ``class_names [C]``."""

    features: np.ndarray
    labels: np.ndarray
    ids: np.ndarray
    class_names: list[str]


@dataclasses.dataclass
class Nouns:
    """The semantic space: ``embeddings [S, E]`` (unit rows) of its nouns, and the
    ``semantic_space.SemanticSpace`` that lists them."""

    embeddings: np.ndarray
    space: semantic_space.SemanticSpace


@dataclasses.dataclass
class PreparedInputs:
    """What every seed of a trained method shares, computed once: prepared image features and
    text counterparts of the train split (``u``, ``t`` [N, E]) and of the evaluation split
    (``ue``, ``te`` [M, E]), and the kNN indices (``knn_img`` [N, k], ``knn_txt`` [N, k] or
    None for methods without text-space neighbours)."""

    u: np.ndarray
    t: np.ndarray
    ue: np.ndarray
    te: np.ndarray
    knn_img: np.ndarray
    knn_txt: np.ndarray | None
    raw: np.ndarray | None = None  # raw train image features (prompt learning)
    text: PromptText | None = None  # the prompt-learning text path (MCLA, prompt.enabled)


# ------------------------------------------------------------------------------------ stages


def clip_checkpoint(config, workdir: str, mesh) -> ClipCheckpoint:
    """The run's CLIP, loaded at most once (on first use) onto ``mesh``: the configured hub id /
    directory, or (``model.tiny``) the tiny random CLIP of ``vl_jax.models.tiny``, written once
    into ``workdir/tiny_clip`` by the writer process and loaded like any checkpoint."""
    path = config.model.clip
    if config.model.tiny:
        path = os.path.join(workdir, "tiny_clip")
        if wd.is_writer():
            tiny.write_clip(path)
        wd.written("mcla: tiny CLIP written")
    return ClipCheckpoint(path, mesh=mesh, dtype=config.model.dtype)


def load_features(config, workdir: str, split: str, clip: ClipCheckpoint, mesh) -> Features:
    """Features of one split, encoded once into ``<features_dir>/<split>.npz`` (default
    ``workdir/features``; point several methods' runs at one folder to encode once;
    ``{workdir}`` in it stands for the workdir) and reused while its fingerprint (model,
    dataset, split, limit) matches (``vl_jax.workdir.Stage``)."""
    from vl_jax.data.hf import source_name
    from vl_jax.encode import encode_dataset

    folder = config.data.features_dir.replace("{workdir}", workdir) or os.path.join(
        workdir, "features"
    )
    out = os.path.join(folder, f"{split}.npz")
    source = source_name(config.data)  # data.source, or the hf: name of data.kind = "hf"
    stage = wd.Stage(out, dict(model=clip.path, data=source, split=split,
                               limit=int(config.data.limit)))  # fmt: skip
    cached = stage.load(_read_npz)
    if cached is not None:
        return cached
    r = encode_dataset(
        clip, data_name(config, split), out, data_dir=config.data.data_dir or None,
        manual_dir=config.data.manual_dir or None, batch_size=int(config.data.encode_batch),
        mesh=mesh,
    )  # fmt: skip
    stage.record()  # encode_dataset wrote the .npz (writer only); its fingerprint goes after it
    # Every process has the result; only the writer wrote the file (do not read it back here).
    return Features(r.features, r.labels, np.asarray(r.paths, str), list(r.class_names))


def data_name(config, split: str) -> str:
    """``"NAME:SPLIT[:limit]"``: the dataset the features of ``split`` are encoded from."""
    from vl_jax.data.hf import source_name

    data = f"{source_name(config.data)}:{split}"  # data.source, or the hf: name of kind "hf"
    return data + (f"[:{int(config.data.limit)}]" if config.data.limit else "")


def _read_npz(path: str) -> Features:
    with np.load(path, allow_pickle=False) as z:
        return Features(z["features"], z["labels"], z["paths"], [str(c) for c in z["class_names"]])


def noun_space(config, workdir: str, clip: ClipCheckpoint, train_u: np.ndarray, mesh) -> Nouns:
    """Noun embeddings ``[M, E]`` and the configured semantic space over ``train_u``; writes
    ``semantic_space.tsv``."""
    from mcla_jax import wordnet
    from mcla_jax.noun_embeddings import embed_nouns, vocabulary_mask

    table = wordnet.load()
    k, kind = int(config.train.num_clusters), config.space.kind
    # The noun texts (TAC: every lemma of every synset) and how prompt embeddings combine
    # (docs/mcla.md, "SIC and TAC in this framework").
    pool_kind, combine = str(config.space.get("pool", "synsets")), config.space.get("combine")
    if pool_kind not in wordnet.POOLS or (pool_kind != "synsets" and kind == "mcla"):
        raise ConfigError(f"config.space.pool must be one of {wordnet.POOLS} (mcla: synsets), "
                          f"got {pool_kind!r}")  # fmt: skip
    pool = wordnet.noun_pool(pool_kind, table)
    # Optional vocabulary filter: only nouns the tokenizer spells in <= max_tokens tokens.
    cand = None
    if int(config.space.max_tokens) > 0:
        cand = vocabulary_mask(clip, pool.texts, int(config.space.max_tokens))
        print(f"vocabulary filter: {int(cand.sum())} of {len(cand)} nouns", file=sys.stderr)
    emb, _ = embed_nouns(
        clip, list(pool.texts), prompts=config.space.prompts, combine=combine or "normalized",
        cache_dir=config.space.cache_dir or None, mesh=mesh,
    )  # fmt: skip
    x = methods.prepare(train_u, "normalize")[0]
    if kind == "sic":
        raw = config.space.get("sic_kmeans", "normalized") == "raw"  # SIC's code: raw features
        space = semantic_space.sic_space(train_u if raw else x, emb, n_clusters=k,
                                         gamma_r=int(config.space.gamma_r),
                                         gamma_u=float(config.space.gamma_u), candidates=cand,
                                         raw_kmeans=raw)  # fmt: skip
    elif kind == "tac":
        space = semantic_space.tac_space(x, emb, per_centre=int(config.space.tac_per_centre),
                                         candidates=cand)  # fmt: skip
    elif kind == "mcla":
        space = semantic_space.mcla_space(x, emb, table, n_clusters=k,
                                          gamma_r=int(config.space.gamma_r),
                                          gamma_u=float(config.space.gamma_u), candidates=cand,
                                          rule=str(config.space.rule))  # fmt: skip
    else:
        raise ConfigError(f"config.space.kind must be sic, tac or mcla, got {kind!r}")
    if len(space) == 0:
        raise ConfigError(f"the {kind} semantic space is empty; loosen config.space filters")
    if wd.is_writer():
        tsv = semantic_space.write_tsv(space, workdir, table, pool)
        os.replace(tsv, os.path.join(workdir, "semantic_space.tsv"))
    return Nouns(emb[space.indices], space)


def neighbour_search(config):
    """``(x, k, metric, mesh) -> (indices [N, k], ...)`` as ``config.knn_search`` picks it:
    ``exact`` (`vl_jax.cluster.knn`) or ``ivf`` (`vl_jax.cluster.knn_ivf`, approximate, for
    large N; ``nlist`` / ``nprobe`` 0 = its default rules)."""
    from vl_jax.cluster import knn, knn_ivf

    ks = config.get("knn_search", None)
    kind = "exact" if ks is None else str(ks.kind)
    if kind == "exact":
        return knn
    if kind != "ivf":
        raise ConfigError(f"config.knn_search.kind must be exact or ivf, got {kind!r}")
    nlist, nprobe = int(ks.get("nlist", 0)), int(ks.get("nprobe", 0))
    if nlist < 0 or nprobe < 0:
        raise ConfigError(
            f"config.knn_search: nlist and nprobe must be >= 0, got {nlist}, {nprobe}"
        )
    return functools.partial(knn_ivf, nlist=nlist or None, nprobe=nprobe or None)


def prepare_inputs(config, train_u, eval_u, nouns: np.ndarray, mesh) -> PreparedInputs:
    """The :class:`PreparedInputs` of a trained method, computed once for all seeds (without
    the prompt text path: :func:`prompt_text` adds it)."""
    method = methods.get_method(config.train.method)
    knn = neighbour_search(config)
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
    knn_img = knn(u, int(config.knn), metric, mesh=mesh)[0]
    if config.get("knn_self", False):  # SIC's code: the sample itself is one of its k + 1
        knn_img = np.concatenate([np.arange(len(u), dtype=knn_img.dtype)[:, None], knn_img], 1)
    return PreparedInputs(
        u=u, t=t, ue=ue, te=te,
        knn_img=knn_img,
        knn_txt=knn(t, int(config.knn), "cosine", mesh=mesh)[0] if method.text_knn else None,
    )  # fmt: skip


def prompt_text(config, clip: ClipCheckpoint, nouns: Nouns, mesh) -> PromptText | None:
    """MCLA's prompt-learning text path over the semantic space's nouns (``train.prompt``), or
    None (other methods, or ``train.prompt.enabled`` false)."""
    from mcla_jax import wordnet
    from mcla_jax.prompts import PromptText, prompt_tokens

    if config.train.method != "mcla" or not config.train.prompt.enabled:
        return None
    lemmas = wordnet.load().lemmas
    words = [str(lemmas[i]) for i in nouns.space.indices]
    try:
        tokens = prompt_tokens(clip.tokenizer, words, clip.config.text.context_length,
                               str(config.train.prompt.init))  # fmt: skip
    except ValueError as e:
        raise ConfigError(f"config.train.prompt.init: {e}") from None
    return PromptText(clip.model.text, tokens, mesh, float(config.train.tau.text))


def _kmeans_centres(cfg, inputs: PreparedInputs, n_init: int, seed: int, mesh, sic: bool):
    """``(image [K, E], text [K, E] | None)``: k-means centres of ``u`` and the mean text
    counterpart of each cluster, to start the linear heads from (``train.init = "kmeans"``)."""
    from vl_jax.cluster import kmeans

    k = int(cfg.num_clusters)
    c_img, assign, _ = kmeans(inputs.u, k, n_init=n_init, seed=seed, mesh=mesh)
    assign = np.asarray(assign)
    t = inputs.t
    c_txt = np.stack([t[assign == j].mean(0) if np.any(assign == j) else np.zeros(t.shape[1])
                      for j in range(k)])  # fmt: skip
    return np.asarray(c_img), None if sic else c_txt


def fit_trained(config, workdir, seed, inputs: PreparedInputs, nouns, mesh, writer,
                labels=None) -> np.ndarray:  # fmt: skip
    """One seed of a trained method with per-epoch checkpoints (a rerun continues from the last
    one; checkpoints of other settings are refused); returns the evaluation clusters ``[M]``.

    ``labels`` (evaluation split, only with ``config.report_label_selected``): each epoch's
    evaluation metrics go to ``seed_<s>/eval_per_epoch.json`` for the label-selected figure
    (``label_selected``); they select nothing here -- the last epoch is still returned."""
    cfg = ml_collections.ConfigDict(config.train.to_dict())
    cfg.seed = seed
    method = methods.get_method(cfg.method)
    aux = {"nouns": nouns} if method.name == "sic" else None
    if cfg.init not in ("random", "kmeans"):
        raise ConfigError(f"config.train.init must be 'random' or 'kmeans', got {cfg.init!r}")
    centres = None
    if cfg.init == "kmeans":
        centres = _kmeans_centres(cfg, inputs, int(config.kmeans_n_init), seed, mesh,
                                  sic=method.name == "sic")  # fmt: skip
    run = train_lib.Trainer(inputs.u, inputs.t, inputs.knn_img, cfg, mesh, knn_txt=inputs.knn_txt,
                            aux=aux, centres=centres, text=inputs.text, raw=inputs.raw)  # fmt: skip
    u = inputs.u
    meta = wd.fingerprint(config=cfg.to_json(sort_keys=True), n=len(u),
                          features=float(np.sum(u[:64])))  # fmt: skip
    with TrainCheckpoints(os.path.join(workdir, f"seed_{seed}", "checkpoints"), meta=meta) as ck:
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
            if labels is not None:  # after the checkpoint: a rerun recomputes a lost epoch
                _record_eval_epoch(workdir, seed, run.epochs_done, labels,
                                   run.predict(inputs.ue, inputs.te))  # fmt: skip
    return run.predict(inputs.ue, inputs.te)


def _eval_epochs(workdir: str, seed: int) -> dict:
    path = os.path.join(workdir, f"seed_{seed}", "eval_per_epoch.json")
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _record_eval_epoch(workdir: str, seed: int, epoch: int, labels, pred) -> None:
    """Adds epoch ``epoch``'s evaluation metrics to ``seed_<s>/eval_per_epoch.json`` (writer)."""
    if not wd.is_writer():
        return
    done = {e: m for e, m in _eval_epochs(workdir, seed).items() if int(e) < epoch}
    done[str(epoch)] = clustering_metrics(labels, pred)
    runlog.write_json(os.path.join(workdir, f"seed_{seed}", "eval_per_epoch.json"), done)


def label_selected(per_epoch: dict, patience: int = 5) -> dict:
    """SIC's selection rule on ``{epoch: {"acc", "nmi", "ari"}}`` (epochs from 1): keep the
    epoch of best evaluation ACC, stop after ``patience`` epochs without improvement. It selects
    with *evaluation labels*: for quoting "as published" only, never as a result."""
    best, stale = None, 0
    for e in sorted(per_epoch, key=int):
        if best is None or per_epoch[e]["acc"] > best["acc"]:
            best, stale = {"epoch": int(e), **per_epoch[e]}, 0
        else:
            stale += 1
            if stale >= patience:
                break
    return best or {}


def cluster_one_seed(config, workdir, seed, clip, train: Features, evals: Features, nouns,
                     inputs, mesh, writer) -> np.ndarray:  # fmt: skip
    """The evaluation split's clusters ``[M]`` of ``config.method`` for one seed."""
    method, k = config.method, int(config.train.num_clusters)
    if method in TRAINED:
        labels = evals.labels if config.get("report_label_selected", False) else None
        return fit_trained(config, workdir, seed, inputs, nouns.embeddings, mesh, writer, labels)
    if method == "tac_notrain":
        return baselines.tac_notrain(train.features, evals.features, nouns.embeddings, k, seed,
                                     config.train.tau.text, mesh,
                                     transductive=bool(config.get("transductive", False)),
                                     n_init=int(config.kmeans_n_init))  # fmt: skip
    if method == "kmeans":
        return baselines.kmeans_baseline(train.features, evals.features, k, seed,
                                         int(config.kmeans_n_init), mesh)  # fmt: skip
    return baselines.zeroshot(clip, evals.features, evals.class_names, config.space.prompts,
                              mesh=mesh)  # fmt: skip


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs the clustering experiment ``config`` (schema: docs/mcla.md, built by
    configs/mcla/*.py) into ``workdir``; returns the contents of ``metrics.json``."""
    t0 = time.perf_counter()
    if config.method == "ablation":  # configs/mcla/ablation.py: several experiments, one table
        from mcla_jax import ablation

        return ablation.run(config, workdir)
    if config.method not in ALL_METHODS:
        raise ConfigError(f"config.method must be one of {ALL_METHODS}, got {config.method!r}")
    wd.makedirs(workdir)
    mesh = parallel.mesh_from_config(config.mesh)
    clip = clip_checkpoint(config, workdir, mesh)
    train = load_features(config, workdir, config.data.train_split, clip, mesh)
    same = config.data.protocol == "train_eq_eval"
    evals = train if same else load_features(config, workdir, config.data.eval_split, clip, mesh)
    seeds = [int(s) for s in str(config.seeds).split(",") if s.strip()]
    method, k = config.method, int(config.train.num_clusters)

    nouns = inputs = None
    if method in (*TRAINED, "tac_notrain"):
        nouns = noun_space(config, workdir, clip, train.features, mesh)
    if method in TRAINED:
        inputs = prepare_inputs(config, train.features, evals.features, nouns.embeddings, mesh)
        inputs.text = prompt_text(config, clip, nouns, mesh)
        inputs.raw = train.features if inputs.text is not None else None
    per_seed, assign = [], {}
    with runlog.MetricWriter(workdir) as writer:
        for seed in seeds:
            pred = cluster_one_seed(config, workdir, seed, clip, train, evals, nouns, inputs,
                                    mesh, writer)  # fmt: skip
            assign[seed] = pred
            per_seed.append({"seed": seed, **clustering_metrics(evals.labels, pred)})
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
        "n_train": len(train.labels),
        "n_eval": len(evals.labels),
        "num_clusters": k,
        "clip": config.model.clip if not config.model.tiny else "tiny random CLIP (runlocal)",
        "semantic_space_size": None if nouns is None else len(nouns.space),
        "selection": "last epoch; labels are used only for these metrics",
        "per_seed": per_seed,
        "mean": {m: float(np.mean([r[m] for r in per_seed])) for m in ("acc", "nmi", "ari")},
        "std": {m: float(np.std([r[m] for r in per_seed])) for m in ("acc", "nmi", "ari")},
        "seconds": time.perf_counter() - t0,
    }
    if method in TRAINED and config.get("report_label_selected", False) and wd.is_writer():
        picked = [{"seed": s, **label_selected(_eval_epochs(workdir, s))} for s in seeds]
        summary["as_published_label_selected"] = {
            "note": "NOT a result of this method: the epoch of best evaluation-split ACC, stopping "
            "after 5 epochs without improvement, as SIC's code selects (it reads the evaluation "
            "labels). Quoted only to compare with published numbers; nothing here used it.",
            "per_seed": picked,
            "mean": {m: float(np.mean([r.get(m, np.nan) for r in picked]))
                     for m in ("acc", "nmi", "ari")},
        }  # fmt: skip
    if wd.is_writer():
        _write_outputs(workdir, evals, assign[seeds[0]])
        _write_clusters(config, workdir, evals, assign[seeds[0]], nouns, summary["splits"]["eval"])
    runlog.write_json(os.path.join(workdir, "metrics.json"), summary)
    m, s = summary["mean"], summary["std"]
    print(
        f"{method} on {config.data.name} ({len(seeds)} seed(s)): ACC {m['acc']:.4f}+-{s['acc']:.4f} "
        f"NMI {m['nmi']:.4f}+-{s['nmi']:.4f} ARI {m['ari']:.4f}+-{s['ari']:.4f}; outputs in {workdir}",
        file=sys.stderr,
    )
    return summary


def _write_outputs(workdir: str, evals: Features, pred: np.ndarray) -> None:
    """``assignments.csv`` (id, cluster, label, class) and ``confusion.png`` (classes x
    clusters, clusters ordered by their Hungarian-matched class) of the first seed."""
    labels, class_names = evals.labels, evals.class_names
    with atomic_open(os.path.join(workdir, "assignments.csv"), "w", encoding="utf-8") as f:
        f.write("id,cluster,label,class\n")
        for i, c, y in zip(evals.ids, pred, labels):
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


def _write_clusters(config, workdir: str, evals: Features, pred, nouns, split: str) -> None:
    """``clusters.json`` and ``clusters.html`` (`mcla_jax.report_html`) of the first seed."""
    from vl_jax.encode import split_data_name

    names = report_html.read_space_names(workdir) if nouns is not None else None
    if names is not None and len(names) != len(nouns.embeddings):
        names = None  # a semantic_space.tsv of another run: list no nouns rather than wrong ones
    clusters = report_html.summarise(
        evals.features, pred, evals.ids, evals.labels, evals.class_names,
        noun_embeddings=None if names is None else nouns.embeddings, noun_names=names,
    )  # fmt: skip
    name, split = split_data_name(data_name(config, split))
    data = {"name": name, "split": split, "data_dir": config.data.data_dir,
            "manual_dir": config.data.manual_dir}  # fmt: skip
    report_html.write(workdir, clusters, data, f"{config.method} on {config.data.name}")


def _csv(s: str) -> str:
    return '"' + s.replace('"', '""') + '"' if any(ch in s for ch in ',"\n') else s
