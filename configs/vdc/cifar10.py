"""VDC on CIFAR-10 train (50,000), one all-to-one backdoor attack, 500 poisoned per class.

    python -m vdc_jax.main --config configs/vdc/cifar10.py:blended --workdir runs/cifar_blended

Arg: `<attack>[,llava|,ours][,small]` (badnets / blended / sig / wanet / trojannn / ssba);
default InstructBLIP-Vicuna-7B in the official protocol (see configs/vdc/imagenet_dog.py). Paper: eta = 0.09
-> 500 per non-target class, 4,500 poisoned; 2 + 4 questions per sample. CIFAR-10 must be
prepared as TFDS array_record (the error message says how; it is never downloaded here).
"""

from configs.common import parse_arg
from configs.vdc.common import (
    ATTACK_NAMES,
    PAPER_FLAGS,
    POISON_PER_CLASS,
    paper_setting,
    tfds_config,
)


def get_config(arg: str = "badnets"):
    a = parse_arg(arg, attack=ATTACK_NAMES, **PAPER_FLAGS)
    c = tfds_config("cifar10")  # cifar10 train, 4 label-specific questions per class
    c.corrupt.attack = a.attack
    c.corrupt.poison_per_class = POISON_PER_CLASS["cifar10"]  # 500
    return paper_setting(c, a)
