"""TAC (Li et al., ICML'24) as its official code sets it up (docs/mcla.md, "TAC").

    python -m mcla_jax.main --config configs/mcla/tac.py:imagenet_dogs --workdir runs/dogs_tac
    python -m mcla_jax.main --config configs/mcla/tac.py:cifar10,b16 --config.seeds=0,1,2 --workdir ...
    python -m mcla_jax.main --config configs/mcla/tac.py:runlocal --workdir runs/local_tac

The argument is DATASET[,b16|l14][,train_eq_eval] with DATASET in imagenet_dogs, imagenet10,
cifar10, cifar20, stl10 (CLIP ViT-B/32 by default), or runlocal.
"""

import ml_collections

from configs.mcla.common import experiment_config


def get_config(arg: str = "imagenet_dogs"):
    c = experiment_config("tac", arg)
    c.space.kind = "tac"  # the nouns nearest to each k-means centre of the images
    if not c.runlocal:
        c.space.prompts = "tac"  # TAC's 7-template ensemble
    # As TAC's code (docs/mcla.md; the other values are our variants): every lemma of every
    # synset ("synsets": first lemmas), the raw mean of the prompt embeddings ("normalized").
    c.space.pool, c.space.combine = "lemmas", "raw"
    c.knn = 50  # TAC's neighbourhood size in both spaces
    c.train.method = "tac"
    # TAC's official optimiser: Adam(lr 1e-3), batch 512, 20 epochs, MLP heads of width 512
    # with BatchNorm and truncated-normal(0.02) weights (batchnorm False / head_init "flax":
    # our earlier heads).
    c.train.lr, c.train.batch_size, c.train.epochs, c.train.warmup_epochs = 1e-3, 512, 20, 0
    c.train.model.hidden = 512
    c.train.model.batchnorm, c.train.model.head_init = True, "trunc_normal"
    c.report_label_selected = False  # as sic.py: a label-selected figure beside the result
    c.train.weights = ml_collections.ConfigDict(dict(cluster=1.0, consistency=1.0, entropy=5.0))
    if c.runlocal:
        c.train.epochs, c.train.batch_size, c.train.model.hidden = 5, 128, 64
    return c
