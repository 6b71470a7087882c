"""VDC command line: `python -m vdc_jax.main --config configs/vdc/<name>.py[:arg] --workdir DIR`.

    python -m vdc_jax.main --config configs/vdc/runlocal.py --workdir runs/vdc_local
    python -m vdc_jax.main --config configs/vdc/imagenet_dog.py:blended --workdir runs/dog_blended \
        --config.data.manual_dir /data/ILSVRC2012 --config.judge.kind none
    python -m vdc_jax.main --config configs/vdc/compare.py:badnets --workdir runs/compare_badnets

Rerunning the same command resumes (see vdc_jax.cleanse). Overrides go through
`--config.a.b=value` (the config is locked: a mistyped key fails). Multi-host: the same
`jax.distributed` flags as the top-level main.py. Problems with the input (a dataset not
prepared, a bad CSV row, a workdir made with other settings, a bad questions file, a missing
checkpoint: any `vl_jax.errors.UserError`) end with one `error: ...` line and exit status 2
(`errors.exit_on_user_error`); anything else is a bug and keeps its traceback.
"""

from absl import app

from vl_jax import cli, errors

_CONFIG, _WORKDIR = cli.define_flags("VDC config file (configs/vdc/*.py[:arg])")


def main(argv):
    cli.start(argv)
    # Imported after initialize_distributed: nothing may touch the JAX backend before it.
    # job "vdc_compare" (configs/vdc/compare.py): VDC, pre-screened VDC, confident learning and
    # their fusion side by side (vdc_jax.compare); any other: one cleansing run.
    if _CONFIG.value.get("job") == "vdc_compare":
        from vdc_jax.compare import run
    else:
        from vdc_jax.cleanse import run

    errors.exit_on_user_error(run, _CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
