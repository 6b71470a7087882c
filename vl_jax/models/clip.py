"""CLIP (ViT image tower + causal text tower) in Flax NNX, loading HF and OpenCLIP checkpoints.

    model = clip.from_pretrained("openai/clip-vit-base-patch32")      # hub id or local directory
    feats = model.encode_image(pixel_values)    # [B, H, W, 3] normalised float32 -> [B, E]
    text = model.encode_text(input_ids, mask)    # [B, L] int32 -> [B, E]

Outputs are the *unnormalised* projected embeddings, as HF `get_image_features` /
`get_text_features` return them. Shape letters: B batch, N patches, D width, E embedding dim.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vl_jax.checkpoints import (
    SafetensorsReader,
    export_state,
    load_model,
    resolve,
    save_safetensors,
)
from vl_jax.errors import NotFoundError
from vl_jax.fileio import atomic_open
from vl_jax.models import clip_weights
from vl_jax.models.clip_config import (
    OPEN_CLIP_CONFIG,
    OPEN_CLIP_WEIGHTS,
    CLIPConfig,
    TextConfig,
    VisionConfig,
    from_hf_dir,
    from_open_clip_dict,
    to_open_clip_dict,
)
from vl_jax.models.transformer import Encoder, EncoderConfig, attention

__all__ = [
    "CLIP",
    "CLIPConfig",
    "EncoderConfig",
    "TextConfig",
    "TextTower",
    "VisionConfig",
    "VisionTower",
    "from_pretrained",
    "save_pretrained",
]


class VisionTower(nnx.Module):
    """ViT: patchify -> [class token; patches] + positions -> pre-LN -> blocks -> LN(class token)."""

    def __init__(self, cfg: VisionConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        d, p = cfg.encoder.width, cfg.patch_size
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        # A patch-sized, patch-strided conv is a matmul over flattened patches; the explicit
        # reshape keeps the layout obvious and lets XLA pick its best GEMM.
        self.patch_embed = nnx.Linear(p * p * 3, d, use_bias=False, **kw)
        self.cls = nnx.Param(nnx.initializers.normal(0.02)(rngs.params(), (d,), param_dtype))
        self.pos = nnx.Param(
            nnx.initializers.normal(0.02)(rngs.params(), (cfg.num_patches + 1, d), param_dtype)
        )
        self.ln_pre = nnx.LayerNorm(d, epsilon=cfg.encoder.ln_eps, **kw)
        self.encoder = Encoder(cfg.encoder, **kw)
        self.ln_post = nnx.LayerNorm(d, epsilon=cfg.encoder.ln_eps, **kw)
        self.cfg, self.dtype = cfg, dtype

    def patchify(self, pixel_values: jax.Array) -> jax.Array:
        """[B, H, W, 3] -> [B, N, p*p*3], patches in row-major order, (row, col, channel) inside."""
        b, h, w, c = pixel_values.shape
        p, s = self.cfg.patch_size, self.cfg.image_size
        if (h, w, c) != (s, s, 3):
            raise ValueError(
                f"pixel_values must be [B, {s}, {s}, 3] (NHWC), got {pixel_values.shape}"
            )
        x = pixel_values.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
        return x.reshape(b, (h // p) * (w // p), p * p * c)

    def hidden_states(self, pixel_values: jax.Array, num_layers: int | None = None) -> jax.Array:
        """[B, H, W, 3] -> [B, N+1, D] after `num_layers` blocks (all by default), before ln_post."""
        x = self.patch_embed(self.patchify(pixel_values.astype(self.dtype)))
        cls = jnp.broadcast_to(self.cls[...].astype(x.dtype), (x.shape[0], 1, x.shape[-1]))
        x = jnp.concatenate([cls, x], axis=1) + self.pos[...].astype(x.dtype)
        return self.encoder(self.ln_pre(x), num_layers=num_layers)

    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        """[B, H, W, 3] -> pooled [B, D] (layer-normed class token)."""
        return self.ln_post(self.hidden_states(pixel_values)[:, 0])


class TextTower(nnx.Module):
    """Causal transformer over token ids, pooled at the end-of-text token."""

    def __init__(self, cfg: TextConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        d = cfg.encoder.width
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.tok_embed = nnx.Embed(cfg.vocab_size, d, **kw)
        self.pos = nnx.Param(
            nnx.initializers.normal(0.01)(rngs.params(), (cfg.context_length, d), param_dtype)
        )
        self.encoder = Encoder(cfg.encoder, **kw)
        self.ln_final = nnx.LayerNorm(d, epsilon=cfg.encoder.ln_eps, **kw)
        self.cfg = cfg

    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None) -> jax.Array:
        """input_ids [B, L] int, attention_mask [B, L] (1 = token, 0 = padding) -> pooled [B, D]."""
        length = input_ids.shape[1]
        if length > self.cfg.context_length:
            raise ValueError(
                f"text length {length} exceeds context_length {self.cfg.context_length}"
            )
        return self.from_embeddings(self.tok_embed(input_ids), input_ids, attention_mask)

    def from_embeddings(
        self, x: jax.Array, input_ids: jax.Array, attention_mask: jax.Array | None = None
    ) -> jax.Array:
        """Token embeddings x [B, L, D] (``tok_embed`` rows, some possibly replaced, e.g. by
        learned prompt context) -> pooled [B, D]; ``input_ids`` [B, L] only locate the pooled
        (end-of-text) token."""
        b, length = input_ids.shape
        x = x + self.pos[:length].astype(self.tok_embed.dtype)
        mask = jnp.tril(jnp.ones((length, length), dtype=bool))[None, None]
        if attention_mask is not None:
            mask = mask & attention_mask.astype(bool)[:, None, None, :]
        x = self.encoder(x, mask)
        if self.cfg.pooling == "argmax":
            idx = jnp.argmax(input_ids, axis=-1)
        else:
            idx = jnp.argmax(input_ids == self.cfg.eos_token_id, axis=-1)
        # Pool first, then normalise: LayerNorm is per token, so this equals HF and saves work.
        return self.ln_final(x[jnp.arange(b), idx])

    def pool_index(self, input_ids):
        """The pooled (end-of-text) position of each row of ``input_ids`` ``[B, L]`` -> ``[B]``,
        as ``from_embeddings`` picks it (numpy in, numpy out; jax in, jax out)."""
        xp = jnp if isinstance(input_ids, jax.Array) else np
        if self.cfg.pooling == "argmax":
            return xp.argmax(input_ids, axis=-1)
        return xp.argmax(input_ids == self.cfg.eos_token_id, axis=-1)

    def pool_shared_prefix(self, prefix: jax.Array, suffix: jax.Array, eot: jax.Array) -> jax.Array:
        """Pooled ``[B, D]`` of ``B`` sequences that share their first ``P`` token embeddings.

        Args:
          prefix: ``[P, D]`` token embeddings (``tok_embed`` rows or learned context, before
            positions) at positions ``0 .. P-1`` of every sequence.
          suffix: ``[B, S, D]`` each sequence's token embeddings at positions ``P .. P+S-1``.
          eot: ``[B]`` int, the pooled (end-of-text) position minus ``P`` (``0 <= eot < S``).

        Equals ``from_embeddings(concat(prefix, suffix))`` at the pooled tokens (up to float
        summation order) with less work, because the tower is causal: (1) the prefix's hidden
        states are the same in every sequence, so they are computed once (batch 1) and each
        suffix token attends to the prefix's keys/values plus its own causal ones; (2) tokens
        after ``eot`` never reach the pooled token, so padding costs nothing past ``S``; (3) in
        the last block only the pooled token's attention output, projection and MLP are needed
        (every token's keys/values still are). Padding masks are not needed: a right-padded
        sequence's pooled token attends to real tokens only.
        """
        p, s = prefix.shape[0], suffix.shape[1]
        b = suffix.shape[0]
        dt = self.tok_embed.dtype
        pos = self.pos[: p + s].astype(dt)
        xp = (prefix.astype(dt) + pos[:p])[None]  # [1, P, D]
        xs = suffix.astype(dt) + pos[p:]  # [B, S, D]
        causal_p = jnp.tril(jnp.ones((p, p), bool))[None, None]
        # Suffix query i (position P + i) sees every prefix key and suffix keys j <= i.
        key = jnp.arange(p + s)
        causal_s = (key[None, :] < p) | (key[None, :] - p <= jnp.arange(s)[:, None])
        causal_s = causal_s[None, None]  # [1, 1, S, P+S]
        rows = jnp.arange(b)
        blocks = list(self.encoder.layers)
        for i, blk in enumerate(blocks):
            att = blk.attn
            qkv_p = _qkv(att, blk.ln1(xp))  # [1, P, 3, H, E]
            qkv_s = _qkv(att, blk.ln1(xs))  # [B, S, 3, H, E]
            k = jnp.concatenate(
                [jnp.broadcast_to(qkv_p[:, :, 1], (b, *qkv_p.shape[1:2], *qkv_p.shape[3:])),
                 qkv_s[:, :, 1]], axis=1)  # fmt: skip
            v = jnp.concatenate(
                [jnp.broadcast_to(qkv_p[:, :, 2], (b, *qkv_p.shape[1:2], *qkv_p.shape[3:])),
                 qkv_s[:, :, 2]], axis=1)  # fmt: skip
            if i == len(blocks) - 1:  # only the pooled token from here on
                q = qkv_s[rows, eot, 0][:, None]  # [B, 1, H, E]
                mask = (key[None, :] < p + eot[:, None] + 1)[:, None, None]  # [B, 1, 1, P+S]
                x = xs[rows, eot][:, None] + _attn_out(att, attention(q, k, v, mask))
                x = x + blk.mlp(blk.ln2(x))
                return self.ln_final(x[:, 0])
            xp = xp + _attn_out(att, attention(qkv_p[:, :, 0], qkv_p[:, :, 1], qkv_p[:, :, 2],
                                               causal_p))  # fmt: skip
            xp = xp + blk.mlp(blk.ln2(xp))
            xs = xs + _attn_out(att, attention(qkv_s[:, :, 0], k, v, causal_s))
            xs = xs + blk.mlp(blk.ln2(xs))
        raise ValueError("pool_shared_prefix needs a tower with at least one block")


def _qkv(att, x: jax.Array) -> jax.Array:
    """``transformer.Attention``'s fused projection: x ``[B, T, D]`` -> ``[B, T, 3, H, E]``."""
    dt = att.dtype
    w, bias = att.qkv[...].astype(dt), att.qkv_bias[...].astype(dt)
    return jnp.einsum("btd,dkhe->btkhe", x, w) + bias


def _attn_out(att, y: jax.Array) -> jax.Array:
    """``transformer.Attention``'s output projection: ``[B, T, H, E]`` -> ``[B, T, D]``."""
    dt = att.dtype
    return jnp.einsum("bthe,hed->btd", y, att.out[...].astype(dt)) + att.out_bias[...].astype(dt)


class CLIP(nnx.Module):
    """CLIP with optional towers; `dtype` is the compute dtype, `param_dtype` the storage dtype."""

    def __init__(self, cfg: CLIPConfig, *, dtype=jnp.float32, param_dtype=None, rngs: nnx.Rngs):
        param_dtype = param_dtype or dtype
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.config = cfg
        # nnx.data: the towers are sub-modules even when absent (None), not static attributes.
        self.vision = nnx.data(VisionTower(cfg.vision, **kw) if cfg.vision is not None else None)
        self.text = nnx.data(TextTower(cfg.text, **kw) if cfg.text is not None else None)
        if cfg.vision is not None:
            self.vision.proj = nnx.Linear(
                cfg.vision.encoder.width, cfg.embed_dim, use_bias=False, **kw
            )
        if cfg.text is not None:
            self.text.proj = nnx.Linear(cfg.text.encoder.width, cfg.embed_dim, use_bias=False, **kw)
        # Only two-tower checkpoints have a temperature (kept fp32: it is exponentiated).
        two_towers = cfg.vision is not None and cfg.text is not None
        scale = nnx.Param(jnp.asarray(cfg.logit_scale_init, jnp.float32)) if two_towers else None
        self.logit_scale = nnx.data(scale)

    def encode_image(self, pixel_values: jax.Array) -> jax.Array:
        """pixel_values [B, H, W, 3] float, CLIP-normalised -> image embeddings [B, E] float32."""
        if self.vision is None:
            raise ValueError("this CLIP checkpoint has no vision tower")
        return self.vision.proj(self.vision(pixel_values)).astype(jnp.float32)

    def encode_text(
        self, input_ids: jax.Array, attention_mask: jax.Array | None = None
    ) -> jax.Array:
        """input_ids [B, L] int32 (+ attention_mask [B, L]) -> text embeddings [B, E] float32."""
        if self.text is None:
            raise ValueError("this CLIP checkpoint has no text tower")
        return self.text.proj(self.text(input_ids, attention_mask)).astype(jnp.float32)

    def __call__(self, pixel_values, input_ids, attention_mask=None) -> jax.Array:
        """Image-text logits [B_img, B_txt] = exp(logit_scale) * cos(image, text)."""
        img = self.encode_image(pixel_values)
        txt = self.encode_text(input_ids, attention_mask)
        img = img / jnp.linalg.norm(img, axis=-1, keepdims=True)
        txt = txt / jnp.linalg.norm(txt, axis=-1, keepdims=True)
        return jnp.exp(self.logit_scale[...]) * img @ txt.T


def init(cfg: CLIPConfig, seed: int = 0, dtype=jnp.float32, param_dtype=None) -> CLIP:
    """A randomly initialised CLIP (for tests, benchmarks and smoke runs)."""
    return CLIP(cfg, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(seed))


def detect_format(path: str) -> str:
    """'hf' (config.json + model.safetensors[.index.json]) or 'open_clip' (open_clip_config.json)."""
    if os.path.exists(os.path.join(path, "config.json")):
        return "hf"
    if os.path.exists(os.path.join(path, OPEN_CLIP_CONFIG)):
        return "open_clip"
    raise NotFoundError(
        f"{path}: neither a Hugging Face CLIP checkpoint (config.json) nor an OpenCLIP one "
        f"({OPEN_CLIP_CONFIG})"
    )


def load_config(path: str) -> tuple[CLIPConfig, str, str]:
    """Returns (config, format, HF model_type or 'open_clip') of a local checkpoint directory."""
    fmt = detect_format(path)
    if fmt == "hf":
        cfg, model_type = from_hf_dir(path)
        return cfg, fmt, model_type
    with open(os.path.join(path, OPEN_CLIP_CONFIG)) as f:
        return from_open_clip_dict(json.load(f), os.path.join(path, OPEN_CLIP_CONFIG)), fmt, fmt


def from_pretrained(
    path_or_id: str,
    dtype=jnp.float32,
    param_dtype=None,
    *,
    revision: str | None = None,
    cache_dir: str | None = None,
    shardings=None,
) -> CLIP:
    """Loads a Hugging Face (`CLIPModel`, `CLIP{Vision,Text}ModelWithProjection`) or OpenCLIP
    checkpoint from a local directory or a hub id, verifying every key and shape.

    Args:
      path_or_id: local directory or hub id (`openai/clip-vit-base-patch32`, `laion/...`).
      dtype: compute dtype (float32 on CPU, bfloat16 on accelerators).
      param_dtype: parameter storage dtype (default: `dtype`).
      shardings: optional callable `abstract_state -> shardings` (e.g.
        `functools.partial(vl_jax.parallel.param_shardings, mesh=mesh)`) to place each parameter
        directly on the mesh.

    Raises:
      FileNotFoundError: not a directory and not resolvable on the hub (offline, not cached).
      CheckpointError: missing, unexpected or mis-shaped keys, named.
    """
    path = resolve(path_or_id, revision=revision, cache_dir=cache_dir)
    cfg, fmt, model_type = load_config(path)
    if fmt == "hf":
        rules, ignore = clip_weights.hf_rules(cfg, model_type), clip_weights.HF_IGNORE
        reader = SafetensorsReader.from_dir(path)
    else:
        rules, ignore = clip_weights.open_clip_rules(cfg), clip_weights.OPEN_CLIP_IGNORE
        reader = SafetensorsReader.from_dir(path, prefix=OPEN_CLIP_WEIGHTS)
    # Each parameter is cast to its abstract dtype: param_dtype, but logit_scale stays float32.
    return load_model(
        lambda: CLIP(cfg, dtype=dtype, param_dtype=param_dtype or dtype, rngs=nnx.Rngs(0)),
        rules,
        reader,
        where=path,
        ignore=ignore,
        shardings=shardings,
    )


def save_pretrained(model: CLIP, path: str, fmt: str = "hf", dtype=None) -> None:
    """Writes `model` as a HF `CLIPModel` directory (config.json + model.safetensors) or in
    OpenCLIP format (open_clip_config.json + open_clip_model.safetensors). Atomic per file."""
    cfg = model.config
    os.makedirs(path, exist_ok=True)
    state = nnx.state(model, nnx.Param)
    if fmt == "hf":
        tensors = export_state(state, clip_weights.hf_rules(cfg, _hf_model_type(cfg)), dtype)
        _write_json(os.path.join(path, "config.json"), _hf_config_dict(cfg))
        save_safetensors(tensors, os.path.join(path, "model.safetensors"), {"format": "pt"})
    elif fmt == "open_clip":
        tensors = export_state(state, clip_weights.open_clip_rules(cfg), dtype)
        _write_json(os.path.join(path, OPEN_CLIP_CONFIG), to_open_clip_dict(cfg))
        save_safetensors(tensors, os.path.join(path, f"{OPEN_CLIP_WEIGHTS}.safetensors"))
    else:
        raise ValueError(f"unknown checkpoint format '{fmt}' (expected 'hf' or 'open_clip')")


def _hf_model_type(cfg: CLIPConfig) -> str:
    if cfg.vision is not None and cfg.text is not None:
        return "clip"
    return "clip_vision_model" if cfg.vision is not None else "clip_text_model"


_HF_ACT = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh"}


def _hf_encoder_dict(e) -> dict:
    return {
        "hidden_size": e.width,
        "num_hidden_layers": e.layers,
        "num_attention_heads": e.heads,
        "intermediate_size": e.mlp_dim,
        "hidden_act": _HF_ACT[e.act],
        "layer_norm_eps": e.ln_eps,
    }


def _hf_config_dict(cfg: CLIPConfig) -> dict:
    vision = text = None
    if cfg.vision is not None:
        vision = {
            **_hf_encoder_dict(cfg.vision.encoder),
            "image_size": cfg.vision.image_size,
            "patch_size": cfg.vision.patch_size,
            "projection_dim": cfg.embed_dim,
            "model_type": "clip_vision_model",
        }
    if cfg.text is not None:
        t = cfg.text
        text = {
            **_hf_encoder_dict(t.encoder),
            "vocab_size": t.vocab_size,
            "max_position_embeddings": t.context_length,
            "projection_dim": cfg.embed_dim,
            "eos_token_id": 2 if t.pooling == "argmax" else t.eos_token_id,
            "model_type": "clip_text_model",
        }
    model_type = _hf_model_type(cfg)
    if model_type == "clip":
        return {
            "model_type": "clip",
            "architectures": ["CLIPModel"],
            "projection_dim": cfg.embed_dim,
            "logit_scale_init_value": cfg.logit_scale_init,
            "vision_config": vision,
            "text_config": text,
        }
    single = vision if vision is not None else text
    arch = "CLIPVisionModelWithProjection" if vision is not None else "CLIPTextModelWithProjection"
    return {**single, "architectures": [arch]}


def _write_json(path: str, obj: dict) -> None:
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=2)
