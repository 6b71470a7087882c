"""MCLA's ablation in one command: each arm a full clustering experiment, one table at the end.

    python -m mcla_jax.main --config configs/mcla/ablation.py:demo_shapes --workdir runs/abl

``configs/mcla/ablation.py`` builds ``config.arms`` (name -> a complete experiment config of
``mcla_jax.experiment``): heads only, + adapter, + prompts, full MCLA, SIC and TAC on one
dataset. Each arm runs into ``WORKDIR/<arm>/`` with every seed of ``config.seeds``; all arms
read one features folder (``WORKDIR/features``), so the images are encoded once. An arm whose
``metrics.json`` exists with the fingerprint of its config is not rerun (a killed ablation
continues with the arm it was in, which itself resumes from its last epoch checkpoint). The
summary, mean +- std of ACC / NMI / ARI over the seeds on the evaluation split (last epoch;
labels only score), is written atomically to ``ablation.md`` and ``ablation.json``.
"""

from __future__ import annotations

import os
import sys

import ml_collections

from vl_jax import runlog
from vl_jax import workdir as wd
from vl_jax.fileio import atomic_open
from vl_jax.models import tiny

METRICS = ("acc", "nmi", "ari")


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Runs every arm of ``config.arms`` (resumable per arm); returns the ``ablation.json``
    contents ``{"dataset", "seeds", "arms": {name: {"method", "mean", "std", "per_seed",
    "seconds"}}}``."""
    from mcla_jax import experiment

    wd.makedirs(workdir)
    tiny_clip = os.path.join(workdir, "tiny_clip")  # runlocal: one tiny CLIP for every arm
    arms = {}
    names = [n for n in str(config.get("order", "")).split(",") if n in config.arms]
    names += [n for n in config.arms if n not in names]
    for name in names:
        arm = ml_collections.ConfigDict(config.arms[name].to_dict())
        arm.seeds = str(config.seeds)
        if arm.model.tiny:  # so that the arms share the features (keyed by the CLIP's path)
            if wd.is_writer():
                tiny.write_clip(tiny_clip)
            wd.written("ablation: tiny CLIP written")
            arm.model.tiny, arm.model.clip = False, tiny_clip
        folder = os.path.join(workdir, name)
        stage = wd.Stage(os.path.join(folder, "metrics.json"), dict(config=arm))
        summary = stage.load(wd.read_json)
        if summary is None:
            print(f"ablation: arm {name}", file=sys.stderr)
            summary = experiment.run(arm, folder)
            if wd.is_writer():
                stage.record()
        arms[name] = {k: summary[k] for k in ("method", "mean", "std", "per_seed", "seconds")}
    out = {"dataset": str(config.dataset), "seeds": str(config.seeds), "arms": arms}
    if wd.is_writer():
        runlog.write_json(os.path.join(workdir, "ablation.json"), out)
        with atomic_open(os.path.join(workdir, "ablation.md"), "w", encoding="utf-8") as f:
            f.write(markdown(out))
    print(markdown(out), file=sys.stderr)
    return out


def markdown(result: dict) -> str:
    """The ablation table: one row per arm, ``mean ± std`` of each metric over the seeds."""
    seeds = len(str(result["seeds"]).split(","))
    lines = [
        f"Ablation on {result['dataset']} ({seeds} seeds, evaluation split, last epoch)",
        "",
        "| arm | method | ACC | NMI | ARI |",
        "|---|---|---|---|---|",
    ]
    for name, r in result["arms"].items():
        cells = [f"{r['mean'][m]:.3f} ± {r['std'][m]:.3f}" for m in METRICS]
        lines.append(f"| {name} | {r['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
