"""Smoke run: a tiny random-weight CLIP built in place encodes scikit-image's bundled photos.

    python main.py --config configs/smoke.py --workdir runs/smoke

Everything is offline; it checks the pipeline end to end, the numbers mean nothing (random weights).
"""

import ml_collections

from configs.common import mesh


def get_config():
    c = ml_collections.ConfigDict()
    c.job = "smoke"
    c.seed = 0
    # Sizes of the tiny random CLIP (vl_jax.models.tiny.CLIP_FIELDS); {} = its defaults.
    c.model = ml_collections.ConfigDict(dict(image_size=64, width=64, layers=2, embed_dim=32))
    c.encode = ml_collections.ConfigDict(dict(batch_size=8, dtype="float32"))
    c.mesh = mesh()
    c.prompt = "a photo of a {}."
    return c
