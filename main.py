"""Entry point: `python main.py --config configs/<experiment>.py --workdir DIR [--config.x=...]`.

The config's `job` names the library function that runs it; multi-host runs pass the
`jax.distributed` flags, or --distributed_auto on a TPU pod / SLURM cluster. A problem with the
input is one `error: ...` line on stderr and exit status 2, as for every entry point.
"""

import importlib
import os
import sys

from absl import app

from vl_jax import cli

# job name -> "module:function(config, workdir)"; imported lazily so a job pulls only its deps.
JOBS = {
    "smoke": "vl_jax.smoke:run",
    "train_clip": "vl_jax.train.clip:run",
    "train_vlm": "vl_jax.train.vlm:run",
    "mcla": "mcla_jax.experiment:run",
    "vdc": "vdc_jax.cleanse:run",
    "vdc_compare": "vdc_jax.compare:run",
}

_CONFIG, _WORKDIR = cli.define_flags("experiment config file")


def main(argv):
    cli.start(argv)
    config = _CONFIG.value
    # A "suite" config runs its parts in order, each job into its own sub-folder of the workdir.
    parts = list(config.parts.items()) if config.job == "suite" else [("", config)]
    for _, part in parts:
        if part.job not in JOBS:
            raise app.UsageError(f"unknown job '{part.job}' in config; known: {sorted(JOBS)}")
    done = []
    for k, (name, part) in enumerate(parts, 1):
        module, fn = JOBS[part.job].split(":")
        workdir = os.path.join(_WORKDIR.value, name) if name else _WORKDIR.value
        if len(parts) > 1:  # one line per part; each job prints its own stages and result
            print(f"[{k}/{len(parts)}] {name} ({part.job})", file=sys.stderr, flush=True)
        cli.run(getattr(importlib.import_module(module), fn), part, workdir)
        done.append(workdir)
    if len(done) > 1:
        print("\noutputs (metrics.json, plots, per-sample files) in:", *done, sep="\n  ")
        pages = [p for w in done for p in (os.path.join(w, "report.html"),
                                            os.path.join(w, "clusters.html")) if os.path.exists(p)]  # fmt: skip
        if pages:
            print("reports to open in a browser:", *pages, sep="\n  ")


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
