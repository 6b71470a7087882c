"""The tiny CLIP of vl_jax.models.tiny at training-test sizes, in the layout of the training
config's model block (`train_clip.model_config` input: its fields plus `mlp_ratio`, mean, std)."""

import ml_collections

from vl_jax.models import tiny


def tiny_clip(layers: int = 1) -> ml_collections.ConfigDict:
    """16 px images, 8 px patches, 16-wide towers of `layers` image layers: compiles in seconds."""
    return ml_collections.ConfigDict(
        dict(tiny.CLIP_FIELDS, image_size=16, patch_size=8, width=16, layers=layers, heads=2,
             text_width=16, text_layers=1, text_heads=2, context_length=16, embed_dim=16,
             mlp_ratio=2, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    )  # fmt: skip
