"""sic on a clustering benchmark (docs/mcla.md).

    python -m mcla_jax.main --config configs/mcla/sic.py:imagenet_dogs --workdir runs/dogs_sic
    python -m mcla_jax.main --config configs/mcla/sic.py:cifar10,b16 --config.seeds=0,1,2 --workdir ...
    python -m mcla_jax.main --config configs/mcla/sic.py:runlocal --workdir runs/local_sic

The argument is DATASET[,b16|l14][,train_eq_eval] with DATASET in imagenet_dogs, imagenet10,
cifar10, cifar20, stl10 (CLIP ViT-B/32 by default), or runlocal.
"""

from mcla_jax.experiment import base_config


def get_config(arg: str = "imagenet_dogs"):
    return base_config("sic", arg)
