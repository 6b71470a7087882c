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

import sys

from absl import app

from vl_jax import cli

_CONFIG, _WORKDIR = cli.define_flags("VDC config file (configs/vdc/*.py[:arg])")


def main(argv):
    cli.start(argv)
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
