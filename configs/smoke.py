"""Smoke run: a tiny random-weight CLIP built in place encodes scikit-image's bundled photos.

    python main.py --config configs/smoke.py --workdir runs/smoke

Everything is offline; it checks the pipeline end to end, the numbers mean nothing (random weights).
"""

import ml_collections


def get_config():
    c = ml_collections.ConfigDict()
    c.job = "smoke"
    c.seed = 0
    c.model = ml_collections.ConfigDict(
        dict(
            image_size=64,
            patch_size=16,
            width=64,
            layers=2,
            heads=4,
            text_width=64,
            text_layers=2,
            text_heads=4,
            context_length=32,
            embed_dim=32,
            act="quick_gelu",
        )
    )
    c.encode = ml_collections.ConfigDict(dict(batch_size=8, dtype="float32"))
    c.mesh = ml_collections.ConfigDict(dict(data=-1, model=1))
    c.prompt = "a photo of a {}."
    return c
