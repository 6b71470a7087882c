"""SigLIP vision tower in Flax NNX, loading HF `SiglipVisionModel` / `SiglipModel` checkpoints.

    tower = siglip.from_pretrained("google/siglip-so400m-patch14-384")
    h = tower.hidden_states(pixel_values)      # [B, H, W, 3] -> [B, N, D] (before post_layernorm)
    last = tower(pixel_values)                  # [B, N, D] = HF `last_hidden_state`

Same pre-LN blocks as CLIP's ViT (`transformer.Encoder`, HF key names identical), but the patch
convolution has a bias, there is no class token and no pre-norm, and position embeddings cover the
N patches only. The attention-pooling `head` (SigLIP's contrastive image embedding) is not built:
LLaVA-style models read patch features, so its checkpoint keys are ignored (`hf_ignore`) rather than
loaded into parameters nothing uses. Shape letters: B batch, N patches, D width, p patch size.
"""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
from flax import nnx

from vl_jax.checkpoints import SafetensorsReader, load_model, resolve
from vl_jax.checkpoints.mapping import Rule, copy
from vl_jax.models import clip_weights
from vl_jax.models.clip_config import VisionConfig, vision_from_hf
from vl_jax.models.transformer import Encoder

__all__ = ["SiglipVisionTower", "config_from_hf", "from_pretrained", "hf_ignore", "hf_rules"]


def config_from_hf(c) -> VisionConfig:
    """From a `transformers.SiglipVisionConfig` (square images only)."""
    sizes = []
    for name in ("image_size", "patch_size"):
        v = getattr(c, name)
        if isinstance(v, (list, tuple)):
            if len(set(v)) != 1:
                raise ValueError(f"non-square SigLIP {name} {v} is not supported")
            v = v[0]
        sizes.append(int(v))
    if getattr(c, "num_channels", 3) != 3:
        raise ValueError(f"SigLIP with num_channels={c.num_channels} is not supported (RGB only)")
    # vision_from_hf reads the same field names as CLIP's config, with int sizes.
    names = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
    fields = {k: getattr(c, k) for k in (*names, "hidden_act", "layer_norm_eps")}
    return vision_from_hf(types.SimpleNamespace(**fields, image_size=sizes[0], patch_size=sizes[1]))


def patchify(pixel_values: jax.Array, image_size: int, patch_size: int) -> jax.Array:
    """[B, H, W, 3] -> [B, N, p*p*3], patches row-major, (row, col, channel) inside a patch."""
    b, h, w, c = pixel_values.shape
    if (h, w, c) != (image_size, image_size, 3):
        raise ValueError(
            f"pixel_values must be [B, {image_size}, {image_size}, 3] (NHWC), "
            f"got {pixel_values.shape}"
        )
    p = patch_size
    x = pixel_values.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, (h // p) * (w // p), p * p * c)


class SiglipVisionTower(nnx.Module):
    """patchify -> linear (+bias) + positions -> pre-LN blocks -> post_layernorm."""

    def __init__(self, cfg: VisionConfig, *, dtype=jnp.float32, param_dtype=None, rngs: nnx.Rngs):
        param_dtype = param_dtype or dtype
        d, p = cfg.encoder.width, cfg.patch_size
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        # A patch-strided conv is a matmul over flattened patches (see clip.VisionTower).
        self.patch_embed = nnx.Linear(p * p * 3, d, use_bias=True, **kw)
        self.pos = nnx.Param(
            nnx.initializers.normal(d**-0.5)(rngs.params(), (cfg.num_patches, d), param_dtype)
        )
        self.encoder = Encoder(cfg.encoder, **kw)
        self.ln_post = nnx.LayerNorm(d, epsilon=cfg.encoder.ln_eps, **kw)
        self.cfg, self.dtype = cfg, dtype

    def embed(self, pixel_values: jax.Array) -> jax.Array:
        """[B, H, W, 3] -> [B, N, D], the encoder input (HF `hidden_states[0]`)."""
        x = patchify(pixel_values.astype(self.dtype), self.cfg.image_size, self.cfg.patch_size)
        return self.patch_embed(x) + self.pos[...].astype(self.dtype)

    def hidden_states(self, pixel_values: jax.Array, num_layers: int | None = None) -> jax.Array:
        """[B, H, W, 3] -> [B, N, D] after `num_layers` blocks (all by default), before the final
        LayerNorm: HF `hidden_states[num_layers]`."""
        return self.encoder(self.embed(pixel_values), num_layers=num_layers)

    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        """[B, H, W, 3] -> [B, N, D], HF `last_hidden_state` (after post_layernorm)."""
        return self.ln_post(self.hidden_states(pixel_values))


# ---- checkpoints -------------------------------------------------------------------------------


def hf_rules(v: VisionConfig, ours: str = "", theirs: str = "vision_model") -> list[Rule]:
    """Our paths (under `ours`) <- HF SigLIP vision keys (under `theirs`; either may be "")."""
    o = f"{ours}." if ours else ""
    t = f"{theirs}." if theirs else ""
    return [
        clip_weights.patch_embed_rule(
            f"{o}patch_embed.kernel", f"{t}embeddings.patch_embedding.weight", v
        ),
        copy(f"{o}patch_embed.bias", f"{t}embeddings.patch_embedding.bias"),
        copy(f"{o}pos", f"{t}embeddings.position_embedding.weight"),
        *clip_weights.hf_encoder_rules(f"{o}encoder", f"{t}encoder", v.encoder),
        *clip_weights.layer_norm_rules(f"{o}ln_post", f"{t}post_layernorm"),
    ]


def hf_ignore(theirs: str = "vision_model") -> tuple[str, ...]:
    """Checkpoint keys under `theirs` that are deliberately not loaded: the attention-pooling head
    (present when `vision_use_head`, unused by LLaVA) and `position_ids` buffers."""
    t = f"{theirs}." if theirs else ""
    return (f"^{t.replace('.', '[.]')}head[.]", r"\.position_ids$")


def from_pretrained(
    path_or_id: str,
    dtype=jnp.float32,
    param_dtype=None,
    *,
    revision: str | None = None,
    cache_dir: str | None = None,
    shardings=None,
) -> SiglipVisionTower:
    """Loads the vision tower of a HF `SiglipVisionModel` or `SiglipModel` checkpoint.

    Keys are `vision_model.*` (hub checkpoints, transformers 4) or unprefixed (transformers 5
    `SiglipVisionModel.save_pretrained`); a `SiglipModel`'s text tower and logit scale/bias are
    ignored.

    Raises:
      ValueError: not a SigLIP checkpoint.
      CheckpointError: missing / unexpected / mis-shaped key (named).
    """
    import transformers

    path = resolve(path_or_id, revision=revision, cache_dir=cache_dir)
    hf = transformers.AutoConfig.from_pretrained(path)
    if hf.model_type == "siglip":
        hf = hf.vision_config
    elif hf.model_type != "siglip_vision_model":
        raise ValueError(f"{path}: model_type '{hf.model_type}' is not a SigLIP model")
    cfg = config_from_hf(hf)
    reader = SafetensorsReader.from_dir(path)
    theirs = "vision_model" if any(k.startswith("vision_model.") for k in reader) else ""
    return load_model(
        lambda: SiglipVisionTower(
            cfg, dtype=dtype, param_dtype=param_dtype or dtype, rngs=nnx.Rngs(0)
        ),
        hf_rules(cfg, "", theirs),
        reader,
        where=path,
        ignore=(*hf_ignore(theirs), r"^text_model\.", r"^logit_(scale|bias)$"),
        shardings=shardings,
    )
