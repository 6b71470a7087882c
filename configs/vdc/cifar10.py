"""VDC on CIFAR-10 train (50,000), one all-to-one backdoor attack, 500 poisoned per class.

    python -m vdc_jax.main --config configs/vdc/cifar10.py:blended --workdir runs/cifar_blended

Arg: `<attack>[,small]` (badnets / blended / sig / wanet / trojannn / ssba). Paper: eta = 0.09
-> 500 per non-target class, 4,500 poisoned; 2 + 4 questions per sample. CIFAR-10 must be
prepared as TFDS array_record (the error message says how; it is never downloaded here).
"""

from vdc_jax.cleanse import apply_arg, default_config


def get_config(arg: str = "badnets"):
    c = default_config()
    c.data.kind = "tfds"
    c.data.name = "cifar10"
    c.data.split = "train"
    c.corrupt.target = 0
    c.corrupt.poison_per_class = 500
    c.vqg.n = 4
    return apply_arg(c, arg, attack=True)
