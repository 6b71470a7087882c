"""Our numbers beside the papers': every method x dataset (x attack) whose data and weights are here.

    python -m benchmarks.paper_tables --out runs/paper_tables                 # 3 seeds
    python -m benchmarks.paper_tables --out /tmp/pt --quick                   # a small slice
    python -m benchmarks.paper_tables --out DIR --data_dir /data/tfds --seeds 0,1,2,3,4
    python -m benchmarks.paper_tables --out DIR --render_only                 # tables anew

Writes ``DIR/paper_tables.md`` (the tables) and ``DIR/paper_tables.json`` (every cell: per-seed
values, seconds, the foreign CPU load while it ran), each run's workdir under ``DIR/runs/``.

Cells:

- **Clustering** (ACC / NMI / ARI, %): CLIP k-means, SIC, TAC and MCLA on the five benchmarks of
  the papers (ImageNet-Dogs, ImageNet-10, CIFAR-10, CIFAR-20, STL-10; configs/mcla/<method>.py,
  CLIP ViT-B/32, train split -> evaluation split), and on the offline demo's easy-VQA shapes and
  colours with the shipped demo CLIP (configs/offline_demo.py ``mcla_part``). Seeds are the
  methods' seeds (``config.seeds``); mean +- std over them.
- **Cleansing** (VDC, TPR / FPR, %): ImageNet-Dog, CIFAR-10 and ImageNet-100 x the six attacks
  and the 0.4 noise settings of configs/vdc/ (InstructBLIP-Vicuna-7B, official protocol), and
  the offline demo's BadNets / Blended sets (easy-VQA test, 30 poisons per non-target class +
  20 % symmetric label noise, the demo VLM). Seeds are ``corrupt.seed`` (which samples are
  altered). TPR is that kind's detected share, FPR the flagged share of clean samples.

A cell whose data is not prepared or whose weights are not on this machine is listed as
``missing: <what>``, never an error: datasets are checked with ``get_source(prepare=False)``
and hub checkpoints in the local Hugging Face cache only (nothing is downloaded). Published
numbers come from ``benchmarks/published.csv`` (its ``source`` column names the paper and
table). Nothing here picks a setting by looking at a result: the configs are the shipped ones.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import json
import logging
import os
import sys
import time

import numpy as np

from benchmarks.common import ForeignLoad, cpu_model

log = logging.getLogger("paper_tables")

HERE = os.path.dirname(os.path.abspath(__file__))
PUBLISHED = os.path.join(HERE, "published.csv")
PAPER_CLUSTERING = ("imagenet_dogs", "imagenet10", "cifar10", "cifar20", "stl10")
DEMO_CLUSTERING = ("easy_vqa_shapes", "easy_vqa_colors")
CLUSTER_METHODS = ("kmeans", "sic", "tac", "mcla")
ATTACKS = ("badnets", "blended", "sig", "trojannn", "ssba", "wanet")
VDC_PAPER = {"imagenet_dog": "imagenet_dog.py", "cifar10": "cifar10.py",
             "imagenet100": "imagenet100.py"}  # fmt: skip
DEMO_ATTACKS = ("badnets", "blended")


@dataclasses.dataclass
class Cell:
    """One row of a table: what runs (``config``) or why it cannot (``missing``), and after
    running, ``values`` = ``{metric: [per-seed value in %]}``."""

    task: str  # clustering | vdc
    method: str
    dataset: str
    setting: str  # "" for clustering; the attack / noise setting for VDC
    config: object = None
    missing: str = ""
    values: dict = dataclasses.field(default_factory=dict)
    seconds: float = 0.0
    foreign_cpu_cores: float | None = None

    @property
    def key(self) -> tuple[str, str, str, str]:
        return self.task, self.method, self.dataset, self.setting


# ----------------------------------------------------------------------------- what is here
def missing_data(name: str, splits, data_dir: str | None) -> str:
    """Empty when every split of dataset ``name`` is prepared, else what is missing."""
    from vl_jax.data import get_source
    from vl_jax.errors import UserError

    for split in splits:
        try:
            get_source(name, split, data_dir=data_dir, prepare=False)
        except (UserError, ValueError, FileNotFoundError):
            return f"data: {name} ({split}) is not prepared (docs/data.md)"
    return ""


def missing_weights(model: str) -> str:
    """Empty when ``model`` is a local directory or a hub id in the local cache, else what is
    missing."""
    if os.path.isdir(os.path.expanduser(model)):
        return ""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(model, "config.json")
    return "" if isinstance(found, str) else f"weights: {model} is not in the local HF cache"


def _why(*reasons: str) -> str:
    return "; ".join(r for r in reasons if r)


# ----------------------------------------------------------------------------------- cells
def clustering_cells(seeds: list[int], quick: bool, data_dir: str | None, out: str):
    import configs.mcla as mcla_configs
    from configs.mcla.common import DATASETS
    from configs.offline_demo import mcla_part

    cells = []
    for dataset in PAPER_CLUSTERING:
        source, train, evals, _ = DATASETS[dataset]
        for method in CLUSTER_METHODS:
            c = mcla_configs.get(method, dataset)
            why = _why(
                missing_data(source, (train, evals), data_dir), missing_weights(c.model.clip)
            )
            cells.append(Cell("clustering", method, dataset, "", None if why else c, why))
    for dataset in DEMO_CLUSTERING[:1] if quick else DEMO_CLUSTERING:
        features = os.path.join(out, "runs", f"features_{dataset}")
        for method in ("kmeans", "mcla") if quick else CLUSTER_METHODS:
            c = mcla_part(method, dataset, features)
            if quick:  # a slice: 200 images per split, 2 epochs
                c.data.limit, c.train.epochs = 200, 2
                c.train.semantic_warmup_epochs = c.train.warmup_epochs = 1
            cells.append(Cell("clustering", method, dataset, "", c))
    for cell in cells:
        if cell.config is not None:
            cell.config.seeds = ",".join(map(str, seeds))
            cell.config.data.data_dir = data_dir or ""
    return cells


def vdc_cells(quick: bool, data_dir: str | None):
    import runpy

    from configs.offline_demo import get_config as demo_config
    from configs.vdc.common import DATASETS

    cells = []
    for dataset, file in VDC_PAPER.items():
        get = runpy.run_path(os.path.join(HERE, "..", "configs", "vdc", file))["get_config"]
        c0 = get(ATTACKS[0])
        name, split, _ = DATASETS[dataset]
        why = _why(missing_data(name, (split,), data_dir), missing_weights(c0.model.name))
        for attack in ATTACKS:
            cells.append(Cell("vdc", "vdc", dataset, attack, None if why else get(attack), why))
    noise = runpy.run_path(os.path.join(HERE, "..", "configs", "vdc", "noise.py"))["get_config"]
    for dataset in ("cifar10", "imagenet100"):
        name, split, _ = DATASETS[dataset]
        for kind in ("sym", "asym"):
            c = noise(f"{dataset},{kind}")
            why = _why(missing_data(name, (split,), data_dir), missing_weights(c.model.name))
            cells.append(Cell("vdc", "vdc", dataset, f"noise {kind} 0.4", None if why else c, why))
    for attack in DEMO_ATTACKS[:1] if quick else DEMO_ATTACKS:
        c = demo_config().parts[f"vdc_{attack}"]
        if quick:  # a slice: 96 test images, 4 poisons per non-target class
            c.data.split, c.corrupt.poison_per_class = "test[:96]", 4
        cells.append(Cell("vdc", "vdc", "easy_vqa_shapes", f"{attack} + sym noise 0.2", c))
    for cell in cells:
        if cell.config is not None:
            cell.config.data.data_dir = data_dir or ""
    return cells


# ------------------------------------------------------------------------------------ runs
def run_clustering(cell: Cell, workdir: str) -> None:
    from mcla_jax import experiment

    summary = experiment.run(cell.config, workdir)
    cell.values = {m: [100 * r[m] for r in summary["per_seed"]] for m in ("acc", "nmi", "ari")}


def run_vdc(cell: Cell, workdir: str, seeds: list[int]) -> None:
    """One run per seed (``corrupt.seed``), the MLLM loaded once for all of them."""
    from vdc_jax import cleanse, models
    from vl_jax import parallel

    c = cell.config
    mllm = models.load_mllm(c.model, workdir, parallel.mesh_from_config(c.mesh.to_dict()))
    attack = c.corrupt.attack or f"noise_{c.corrupt.noise}"
    tpr, fpr, noise_tpr = [], [], []
    for seed in seeds:
        c.corrupt.seed = seed
        m = cleanse.clean(c, os.path.join(workdir, f"seed{seed}"), mllm=mllm)[0]
        tpr.append(100 * m["per_kind"][attack]["tpr"])
        fpr.append(100 * m["per_kind"][attack]["fpr"])  # clean samples flagged (every kind's)
        if c.corrupt.attack and c.corrupt.noise:
            noise_tpr.append(100 * m["per_kind"][f"noise_{c.corrupt.noise}"]["tpr"])
    cell.values = {"tpr": tpr, "fpr": fpr}
    if noise_tpr:
        cell.values["noise_tpr"] = noise_tpr


def run_cells(cells: list[Cell], seeds: list[int], out: str) -> None:
    for cell in cells:
        if cell.config is None:
            log.info("%s %s %s %s: missing (%s)", *cell.key, cell.missing)
            continue
        workdir = os.path.join(out, "runs", "_".join(p for p in cell.key if p).replace(" ", "_"))
        t0 = time.perf_counter()
        with ForeignLoad() as load:
            if cell.task == "clustering":
                run_clustering(cell, workdir)
            else:
                run_vdc(cell, workdir, seeds)
        cell.seconds, cell.foreign_cpu_cores = time.perf_counter() - t0, load.cores
        shown = ", ".join(f"{k} {_mean_std(v)}" for k, v in cell.values.items())
        print(f"paper_tables: {' '.join(p for p in cell.key[1:] if p)}: {shown} "
              f"({cell.seconds:.0f} s)", file=sys.stderr, flush=True)  # fmt: skip


# ---------------------------------------------------------------------------------- tables
def read_published(path: str = PUBLISHED) -> dict:
    """``{(task, method, dataset, setting): {metric: (value, source)}}``."""
    out: dict = {}
    with open(path, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            key = (r["task"], r["method"], r["dataset"], r["setting"])
            out.setdefault(key, {})[r["metric"]] = (float(r["value"]), r["source"])
    return out


def _mean_std(values) -> str:
    if not values:
        return "-"
    return f"{np.mean(values):.2f} ± {np.std(values):.2f}"


def _ours(cell: Cell | None, metric: str) -> str:
    if cell is None:
        return "-"
    if cell.missing:
        return f"missing: {cell.missing}"
    return _mean_std(cell.values.get(metric, []))


def _with_averages(cells: list[Cell]) -> list[Cell]:
    """``poison avg`` cells of each VDC dataset: the mean over its six attacks (as published),
    missing unless all six ran."""
    out = list(cells)
    for dataset in VDC_PAPER:
        per_attack = [c for c in cells if c.key[2:] in ((dataset, a) for a in ATTACKS)]
        gone = [c for c in per_attack if c.missing or not c.values]
        avg = Cell("vdc", "vdc", dataset, "poison avg")
        if gone or len(per_attack) != len(ATTACKS):
            avg.missing = gone[0].missing if gone else "the six attacks"
        else:
            avg.values = {m: list(np.mean([c.values[m] for c in per_attack], axis=0))
                          for m in ("tpr", "fpr")}  # fmt: skip
        out.append(avg)
    return out


def render(cells: list[Cell], published: dict, header: dict) -> str:
    cells = _with_averages(cells)
    by_key = {c.key: c for c in cells}
    sources: dict[str, int] = {}

    def src(entry: dict) -> str:
        notes = sorted({sources.setdefault(s, len(sources) + 1) for _, s in entry.values()})
        return ",".join(f"[{n}]" for n in notes)

    def pub(entry: dict, metric: str) -> str:
        return f"{entry[metric][0]:.2f}" if metric in entry else "-"

    lines = [
        "# Paper tables: ours beside the published numbers",
        "",
        f"Generated {header['date']} by `python -m benchmarks.paper_tables{header['flags']}` "
        f"on {header['machine']}; seeds "
        f"{header['seeds']} (mean ± std over seeds, %). Foreign CPU load while each cell ran "
        "is in paper_tables.json (`foreign_cpu_cores`). `missing: ...` = data or weights not "
        "on this machine (never downloaded). The easy-VQA rows are the offline demo's data and "
        "small models (no published counterpart): they show each pipeline end to end.",
        "",
        "## Clustering (ACC / NMI / ARI, %)",
        "",
        "| method | dataset | ours ACC | ours NMI | ours ARI | paper ACC | paper NMI | paper ARI "
        "| source |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    keys = [c.key for c in cells if c.task == "clustering"]
    keys += [k for k in published if k[0] == "clustering" and k not in keys]
    for key in keys:
        cell, entry = by_key.get(key), published.get(key, {})
        if cell is not None and cell.missing:
            ours = [f"missing: {cell.missing}", "", ""]
        else:
            ours = [_ours(cell, m) for m in ("acc", "nmi", "ari")]
        row = [key[1], key[2], *ours, *(pub(entry, m) for m in ("acc", "nmi", "ari")), src(entry)]
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        "## Data cleansing: VDC (TPR / FPR, %)",
        "",
        "| dataset | setting | ours TPR | ours FPR | paper TPR | paper FPR | source |",
        "|---|---|---|---|---|---|---|",
    ]
    keys = [c.key for c in cells if c.task == "vdc"]
    keys += [k for k in published if k[0] == "vdc" and k not in keys]
    for key in keys:
        cell, entry = by_key.get(key), published.get(key, {})
        if cell is not None and cell.missing:
            ours = [f"missing: {cell.missing}", ""]
        else:
            ours = [_ours(cell, m) for m in ("tpr", "fpr")]
        row = [key[2], key[3], *ours, pub(entry, "tpr"), pub(entry, "fpr"), src(entry)]
        lines.append("| " + " | ".join(row) + " |")
    noise = [c for c in cells if c.values.get("noise_tpr")]
    if noise:
        lines += ["", "The demo sets' label noise (20 % symmetric), detected: " + "; ".join(
            f"{c.setting.split(' ')[0]} set {_mean_std(c.values['noise_tpr'])} % TPR"
            for c in noise) + "."]  # fmt: skip
    lines += ["", "Sources:", ""]
    lines += [f"{n}. {s}" for s, n in sorted(sources.items(), key=lambda kv: kv[1])]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------ main
def machine() -> str:
    import jax

    return (f"{cpu_model()}, {os.cpu_count()} cores ({jax.devices()[0].platform}), "
            f"jax {jax.__version__}")  # fmt: skip


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.paper_tables",
                                 description=__doc__.split("\n")[0])  # fmt: skip
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    ap.add_argument("--quick", action="store_true", help="one seed, a small slice of the demo")
    ap.add_argument("--data_dir", default=None, help="prepared TFDS datasets (default TFDS's)")
    ap.add_argument(
        "--only",
        default="",
        help="comma-separated words: run only the cells whose "
        "'method dataset setting' contains one (missing cells are still listed)",
    )
    ap.add_argument("--render_only", action="store_true", help="run nothing: rewrite "
                    "OUT/paper_tables.md from the values in OUT/paper_tables.json (e.g. after "
                    "published.csv changed), with availability checked now")  # fmt: skip
    a = ap.parse_args(argv)
    try:
        seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
    except ValueError:
        print(f"error: --seeds must be comma-separated integers, got {a.seeds!r}", file=sys.stderr)
        return 2
    if a.quick:
        seeds = seeds[:1]
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    from vl_jax.fileio import atomic_open

    os.makedirs(a.out, exist_ok=True)
    cells = clustering_cells(seeds, a.quick, a.data_dir, a.out) + vdc_cells(a.quick, a.data_dir)
    words = [w.strip() for w in a.only.split(",") if w.strip()]
    if words:
        cells = [c for c in cells if c.missing or any(w in " ".join(c.key[1:]) for w in words)]
    if a.render_only:
        return _render_only(cells, a.out)
    runnable = sum(c.config is not None for c in cells)
    print(f"paper_tables: {runnable} of {len(cells)} cells have their data and weights here",
          file=sys.stderr)  # fmt: skip
    with ForeignLoad() as load:
        run_cells(cells, seeds, a.out)
    header = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(), "seeds": ",".join(map(str, seeds)),
        "flags": (" --quick" if a.quick else "") + (f" --only {a.only}" if words else ""),
        "foreign_cpu_cores": load.cores,
    }  # fmt: skip
    text = render(cells, read_published(), header)
    with atomic_open(os.path.join(a.out, "paper_tables.md"), "w", encoding="utf-8") as f:
        f.write(text)
    record = {**header, "cells": [
        {"task": c.task, "method": c.method, "dataset": c.dataset, "setting": c.setting,
         "missing": c.missing, "values": c.values, "seconds": round(c.seconds, 1),
         "foreign_cpu_cores": c.foreign_cpu_cores} for c in cells]}  # fmt: skip
    with atomic_open(os.path.join(a.out, "paper_tables.json"), "w", encoding="utf-8") as f:
        json.dump(record, f, indent=1)
    print(f"paper_tables: wrote {os.path.join(a.out, 'paper_tables.md')}", file=sys.stderr)
    return 0


def _render_only(cells: list[Cell], out: str) -> int:
    """``--render_only``: the recorded run's values and header, tables rendered anew."""
    from vl_jax.fileio import atomic_open

    path = os.path.join(out, "paper_tables.json")
    if not os.path.isfile(path):
        print(f"error: --render_only needs {path} from an earlier run", file=sys.stderr)
        return 2
    with open(path, encoding="utf-8") as f:
        record = json.load(f)
    ran = {(r["task"], r["method"], r["dataset"], r["setting"]): r for r in record["cells"]}
    for cell in cells:
        r = ran.get(cell.key)
        if r is not None and r["values"]:
            cell.values, cell.seconds = r["values"], r["seconds"]
            cell.foreign_cpu_cores, cell.missing = r["foreign_cpu_cores"], ""
    text = render(cells, read_published(), record)
    with atomic_open(os.path.join(out, "paper_tables.md"), "w", encoding="utf-8") as f:
        f.write(text)
    print(f"paper_tables: re-rendered {os.path.join(out, 'paper_tables.md')}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    from vl_jax.errors import exit_on_user_error

    sys.exit(exit_on_user_error(main))
