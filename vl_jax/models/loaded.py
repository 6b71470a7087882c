"""A checkpoint loaded once per run, onto the mesh, with what its users need beside the weights.

    ck = ClipCheckpoint("openai/clip-vit-base-patch32", mesh=mesh, dtype="bfloat16")
    encode_dataset(ck, ...); embed_nouns(ck, ...); zeroshot(ck, ...)   # no reloading

A run loads each model once and passes the object to every stage that needs it (image
encoding, noun embeddings, the zero-shot baseline). Parameters go straight into their
shardings on the mesh as they are read (``from_pretrained(..., shardings=...)``): no full copy
on one device first, which matters for a large model split over ``model``.

Functions that accept a model also accept a path or hub id (:func:`as_clip`), which loads it
then; that is for one-off library calls, not for drivers.
"""

from __future__ import annotations

import functools
import json
import os

import jax.numpy as jnp

from vl_jax import parallel
from vl_jax.checkpoints import resolve
from vl_jax.models import clip
from vl_jax.preprocess import ClipPreprocess


class ClipCheckpoint:
    """A CLIP checkpoint of a run: the resolved directory ``path`` (it identifies the weights in
    cache fingerprints), the compute ``dtype`` name, and -- loaded on first use, once --
    ``model`` (NNX, each parameter read straight into its sharding on ``mesh``), ``tokenizer``
    and ``preprocess``. A run whose stages are all cached never loads the weights."""

    def __init__(self, path_or_id: str, *, mesh=None, dtype: str = "float32"):
        self.path = resolve(os.fspath(path_or_id))
        self.mesh = mesh if mesh is not None else parallel.create_mesh()
        self.dtype = str(jnp.dtype(dtype))

    @functools.cached_property
    def config(self) -> clip.CLIPConfig:
        return clip.load_config(self.path)[0]

    @functools.cached_property
    def model(self) -> clip.CLIP:
        shardings = functools.partial(parallel.param_shardings, mesh=self.mesh)
        return clip.from_pretrained(self.path, dtype=jnp.dtype(self.dtype), shardings=shardings)

    @functools.cached_property
    def tokenizer(self):
        """The checkpoint's own tokenizer (OpenAI CLIP BPE for OpenCLIP directories)."""
        from vl_jax.models.clip_tokenizer import load_tokenizer

        return load_tokenizer(self.path, self.config.text.context_length)

    @functools.cached_property
    def preprocess(self) -> ClipPreprocess:
        """The image preprocessing the checkpoint declares (see :func:`preprocess_for`)."""
        return preprocess_for(self.path, self.config)

    def __repr__(self) -> str:
        return f"ClipCheckpoint({self.path!r}, dtype={self.dtype})"


def as_clip(model: ClipCheckpoint | str, *, mesh=None, dtype: str = "float32") -> ClipCheckpoint:
    """``model`` itself, or the checkpoint at a path / hub id."""
    if isinstance(model, ClipCheckpoint):
        return model
    return ClipCheckpoint(model, mesh=mesh, dtype=dtype)


def preprocess_for(path: str, cfg: clip.CLIPConfig) -> ClipPreprocess:
    """The image preprocessing a checkpoint directory declares (HF preprocessor_config.json or
    processor_config.json, or OpenCLIP preprocess_cfg), defaulting to OpenAI CLIP's at the model's image size."""
    # transformers >= 5 may keep the image settings in processor_config.json instead
    if any(os.path.exists(os.path.join(path, f))
           for f in ("preprocessor_config.json", "processor_config.json")):  # fmt: skip
        return ClipPreprocess.from_hf_dir(path)
    oc = os.path.join(path, "open_clip_config.json")
    if os.path.exists(oc):
        with open(oc) as f:
            return ClipPreprocess.from_open_clip_config(json.load(f), source=oc)
    size = cfg.vision.image_size
    return ClipPreprocess(size=size, crop_size=(size, size), mean=cfg.mean, std=cfg.std)
