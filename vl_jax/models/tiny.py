"""The one definition of the tiny random models used by runlocal configs, the smoke run,
benchmarks and tests.

    path = tiny.write_clip(dir)                    # complete Hugging Face CLIP directory
    cfg = tiny.clip_config(image_size=32)          # the same model family, other sizes

They exist to exercise the real code paths (a checkpoint written in Hugging Face's layout and
loaded back through the verified loader) in seconds on a CPU. Their weights are random, so
what they output means nothing. Sizes are keyword overrides of :data:`CLIP_FIELDS`; nothing
here needs PyTorch.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import jax
import numpy as np
from flax import nnx

from vl_jax.models.clip_config import CLIPConfig, TextConfig, VisionConfig
from vl_jax.models.transformer import EncoderConfig

# The tiny CLIP: 64 px images in 16 px patches, 2-layer 64-wide towers, 32-d embeddings.
CLIP_FIELDS = dict(
    image_size=64, patch_size=16, width=64, layers=2, heads=4, text_width=64, text_layers=2,
    text_heads=4, context_length=32, embed_dim=32, act="quick_gelu",
)  # fmt: skip


def clip_config(**overrides) -> CLIPConfig:
    """The tiny CLIP's :class:`CLIPConfig`; ``overrides`` replace :data:`CLIP_FIELDS` values
    (``text_layers=0`` drops the text tower)."""
    unknown = set(overrides) - set(CLIP_FIELDS)
    if unknown:
        raise TypeError(f"unknown tiny CLIP fields {sorted(unknown)}; known: {sorted(CLIP_FIELDS)}")
    c = {**CLIP_FIELDS, **overrides}
    enc = lambda width, layers, heads: EncoderConfig(width, layers, heads, 4 * width, act=c["act"])
    text = None
    if c["text_layers"] > 0:
        text = TextConfig(
            enc(c["text_width"], c["text_layers"], c["text_heads"]),
            context_length=c["context_length"],
        )
    return CLIPConfig(
        vision=VisionConfig(
            enc(c["width"], c["layers"], c["heads"]),
            image_size=c["image_size"],
            patch_size=c["patch_size"],
        ),
        text=text,
        embed_dim=c["embed_dim"],
    )


def random_clip(cfg: CLIPConfig, seed: int = 0):
    """A CLIP with N(0, 0.02) weights (LayerNorm scales around 1) filled from numpy: no XLA
    compilation (``clip.init`` compiles ~40 small programs, seconds on a busy CPU)."""
    from vl_jax.models import clip

    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: clip.CLIP(cfg, rngs=nnx.Rngs(0))))
    rng = np.random.default_rng(seed)

    def fill(path, x):
        scale = "scale" in jax.tree_util.keystr(path)
        return (rng.normal(0, 0.02, x.shape) + scale).astype(x.dtype)

    return nnx.merge(graphdef, jax.tree.map_with_path(fill, abstract))


def save_clip(model, path: str) -> str:
    """A complete HF CLIP directory for ``model``: weights, config, the OpenAI CLIP tokenizer
    and the preprocessor config."""
    from vl_jax.models import clip
    from vl_jax.models.clip_tokenizer import openai_clip_tokenizer
    from vl_jax.train.clip import write_preprocessor_config  # the one HF preprocessing writer

    clip.save_pretrained(model, path)
    if model.config.text is not None:
        openai_clip_tokenizer(model.config.text.context_length).save_pretrained(path)
    cfg = model.config
    write_preprocessor_config(path, cfg.vision.image_size, cfg.mean, cfg.std)
    return path


def write_clip(path: str, seed: int = 0, **overrides) -> str:
    """Writes the tiny CLIP (:func:`clip_config` with ``overrides``) to ``path`` once: into a
    temporary folder renamed into place, so a killed write leaves no half checkpoint. An
    existing complete checkpoint is kept. Returns ``path``."""
    if os.path.exists(os.path.join(path, "model.safetensors")):
        return path
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(path)}.")
    try:
        save_clip(random_clip(clip_config(**overrides), seed), tmp)
        shutil.rmtree(path, ignore_errors=True)  # a half-written one (no weights)
        os.rename(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path
