"""CLIP k-means on a clustering benchmark (docs/mcla.md).

    python -m mcla_jax.main --config configs/mcla/kmeans.py:imagenet_dogs --workdir runs/dogs_kmeans
    python -m mcla_jax.main --config configs/mcla/kmeans.py:cifar10,b16 --config.seeds=0,1,2 --workdir ...
    python -m mcla_jax.main --config configs/mcla/kmeans.py:runlocal --workdir runs/local_kmeans

The argument is DATASET[,b16|l14][,train_eq_eval] with DATASET in imagenet_dogs, imagenet10,
cifar10, cifar20, stl10 (CLIP ViT-B/32 by default), or runlocal.
"""

from configs.mcla.common import experiment_config


def get_config(arg: str = "imagenet_dogs"):
    c = experiment_config("kmeans", arg)
    c.kmeans_n_init = 10  # restarts; the lowest inertia wins
    return c
