"""Retrains the two demo models shipped in `vl_jax/assets/demo/` (fixed seeds), in HF format.

    python scripts/train_demo_models.py                       # both, ~30-45 min on 2 CPU cores
    python scripts/train_demo_models.py --only vlm            # the VLM on the shipped CLIP

1. CLIP (configs/demo/clip.py) trained contrastively on the easy-VQA shapes train split, with the
   BPE tokenizer trained on the captions/questions/answers -> `<out>/clip/`.
2. LLaVA-style VLM (configs/demo/vlm.py): that CLIP's vision tower (frozen), a projector and a small
   Llama decoder trained on the question/answer pairs + descriptions (2,000 steps), then continued
   for 1,000 steps with a new data order and a lower learning rate (`vlm.py:stage2`)
   -> `<out>/vlm/`.

Each directory gets config.json, model.safetensors, tokenizer files, preprocessor/processor
configs and eval.json (test-split accuracies, measured on the written directory through
`from_pretrained`). Training state goes to `--workdir` (a fresh temporary one by default, so a
rerun retrains from scratch; pass a directory to resume an interrupted run).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_BYTES = 10 * 1024 * 1024


def load_config(name: str, arg: str = ""):
    spec = importlib.util.spec_from_file_location(
        name, os.path.join(ROOT, "configs", "demo", f"{name}.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", default=os.path.join(ROOT, "vl_jax", "assets", "demo"))
    p.add_argument("--workdir", default=None, help="training state (default: a temporary dir)")
    p.add_argument("--only", choices=("clip", "vlm"), default=None)
    p.add_argument("--runlocal", action="store_true", help="tiny settings: checks the script only")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("absl").setLevel(logging.WARNING)
    sys.path.insert(0, ROOT)
    from vl_jax.train import clip as train_clip
    from vl_jax.train import vlm as train_vlm

    workdir = args.workdir or tempfile.mkdtemp(prefix="demo_models_")
    arg = "runlocal" if args.runlocal else ""
    results, seconds = {}, {}
    if args.only in (None, "clip"):
        cfg = load_config("clip", arg)
        cfg.export_dir = os.path.join(args.out, "clip")
        start = time.perf_counter()
        results["clip"] = train_clip.run(cfg, os.path.join(workdir, "clip"))
        seconds["clip"] = time.perf_counter() - start
    if args.only in (None, "vlm"):
        # Stage 1: fresh projector + decoder on the frozen CLIP tower; stage 2 continues it
        # with a new data order and a lower learning rate (configs/demo/vlm.py:stage2).
        start = time.perf_counter()
        cfg = load_config("vlm", arg)
        cfg.vision_init = os.path.join(args.out, "clip")
        cfg.export_dir = os.path.join(workdir, "vlm_stage1", "model")
        results["vlm_stage1"] = train_vlm.run(cfg, os.path.join(workdir, "vlm_stage1"))
        cfg = load_config("vlm", arg or "stage2")
        cfg.init_from = os.path.join(workdir, "vlm_stage1", "model")
        cfg.export_dir = os.path.join(args.out, "vlm")
        results["vlm"] = train_vlm.run(cfg, os.path.join(workdir, "vlm_stage2"))
        seconds["vlm"] = time.perf_counter() - start
    for name in ("clip", "vlm"):  # atomic writes create 0600 files; the assets are public
        folder = os.path.join(args.out, name)
        for f in os.listdir(folder) if os.path.isdir(folder) else ():
            os.chmod(os.path.join(folder, f), 0o644)
    total = dir_bytes(args.out)
    summary = {
        "out": args.out,
        "bytes": {name: dir_bytes(os.path.join(args.out, name)) for name in ("clip", "vlm")},
        "total_bytes": total,
        "wall_seconds": {k: round(v, 1) for k, v in seconds.items()},
        "workdir": workdir,
    }
    print(json.dumps(summary, indent=2))
    if total > MAX_BYTES:
        raise SystemExit(f"{args.out} holds {total} bytes, over the {MAX_BYTES} budget")
    return summary


if __name__ == "__main__":
    main()
