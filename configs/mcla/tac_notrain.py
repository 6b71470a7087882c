"""TAC without training: spherical k-means on [image ; text counterpart] (docs/mcla.md).

    python -m mcla_jax.main --config configs/mcla/tac_notrain.py:imagenet_dogs --workdir runs/dogs_tac_notrain
    python -m mcla_jax.main --config configs/mcla/tac_notrain.py:runlocal --workdir runs/local_tac_notrain

The argument is DATASET[,b16|l14][,train_eq_eval] with DATASET in imagenet_dogs, imagenet10,
cifar10, cifar20, stl10 (CLIP ViT-B/32 by default), or runlocal.
"""

from configs.mcla.common import experiment_config


def get_config(arg: str = "imagenet_dogs"):
    c = experiment_config("tac_notrain", arg)
    c.space.kind = "tac"
    if not c.runlocal:
        c.space.prompts = "tac"
    c.space.pool, c.space.combine = "lemmas", "raw"  # as tac.py
    c.knn = 50
    # TAC's script clusters the evaluation split itself (transductive), k-means with 20
    # restarts; transductive = False fits on the train split and assigns the evaluation rows
    # to the nearest centroid (ours, inductive).
    c.transductive, c.kmeans_n_init = True, 20
    return c
