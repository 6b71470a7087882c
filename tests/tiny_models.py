"""A tiny CLIP model config shared by the training tests (`train_clip.model_config` input)."""

import ml_collections


def tiny_clip(layers: int = 1) -> ml_collections.ConfigDict:
    """16 px images, 8 px patches, 16-wide towers of `layers` image layers: compiles in seconds."""
    return ml_collections.ConfigDict(
        dict(image_size=16, patch_size=8, width=16, layers=layers, heads=2, mlp_ratio=2,
             text_width=16, text_layers=1, text_heads=2, context_length=16, embed_dim=16,
             act="quick_gelu", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    )  # fmt: skip
