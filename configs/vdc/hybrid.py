"""VDC on hybrid dirt: noisy labels (eta = 0.4) plus an all-to-one backdoor injected into the
samples the noise left clean (as in the paper's hybrid setting).

    python -m vdc_jax.main --config configs/vdc/hybrid.py:cifar10,badnets,sym --workdir runs/hybrid

Arg: `<dataset>,<attack>,<sym|asym>[,llava|,ours][,small]` (default cifar10,badnets,sym;
InstructBLIP-Vicuna-7B in the official protocol, see imagenet_dog.py); the poison count per
non-target class is the dataset's poisoned-sample setting (CIFAR-10 500, ImageNet-100 50,
ImageNet-Dog 80).
"""

from configs.common import parse_arg
from configs.vdc.common import (
    ATTACK_NAMES,
    DATASETS,
    PAPER_FLAGS,
    POISON_PER_CLASS,
    paper_setting,
    tfds_config,
)


def get_config(arg: str = "cifar10,badnets,sym"):
    a = parse_arg(
        arg, dataset=tuple(DATASETS), attack=ATTACK_NAMES, noise=("sym", "asym"), **PAPER_FLAGS
    )
    c = tfds_config(a.dataset)
    c.corrupt.attack = a.attack
    c.corrupt.poison_per_class = POISON_PER_CLASS[a.dataset]
    c.corrupt.noise = a.noise
    c.corrupt.noise_rate = 0.4  # the paper's eta
    return paper_setting(c, a)
