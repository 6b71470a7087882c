"""Run the benchmarks, one JSON line per figure on stdout (logs on stderr).

    python -m benchmarks.run [--quick] [--only NAME]

`--quick` runs every benchmark at reduced size (the whole suite in under 5 minutes on 2 CPU
cores); `--only NAME` runs one (an unknown name exits with status 2).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import sys
import time

MODULES = (
    "benchmarks.ann",
    "benchmarks.clip_encode",
    "benchmarks.input_pipeline",
    "benchmarks.knn",
    "benchmarks.kmeans",
    "benchmarks.mcla_epoch",
    "benchmarks.scale",
    "benchmarks.vqa_generate",
    "benchmarks.vdc_pipeline",
    "benchmarks.vdc_stream",
    "benchmarks.vdc_prescreen",
)


def load() -> dict:
    from benchmarks.common import REGISTRY

    for m in MODULES:
        importlib.import_module(m)
    return REGISTRY


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.run", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--quick", action="store_true", help="reduced sizes; whole suite < 5 min")
    ap.add_argument("--only", metavar="NAME", help="run only this benchmark")
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s"
    )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # benchmarks build their models locally

    registry = load()
    if args.only is not None and args.only not in registry:
        print(
            f"unknown benchmark '{args.only}'; known: {', '.join(sorted(registry))}",
            file=sys.stderr,
        )
        return 2
    names = [args.only] if args.only else list(registry)
    log = logging.getLogger("benchmarks")
    t_all = time.perf_counter()
    for name in names:
        t0 = time.perf_counter()
        log.info("running %s (quick=%s)", name, args.quick)
        for fig in registry[name](args.quick):
            print(json.dumps(fig), flush=True)
        log.info("%s done in %.1f s", name, time.perf_counter() - t0)
    log.info("all done in %.1f s", time.perf_counter() - t_all)
    return 0


if __name__ == "__main__":
    sys.exit(main())
