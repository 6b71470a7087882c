"""VDC on noisy labels: symmetric or asymmetric (class i -> i + 1 mod K), eta = 0.4.

    python -m vdc_jax.main --config configs/vdc/noise.py:cifar10,sym --workdir runs/cifar_sym

Arg: `<dataset>,<sym|asym>[,small]`, dataset in cifar10 / imagenet100 / imagenet_dog.
"""

from vdc_jax.cleanse import DATASETS, apply_arg, default_config


def get_config(arg: str = "cifar10,sym"):
    dataset, rest = [*arg.split(",", 1), ""][:2]
    if dataset not in DATASETS:
        raise ValueError(
            f"noise.py:<dataset>,<sym|asym>: dataset {dataset!r} not in {sorted(DATASETS)}"
        )
    c = default_config()
    c.data.kind = "tfds"
    c.data.name, c.data.split, c.vqg.n = DATASETS[dataset]
    c.corrupt.noise_rate = 0.4
    return apply_arg(c, rest, noise=True)
