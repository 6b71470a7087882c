"""VDC on ImageNet-Dog (10 dog breeds x 800 train images), one all-to-one backdoor attack.

    python -m vdc_jax.main --config configs/vdc/imagenet_dog.py:badnets --workdir runs/dog_badnets \
        --config.data.manual_dir /data/ILSVRC2012

Arg: `<attack>[,small]`, attack in badnets / blended / sig / wanet / trojannn / ssba; `small`
swaps llava-1.5-7b for llava-interleave-qwen-0.5b. As in the paper (§4.1): target class 0,
80 poisoned per non-target class -> 720 poisoned, 7,280 clean; 2 + 6 questions per sample.
The 10 breeds are our stand-in (VDC did not publish its list): see docs/data.md, imagenet_dog10.
"""

from vdc_jax.cleanse import apply_arg, default_config


def get_config(arg: str = "badnets"):
    c = default_config()
    c.data.kind = "tfds"
    c.data.name = "imagenet_dog10"
    c.data.split = "train_800"
    c.corrupt.target = 0
    c.corrupt.poison_per_class = 80
    c.vqg.n = 6
    return apply_arg(c, arg, attack=True)
