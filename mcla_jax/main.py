"""`python -m mcla_jax.main --config configs/mcla/<method>.py:<dataset>[,b16|l14] --workdir DIR`.

Methods: mcla, sic, tac, tac_notrain, kmeans, zeroshot (one config file each, in configs/mcla/);
datasets: imagenet_dogs, imagenet10, cifar10, cifar20, stl10 (or `runlocal`: a tiny random CLIP on
easy-VQA shapes, a minute on a CPU). Rerunning the same command resumes. See docs/mcla.md.
"""

import logging
import sys

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from vl_jax import parallel

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "output directory (created; reruns resume)")
_COORD = flags.DEFINE_string("coordinator_address", None, "multi-host: host:port of process 0")
_NPROC = flags.DEFINE_integer("num_processes", None, "multi-host: number of processes")
_PID = flags.DEFINE_integer("process_id", None, "multi-host: this process's index")
_AUTO = flags.DEFINE_bool("distributed_auto", False, "multi-host: let JAX detect the cluster")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    absl_logging.set_verbosity(absl_logging.WARNING)  # Orbax / TFDS log every save and read at INFO
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    parallel.initialize_distributed(_COORD.value, _NPROC.value, _PID.value, auto=_AUTO.value)
    from mcla_jax import experiment

    try:
        experiment.run(_CONFIG.value, _WORKDIR.value)
    except Exception as exc:
        message = experiment.fail_clearly(exc)
        if message is None:
            raise
        print(message, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    app.run(main)
