"""VDC on noisy labels: symmetric or asymmetric (class i -> i + 1 mod K), eta = 0.4.

    python -m vdc_jax.main --config configs/vdc/noise.py:cifar10,sym --workdir runs/cifar_sym

Arg: `<dataset>,<sym|asym>[,llava|,ours][,small]`, dataset in cifar10 / imagenet100 /
imagenet_dog; default InstructBLIP-Vicuna-7B in the official protocol (see imagenet_dog.py).
"""

from configs.common import parse_arg
from configs.vdc.common import DATASETS, PAPER_FLAGS, paper_setting, tfds_config


def get_config(arg: str = "cifar10,sym"):
    a = parse_arg(arg, dataset=tuple(DATASETS), noise=("sym", "asym"), **PAPER_FLAGS)
    c = tfds_config(a.dataset)
    c.corrupt.noise = a.noise
    c.corrupt.noise_rate = 0.4  # the paper's eta
    return paper_setting(c, a)
