"""VDC command line: `python -m vdc_jax.main --config configs/vdc/<name>.py[:arg] --workdir DIR`.

    python -m vdc_jax.main --config configs/vdc/runlocal.py --workdir runs/vdc_local
    python -m vdc_jax.main --config configs/vdc/imagenet_dog.py:blended --workdir runs/dog_blended \
        --config.data.manual_dir /data/ILSVRC2012 --config.judge.kind none

Rerunning the same command resumes (see vdc_jax.cleanse). Overrides go through
`--config.a.b=value` (the config is locked: a mistyped key fails). Multi-host: the same
`jax.distributed` flags as the top-level main.py. Problems with the input (a dataset not
prepared, a bad CSV row, an unreadable image, a workdir made with other settings, a bad
questions file) end with one `error: ...` line and exit status 1, not a traceback.
"""

import logging
import sys

from absl import app, flags
from ml_collections import config_flags

from vl_jax import parallel

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "VDC config file (configs/vdc/*.py[:arg])", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "output directory (created; resumed if present)")
_COORD = flags.DEFINE_string("coordinator_address", None, "multi-host: host:port of process 0")
_NPROC = flags.DEFINE_integer("num_processes", None, "multi-host: number of processes")
_PID = flags.DEFINE_integer("process_id", None, "multi-host: this process's index")
_AUTO = flags.DEFINE_bool(
    "distributed_auto", False, "multi-host: let JAX detect the cluster (TPU pod, SLURM)"
)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    parallel.initialize_distributed(_COORD.value, _NPROC.value, _PID.value, auto=_AUTO.value)
    # Imported after initialize_distributed: nothing may touch the JAX backend before it.
    from vdc_jax.cleanse import IncompatibleWorkdirError, run
    from vdc_jax.inputs import DataError
    from vdc_jax.questions import QuestionsFileError
    from vl_jax.data.sources import DatasetNotPreparedError
    from vl_jax.images import ImageError

    try:
        run(_CONFIG.value, _WORKDIR.value)
    except DatasetNotPreparedError as e:
        print(f"error: dataset not prepared: {e}", file=sys.stderr)
        sys.exit(1)
    except (IncompatibleWorkdirError, DataError, QuestionsFileError, ImageError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except FileNotFoundError as e:  # e.g. ILSVRC files missing from manual_dir, no checkpoint
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
