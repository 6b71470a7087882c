"""zeroshot on a clustering benchmark (docs/mcla.md).

    python -m mcla_jax.main --config configs/mcla/zeroshot.py:imagenet_dogs --workdir runs/dogs_zeroshot
    python -m mcla_jax.main --config configs/mcla/zeroshot.py:cifar10,b16 --config.seeds=0,1,2 --workdir ...
    python -m mcla_jax.main --config configs/mcla/zeroshot.py:runlocal --workdir runs/local_zeroshot

The argument is DATASET[,b16|l14][,train_eq_eval] with DATASET in imagenet_dogs, imagenet10,
cifar10, cifar20, stl10 (CLIP ViT-B/32 by default), or runlocal.
"""

from mcla_jax.experiment import base_config


def get_config(arg: str = "imagenet_dogs"):
    return base_config("zeroshot", arg)
