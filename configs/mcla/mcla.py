"""MCLA on a clustering benchmark (docs/mcla.md).

    python -m mcla_jax.main --config configs/mcla/mcla.py:imagenet_dogs --workdir runs/dogs_mcla
    python -m mcla_jax.main --config configs/mcla/mcla.py:cifar10,b16 --config.seeds=0,1,2 --workdir ...
    python -m mcla_jax.main --config configs/mcla/mcla.py:runlocal --workdir runs/local_mcla

The argument is DATASET[,b16|l14][,train_eq_eval] with DATASET in imagenet_dogs, imagenet10,
cifar10, cifar20, stl10 (CLIP ViT-B/32 by default), or runlocal.
"""

from configs.mcla.common import experiment_config


def get_config(arg: str = "imagenet_dogs"):
    c = experiment_config("mcla", arg)
    c.space.kind = "mcla"  # WordNet nouns near the k-means centres (docs/semantic_space.md)
    c.train.method = "mcla"  # image and text heads, instance / prototype / semantic levels
    return c
