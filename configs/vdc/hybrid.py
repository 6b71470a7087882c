"""VDC on hybrid dirt: noisy labels (eta = 0.4) plus an all-to-one backdoor injected into the
samples the noise left clean (as in the paper's hybrid setting).

    python -m vdc_jax.main --config configs/vdc/hybrid.py:cifar10,badnets,sym --workdir runs/hybrid

Arg: `<dataset>,<attack>,<sym|asym>[,small]` (default cifar10,badnets,sym); the poison count per
non-target class is the dataset's poisoned-sample setting (CIFAR-10 500, ImageNet-100 50,
ImageNet-Dog 80).
"""

from configs.common import parse_arg
from configs.vdc.common import ATTACK_NAMES, DATASETS, POISON_PER_CLASS, tfds_config, use_small


def get_config(arg: str = "cifar10,badnets,sym"):
    a = parse_arg(
        arg, dataset=tuple(DATASETS), attack=ATTACK_NAMES, noise=("sym", "asym"), small=False
    )
    c = tfds_config(a.dataset)
    c.corrupt.attack = a.attack
    c.corrupt.poison_per_class = POISON_PER_CLASS[a.dataset]
    c.corrupt.noise = a.noise
    c.corrupt.noise_rate = 0.4  # the paper's eta
    return use_small(c, a.small)
