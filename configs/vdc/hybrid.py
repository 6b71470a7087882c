"""VDC on hybrid dirt: noisy labels (eta = 0.4) plus an all-to-one backdoor injected into the
samples the noise left clean (as in the paper's hybrid setting).

    python -m vdc_jax.main --config configs/vdc/hybrid.py:cifar10,badnets,sym --workdir runs/hybrid

Arg: `<dataset>,<attack>,<sym|asym>[,small]` (default cifar10,badnets,sym); the poison count per
non-target class is the dataset's poisoned-sample setting (CIFAR-10 500, ImageNet-100 50,
ImageNet-Dog 80).
"""

from vdc_jax.cleanse import DATASETS, POISON_PER_CLASS, apply_arg, default_config


def get_config(arg: str = "cifar10,badnets,sym"):
    dataset, rest = [*arg.split(",", 1), ""][:2]
    if dataset not in DATASETS:
        raise ValueError(f"hybrid.py:<dataset>,...: dataset {dataset!r} not in {sorted(DATASETS)}")
    c = default_config()
    c.data.kind = "tfds"
    c.data.name, c.data.split, c.vqg.n = DATASETS[dataset]
    c.corrupt.target = 0
    c.corrupt.poison_per_class = POISON_PER_CLASS[dataset]
    c.corrupt.noise_rate = 0.4
    return apply_arg(c, rest, attack=True, noise=True)
