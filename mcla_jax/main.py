"""`python -m mcla_jax.main --config configs/mcla/<method>.py:<dataset>[,b16|l14] --workdir DIR`.

Methods: mcla, sic, tac, tac_notrain, kmeans, zeroshot (one config file each, in configs/mcla/);
datasets: imagenet_dogs, imagenet10, cifar10, cifar20, stl10 (or `runlocal`: a tiny random CLIP on
easy-VQA shapes, a minute on a CPU). Rerunning the same command resumes. A problem with the
input (a dataset not prepared, a bad config value, a workdir of other settings) is one
`error: ...` line on stderr and exit status 2. See docs/mcla.md.
"""

from absl import app

from vl_jax import cli

_CONFIG, _WORKDIR = cli.define_flags("experiment config (configs/mcla/<method>.py:<dataset>)")


def main(argv):
    cli.start(argv)
    from mcla_jax import experiment  # after start(): nothing may touch the backend before it

    cli.run(experiment.run, _CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main, flags_parser=cli.parse_flags)
