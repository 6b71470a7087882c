"""Entry point: `python main.py --config configs/<experiment>.py --workdir DIR [--config.x=...]`.

The config's `job` names the library function that runs it; multi-host runs pass the
`jax.distributed` flags, or --distributed_auto on a TPU pod / SLURM cluster.
"""

import importlib
import logging
import os

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from vl_jax import parallel

# job name -> "module:function(config, workdir)"; imported lazily so a job pulls only its deps.
JOBS = {
    "smoke": "vl_jax.smoke:run",
    "train_clip": "vl_jax.train.clip:run",
    "train_vlm": "vl_jax.train.vlm:run",
    "mcla": "mcla_jax.experiment:run",
    "vdc": "vdc_jax.cleanse:run",
}

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "experiment config file", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "output directory (created)")
_COORD = flags.DEFINE_string("coordinator_address", None, "multi-host: host:port of process 0")
_NPROC = flags.DEFINE_integer("num_processes", None, "multi-host: number of processes")
_PID = flags.DEFINE_integer("process_id", None, "multi-host: this process's index")
_AUTO = flags.DEFINE_bool(
    "distributed_auto", False, "multi-host: let JAX detect the cluster (TPU pod, SLURM)"
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    # JAX logs at INFO that it found no TPU on every non-TPU machine; that is not news.
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax / TFDS log every save and read at INFO
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    parallel.initialize_distributed(_COORD.value, _NPROC.value, _PID.value, auto=_AUTO.value)
    config = _CONFIG.value
    # A "suite" config runs its parts in order, each job into its own sub-folder of the workdir.
    parts = list(config.parts.items()) if config.job == "suite" else [("", config)]
    for _, part in parts:
        if part.job not in JOBS:
            raise app.UsageError(f"unknown job '{part.job}' in config; known: {sorted(JOBS)}")
    done = []
    for name, part in parts:
        module, fn = JOBS[part.job].split(":")
        workdir = os.path.join(_WORKDIR.value, name) if name else _WORKDIR.value
        getattr(importlib.import_module(module), fn)(part, workdir)
        done.append(workdir)
    if len(done) > 1:
        print("\noutputs (metrics.json, plots, per-sample files) in:", *done, sep="\n  ")


if __name__ == "__main__":
    app.run(main)
