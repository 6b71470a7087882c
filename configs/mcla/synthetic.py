"""MCLA's training block for small synthetic features (tests/test_mcla_train.py builds such data).

    from configs.mcla.synthetic import get_config
    assign, history = mcla_jax.train.train(features, knn_idx, texts, config=get_config())

A tiny dataset gives few steps per epoch, hence the smaller batch and larger learning rate than
the defaults (``configs/mcla/common.py: train_config``, sized for CLIP features of ~20k-50k
images).
"""

from configs.mcla.common import train_config


def get_config():
    c = train_config()
    c.num_clusters = 4
    c.epochs = 20
    c.batch_size = 64
    c.lr = 3e-2
    return c
