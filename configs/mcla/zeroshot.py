"""CLIP zero-shot with the class names: a supervised reference, not clustering (docs/mcla.md).

    python -m mcla_jax.main --config configs/mcla/zeroshot.py:imagenet_dogs --workdir runs/dogs_zeroshot
    python -m mcla_jax.main --config configs/mcla/zeroshot.py:runlocal --workdir runs/local_zeroshot

The argument is DATASET[,b16|l14][,train_eq_eval] with DATASET in imagenet_dogs, imagenet10,
cifar10, cifar20, stl10 (CLIP ViT-B/32 by default), or runlocal.
"""

from configs.mcla.common import experiment_config


def get_config(arg: str = "imagenet_dogs"):
    c = experiment_config("zeroshot", arg)
    c.space.prompts = "single"  # "a photo of a {}."; "tac" for TAC's 7-template ensemble
    return c
