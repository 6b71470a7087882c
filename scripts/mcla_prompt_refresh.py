"""Cost and effect of MCLA's prompt-learning refresh schedule and semantic start epoch.

    python scripts/mcla_prompt_refresh.py --config configs/mcla/ablation.py:demo_colors \
        --workdir runs/abl_colors --out runs/refresh_colors.json

Reuses the features an ablation run wrote (``WORKDIR/features``) and trains the ablation's
``mcla`` arm (seed 0) once per variant: ``train.prompt.nouns_per_step`` (0 = every noun at every
step; otherwise that many nouns re-embedded with gradient per step, every noun once per epoch)
and ``train.semantic_warmup_epochs``. Per variant: median wall seconds per epoch (after the
first, compiling, epoch) and the train split's silhouette (cosine, on the prepared image
features) of the final clustering -- the label-free criterion the choice is made by. The
evaluation split's ACC is printed for the record only; nothing is chosen with it.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import time

import ml_collections
import numpy as np
from sklearn.metrics import silhouette_score

from mcla_jax import experiment
from mcla_jax import train as train_lib
from vl_jax import parallel
from vl_jax.fileio import atomic_open
from vl_jax.metrics import clustering_metrics


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True, help="configs/mcla/ablation.py:<dataset>")
    ap.add_argument("--workdir", required=True, help="the ablation's workdir (features reused)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--per_step", default="0,16,4")
    ap.add_argument("--semantic", default="1,5")
    a = ap.parse_args()
    path, arg = a.config.split(":")
    module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
    config = ml_collections.ConfigDict(module.get_config(arg).arms.mcla.to_dict())
    mesh = parallel.mesh_from_config(config.mesh)
    work = os.path.join(a.workdir, "mcla")
    os.makedirs(work, exist_ok=True)  # the features folder is named relative to it
    clip = experiment.clip_checkpoint(config, work, mesh)
    train = experiment.load_features(config, work, config.data.train_split, clip, mesh)
    evals = experiment.load_features(config, work, config.data.eval_split, clip, mesh)
    nouns = experiment.noun_space(config, work, clip, train.features, mesh)
    inputs = experiment.prepare_inputs(config, train.features, evals.features, nouns.embeddings,
                                       mesh)  # fmt: skip
    inputs.text, inputs.raw = experiment.prompt_text(config, clip, nouns, mesh), train.features
    rows = []
    variants = [(int(p), int(config.train.semantic_warmup_epochs)) for p in a.per_step.split(",")]
    variants += [(int(config.train.prompt.nouns_per_step), int(s)) for s in a.semantic.split(",")]
    for per, sem in dict.fromkeys(variants):
        cfg = ml_collections.ConfigDict(config.train.to_dict())
        cfg.prompt.nouns_per_step, cfg.semantic_warmup_epochs = per, sem
        centres = None
        if cfg.init == "kmeans":
            centres = experiment._kmeans_centres(cfg, inputs, int(config.kmeans_n_init), 0, mesh,
                                                 sic=False)  # fmt: skip
        run = train_lib.Trainer(inputs.u, inputs.t, inputs.knn_img, cfg, mesh, centres=centres,
                                text=inputs.text, raw=inputs.raw)  # fmt: skip
        times = []
        for _ in range(int(cfg.epochs)):
            t0 = time.perf_counter()
            run.epoch()
            times.append(time.perf_counter() - t0)
        sil = float(silhouette_score(inputs.u, run.assign, metric="cosine"))
        acc = clustering_metrics(evals.labels, run.predict(inputs.ue))["acc"]
        rows.append(dict(nouns_per_step=per, semantic_warmup_epochs=sem,
                         seconds_per_epoch=float(np.median(times[1:])), train_silhouette=sil,
                         eval_acc_report_only=acc, nouns=inputs.text.num_nouns))  # fmt: skip
        print(json.dumps(rows[-1]), flush=True)
    with atomic_open(a.out, "w", encoding="utf-8") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
