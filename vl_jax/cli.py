"""What every entry point shares: the --config / --workdir / multi-host flags and start-up.

    _CONFIG, _WORKDIR = cli.define_flags("VDC config file (configs/vdc/*.py[:arg])")

    def main(argv):
        cli.start(argv)          # quiet logs (quiet()), jax.distributed when asked
        cli.run(run, _CONFIG.value, _WORKDIR.value)   # a UserError: one line, exit 2

Used by main.py, `python -m mcla_jax.main` and `python -m vdc_jax.main`, so the three accept the
same flags: --coordinator_address / --num_processes / --process_id, or --distributed_auto on a
TPU pod or SLURM cluster.
"""

from __future__ import annotations

import logging
import os
import re

from absl import app, flags
from absl import logging as absl_logging
from ml_collections import config_flags

from vl_jax import errors, parallel

_COORD = _NPROC = _PID = _AUTO = None


def define_flags(config_help: str = "experiment config file"):
    """Defines --config (locked: a mistyped override fails) and --workdir (both required) and
    the multi-host flags; returns the (config, workdir) flag holders."""
    global _COORD, _NPROC, _PID, _AUTO
    config = config_flags.DEFINE_config_file("config", None, config_help, lock_config=True)
    workdir = flags.DEFINE_string("workdir", None, "output directory (created; a rerun resumes)")
    _COORD = flags.DEFINE_string("coordinator_address", None, "multi-host: host:port of process 0")
    _NPROC = flags.DEFINE_integer("num_processes", None, "multi-host: number of processes")
    _PID = flags.DEFINE_integer("process_id", None, "multi-host: this process's index")
    _AUTO = flags.DEFINE_bool(
        "distributed_auto", False, "multi-host: let JAX detect the cluster (TPU pod, SLURM)"
    )
    flags.mark_flags_as_required(["config", "workdir"])
    return config, workdir


def start(argv) -> None:
    """Rejects stray arguments, quiets INFO logs, initialises `jax.distributed` when asked.

    Call before anything touches the JAX backend."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    quiet()
    parallel.initialize_distributed(_COORD.value, _NPROC.value, _PID.value, auto=_AUTO.value)


def quiet() -> None:
    """Silences library noise that says nothing to a user of these commands; called by the
    entry points only (importing the libraries changes no global setting).

    - JAX logs at INFO that it found no TPU on every non-TPU machine; Orbax and TFDS log every
      save and read at INFO (absl verbosity WARNING keeps their warnings).
    - transformers warns at import that PyTorch was not found: we never use its PyTorch models
      (only tokenizers and configs), so the advice is wrong here. It is an "advisory" warning,
      which transformers' own switch turns off (set before transformers is first imported;
      the jobs import it lazily, after this).
    - TensorFlow's C++ start-up logs (when a dependency pulls TensorFlow in) below ERROR.
    - A warning that remains is one short line, "WARNING <logger>: <message>", without absl's
      date, thread id and source-file prefix.
    """
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    absl_logging.set_verbosity(absl_logging.WARNING)
    absl_logging.get_absl_handler().python_handler.setFormatter(
        logging.Formatter("%(levelname)s %(name)s: %(message)s")
    )


def run(fn, config, workdir: str):
    """``fn(config, workdir)`` under the one exit policy (``vl_jax.errors``): a user error is
    one ``error: ...`` line on stderr and exit status 2; a bug keeps its traceback."""
    return errors.exit_on_user_error(fn, config, workdir)


def parse_flags(argv: list[str]) -> list[str]:
    """``app.run(main, flags_parser=cli.parse_flags)``: absl's flag parsing under the one exit
    policy. A bad flag, a mistyped config override, or a config file whose ``get_config``
    rejects its argument (a ``ConfigError``) is one ``error: ...`` line and exit status 2
    instead of absl's multi-line report with the config file's traceback. Quiets the
    libraries first (`quiet`): parsing --config imports the config file."""
    quiet()
    try:
        return flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as exc:
        # ml_collections folds the config file's traceback into its message: its last line
        # is the exception that ended get_config, e.g. "vl_jax.errors.ConfigError: <what>".
        lines = [ln.strip() for ln in str(exc).replace("\\n", "\n").splitlines() if ln.strip()]
        last = lines[-1] if lines else type(exc).__name__
        own = re.match(r"^vl_jax\.errors\.\w+: (.*)$", last)
        errors.fail(own.group(1) if own else f"bad command line: {' '.join(lines) or last}")
