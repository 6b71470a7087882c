"""tac on a clustering benchmark (docs/mcla.md).

    python -m mcla_jax.main --config configs/mcla/tac.py:imagenet_dogs --workdir runs/dogs_tac
    python -m mcla_jax.main --config configs/mcla/tac.py:cifar10,b16 --config.seeds=0,1,2 --workdir ...
    python -m mcla_jax.main --config configs/mcla/tac.py:runlocal --workdir runs/local_tac

The argument is DATASET[,b16|l14][,train_eq_eval] with DATASET in imagenet_dogs, imagenet10,
cifar10, cifar20, stl10 (CLIP ViT-B/32 by default), or runlocal.
"""

from mcla_jax.experiment import base_config


def get_config(arg: str = "imagenet_dogs"):
    return base_config("tac", arg)
