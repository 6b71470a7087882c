"""InstructBLIP (Vicuna) in Flax NNX, loading HF `InstructBlipForConditionalGeneration`.

    model = instructblip.from_pretrained("Salesforce/instructblip-vicuna-7b", dtype=jnp.bfloat16)
    processor = instructblip.load_processor("Salesforce/instructblip-vicuna-7b")
    inputs = processor(images=img, text=prompt, return_tensors="np")
    pixels = inputs["pixel_values"].transpose(0, 2, 3, 1)        # NCHW -> NHWC (ours)
    logits = model(inputs["input_ids"], pixels, inputs["qformer_input_ids"],
                   inputs["qformer_attention_mask"], inputs["attention_mask"])   # [B, T, V]

Architecture (HF's, EVA ViT-g style): a vision tower (patch convolution with bias, class token,
position embeddings, no pre-norm, pre-LN blocks whose fused q/k/v projection has a bias for q and
v only, post_layernorm), the Q-Former (`vl_jax.models.qformer`: Q learned queries read the image
by cross-attention and the instruction by self-attention), `language_projection` to the LLM width,
and a Llama-family decoder (`llm.LLM`, Vicuna). The processor puts Q image tokens
(`image_token_id`) at the start of every prompt, before its padding and BOS; the decoder's input
embeddings at those positions are the row's P = Q projected query outputs, in order.

For generation (`vl_jax.generate`) the steps are separate: `encode_images` once per distinct
image, `query_features` per row (the queries read that row's instruction, so each question has its
own features), `embed_inputs` to splice them in, then `language_model.forward` with a KV cache.
Shape letters: B rows, T tokens, N images, S image tokens (patches + class), C vision width,
L instruction tokens, P = Q query tokens, H Q-Former width, D text width, V vocabulary.
"""

from __future__ import annotations

import dataclasses
import functools
import types

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vl_jax.checkpoints import SafetensorsReader, load_model, resolve
from vl_jax.checkpoints.hub import DEFAULT_PATTERNS
from vl_jax.checkpoints.mapping import Rule, copy, linear, reshaped, split_rows
from vl_jax.errors import ConfigError
from vl_jax.models import clip_weights, llava, llm, qformer
from vl_jax.models.clip_config import VisionConfig, vision_from_hf
from vl_jax.models.qformer import QFormer, QFormerConfig
from vl_jax.models.siglip import patchify
from vl_jax.models.transformer import Encoder

__all__ = [
    "InstructBLIP",
    "InstructBLIPConfig",
    "VisionTower",
    "from_pretrained",
    "hf_ignore",
    "hf_rules",
    "init",
    "load_processor",
]


@dataclasses.dataclass(frozen=True)
class InstructBLIPConfig:
    vision: VisionConfig
    qformer: QFormerConfig
    text: llm.LLMConfig
    num_query_tokens: int
    image_token_id: int

    def __post_init__(self):
        if self.qformer.encoder_width != self.vision.encoder.width:
            raise ValueError(
                f"Q-Former encoder_hidden_size {self.qformer.encoder_width} != vision width "
                f"{self.vision.encoder.width}"
            )

    @property
    def num_image_tokens(self) -> int:
        """P: image tokens per row in input_ids (= query tokens)."""
        return self.num_query_tokens

    @classmethod
    def from_hf(cls, c) -> InstructBLIPConfig:
        """From a transformers `InstructBlipConfig` (Llama-family language models only)."""
        text = c.text_config
        if text.model_type == "t5":
            raise ConfigError(
                "InstructBLIP with a Flan-T5 language model is not supported; use a Vicuna "
                "checkpoint"
            )
        v = c.vision_config
        if not getattr(v, "qkv_bias", True):
            raise ValueError("InstructBLIP vision towers without qkv_bias are not supported")
        sizes = [v.image_size, v.patch_size]
        for i, s in enumerate(sizes):
            if isinstance(s, (list, tuple)):
                if len(set(s)) != 1:
                    raise ValueError(f"non-square InstructBLIP image or patch size {s}")
                sizes[i] = s[0]
        # vision_from_hf reads CLIP's field names, which InstructBLIP's vision config shares.
        fields = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
        fields = {k: getattr(v, k) for k in (*fields, "hidden_act", "layer_norm_eps")}
        vision = vision_from_hf(
            types.SimpleNamespace(**fields, image_size=sizes[0], patch_size=sizes[1])
        )
        if c.image_token_index is None:
            raise ValueError(
                "InstructBLIP config.json has no image_token_index (an older conversion); set it "
                "to the id of the tokenizer's <image> token"
            )
        return cls(
            vision=vision,
            qformer=QFormerConfig.from_hf(c.qformer_config),
            text=llm.LLMConfig.from_hf(text),
            num_query_tokens=int(c.num_query_tokens),
            image_token_id=int(c.image_token_index),
        )


class VisionTower(nnx.Module):
    """patchify -> linear (+bias) -> [class token; patches] + positions -> blocks -> LayerNorm."""

    def __init__(self, cfg: VisionConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        d, p = cfg.encoder.width, cfg.patch_size
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        normal = nnx.initializers.normal(0.02)
        # A patch-sized, patch-strided conv is a matmul over flattened patches (clip.VisionTower).
        self.patch_embed = nnx.Linear(p * p * 3, d, use_bias=True, **kw)
        self.cls = nnx.Param(normal(rngs.params(), (d,), param_dtype))
        self.pos = nnx.Param(normal(rngs.params(), (cfg.num_patches + 1, d), param_dtype))
        # transformer.Block: fused q/k/v with a [3, heads, E] bias whose k third the checkpoint
        # holds as zeros (HF `qkv.bias` = [q_bias, 0, v_bias]).
        self.encoder = Encoder(cfg.encoder, **kw)
        self.ln_post = nnx.LayerNorm(d, epsilon=cfg.encoder.ln_eps, **kw)
        self.cfg, self.dtype = cfg, dtype

    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        """[N, H, W, 3] -> [N, S, C], HF `last_hidden_state` (after post_layernorm)."""
        x = patchify(pixel_values.astype(self.dtype), self.cfg.image_size, self.cfg.patch_size)
        x = self.patch_embed(x)
        cls = jnp.broadcast_to(self.cls[...].astype(x.dtype), (x.shape[0], 1, x.shape[-1]))
        x = jnp.concatenate([cls, x], axis=1) + self.pos[...].astype(x.dtype)
        return self.ln_post(self.encoder(x))


class InstructBLIP(nnx.Module):
    """Vision tower + Q-Former + language projection + `llm.LLM`; `dtype` computes,
    `param_dtype` stores (the query tokens stay float32, as HF keeps them)."""

    def __init__(
        self, cfg: InstructBLIPConfig, *, dtype=jnp.float32, param_dtype=None, rngs: nnx.Rngs
    ):
        param_dtype = param_dtype or dtype
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.config, self.dtype = cfg, dtype
        self.vision_model = VisionTower(cfg.vision, **kw)
        h = cfg.qformer.width
        self.query_tokens = nnx.Param(jnp.zeros((cfg.num_query_tokens, h), jnp.float32))
        self.qformer = QFormer(cfg.qformer, **kw)
        self.language_projection = nnx.Linear(h, cfg.text.hidden_size, **kw)
        self.language_model = llm.LLM(cfg.text, **kw)

    def encode_images(self, pixel_values: jax.Array) -> jax.Array:
        """pixel_values [N, H, W, 3] (NHWC, normalised by the processor) -> [N, S, C]."""
        return self.vision_model(pixel_values)

    def query_features(self, image_embeds, image_index, qformer_ids, qformer_mask=None):
        """The Q-Former's query outputs of each row, projected to the LLM width.

        Args:
          image_embeds: [N, S, C] from `encode_images`.
          image_index: [B] int, the image of each row.
          qformer_ids, qformer_mask: [B, L] the row's instruction in the Q-Former vocabulary
            (the processor's `qformer_input_ids` / `qformer_attention_mask`).
        Returns:
          [B, P, D] in the compute dtype.
        """
        out = self.qformer(
            self.query_tokens[...], image_embeds, image_index, qformer_ids, qformer_mask
        )
        return self.language_projection(out)

    def embed_inputs(self, input_ids, features=None, feature_index=None) -> jax.Array:
        """Token embeddings with query features spliced in.

        Args:
          input_ids: [B, T] int, holding P image tokens per row that has an image.
          features: [M, P, D] from `query_features`, or None (text only).
          feature_index: [B] int, the features row of each row (default arange(B)).
        Returns:
          [B, T, D]: the k-th image token of row b gets features[feature_index[b], k], which is
          HF's `masked_scatter` when each row holds exactly P image tokens (as the processor
          makes them). Rows without image tokens are left unchanged.
        Raises:
          ValueError (only when input_ids are concrete): a row with neither 0 nor P image tokens.
        """
        x = self.language_model.embed(input_ids)
        if features is None:
            return x
        p = self.config.num_image_tokens
        if features.shape[1] != p:
            raise ValueError(f"features have {features.shape[1]} tokens per row, expected {p}")
        if not isinstance(input_ids, jax.core.Tracer):
            llava.check_image_tokens(input_ids, self.config, allow_empty=True)
        if feature_index is None:
            feature_index = jnp.arange(input_ids.shape[0], dtype=jnp.int32)
        is_image = input_ids == self.config.image_token_id  # [B, T]
        k = jnp.clip(jnp.cumsum(is_image, axis=1) - 1, 0, p - 1)
        picked = features.astype(x.dtype)[jnp.asarray(feature_index, jnp.int32)[:, None], k]
        return jnp.where(is_image[..., None], picked, x)

    def __call__(
        self, input_ids, pixel_values, qformer_input_ids, qformer_attention_mask=None,
        attention_mask=None,
    ) -> jax.Array:  # fmt: skip
        """One image per row: input_ids [B, T], pixel_values [B, H, W, 3], qformer ids/mask
        [B, L], attention_mask [B, T] (1 = token) -> logits [B, T, V] float32, positions
        0..T-1 as in the HF forward."""
        b, t = input_ids.shape
        if not isinstance(input_ids, jax.core.Tracer):
            llava.check_image_tokens(input_ids, self.config, allow_empty=False)
        rows = jnp.arange(b, dtype=jnp.int32)
        feats = self.query_features(
            self.encode_images(pixel_values), rows, qformer_input_ids, qformer_attention_mask
        )
        x = self.embed_inputs(input_ids, feats)
        if attention_mask is None:
            attention_mask = jnp.ones((b, t), bool)
        positions = jnp.broadcast_to(jnp.arange(t), (b, t))
        hidden, _ = self.language_model.forward(x, positions, attention_mask)
        return self.language_model.logits(hidden)


# ---- checkpoints -------------------------------------------------------------------------------


# Per-block key names of `InstructBlipEncoderLayer` (clip_weights' table, BLIP's names).
_HF_BLOCK = dict(
    blocks="layers",
    ln1="layer_norm1",
    ln2="layer_norm2",
    out="self_attn.projection",
    fc1="mlp.fc1",
    fc2="mlp.fc2",
)


def _qkv_rules(split_qv: bool):
    """The fused q/k/v of a block: HF `self_attn.qkv.weight` [3C, C] -> [C, 3, heads, E], and
    `self_attn.qkv.bias` [3C] = [q_bias, 0, v_bias] -> [3, heads, E]; or (LAVIS-style key
    names, `split_qv`) `self_attn.q_bias` and `self_attn.v_bias` [C] with the k part zero."""

    def rules(o: str, t: str, c: int, h: int) -> list[Rule]:
        a, e = f"{t}.self_attn", c // h
        weight = split_rows(f"{o}.attn.qkv", f"{a}.qkv.weight", (c, 3, h, e), transpose=True)
        if not split_qv:
            bias = split_rows(f"{o}.attn.qkv_bias", f"{a}.qkv.bias", (3, h, e), transpose=False)
            return [weight, bias]

        def to_ours(q, v):
            return np.stack([q, np.zeros_like(q), v]).reshape(3, h, e)

        def to_ckpt(b):
            b = b.reshape(3, c)
            return b[0], b[2]

        bias = Rule(f"{o}.attn.qkv_bias", (f"{a}.q_bias", f"{a}.v_bias"), to_ours, to_ckpt)
        return [weight, bias]

    return rules


def vision_rules(v: VisionConfig, ours: str, theirs: str, split_qv: bool = False) -> list[Rule]:
    """Our VisionTower under `ours` <- HF `InstructBlipVisionModel` keys under `theirs`."""
    c, n = v.encoder.width, v.num_patches + 1
    e = f"{theirs}.embeddings"
    return [
        clip_weights.patch_embed_rule(
            f"{ours}.patch_embed.kernel", f"{e}.patch_embedding.weight", v
        ),
        copy(f"{ours}.patch_embed.bias", f"{e}.patch_embedding.bias"),
        reshaped(f"{ours}.cls", f"{e}.class_embedding", (c,), (1, 1, c)),
        reshaped(f"{ours}.pos", f"{e}.position_embedding", (n, c), (1, n, c)),
        *clip_weights.encoder_rules(
            f"{ours}.encoder", f"{theirs}.encoder", v.encoder, _HF_BLOCK, _qkv_rules(split_qv)
        ),
        *clip_weights.layer_norm_rules(f"{ours}.ln_post", f"{theirs}.post_layernorm"),
    ]


def hf_rules(cfg: InstructBLIPConfig, split_qv: bool = False) -> list[Rule]:
    """Our parameter paths <- `InstructBlipForConditionalGeneration` checkpoint keys (the hub's
    and transformers 5 `save_pretrained`'s layout: `vision_model.*`, `query_tokens`,
    `qformer.*`, `language_projection.*`, `language_model.model.*`, `language_model.lm_head`).
    `split_qv`: the vision attention's q/v biases stored as `q_bias` / `v_bias` (LAVIS names)."""
    q, h = cfg.num_query_tokens, cfg.qformer.width
    rules = vision_rules(cfg.vision, "vision_model", "vision_model", split_qv)
    rules += [
        reshaped("query_tokens", "query_tokens", (q, h), (1, q, h)),
        *qformer.hf_rules(cfg.qformer, "qformer", "qformer"),
        linear("language_projection.kernel", "language_projection.weight"),
        copy("language_projection.bias", "language_projection.bias"),
    ]
    text = llm.hf_rules(
        cfg.text, prefix="language_model.model.", lm_head="language_model.lm_head.weight"
    )
    return rules + [dataclasses.replace(r, target=f"language_model.{r.target}") for r in text]


def hf_ignore(cfg: InstructBLIPConfig) -> tuple[str, ...]:
    """Keys deliberately not loaded: buffers, and a tied decoder's stored output matrix."""
    return (r"\.position_ids$", *llm.hf_ignore(cfg.text, "language_model.lm_head.weight"))


def from_pretrained(
    path_or_id: str,
    dtype=jnp.float32,
    param_dtype=None,
    *,
    revision: str | None = None,
    cache_dir: str | None = None,
    shardings=None,
    mesh=None,
) -> InstructBLIP:
    """Loads a HF `InstructBlipForConditionalGeneration` checkpoint (Vicuna / Llama decoder;
    single or sharded safetensors; fp32/fp16/bf16 stored) from a directory or hub id, verifying
    every key and shape.

    Args:
      dtype: compute dtype; param_dtype: storage dtype (default `dtype`; the query tokens stay
        float32).
      shardings: optional callable `abstract_state -> shardings`; or `mesh`, for
        `vl_jax.parallel.param_shardings` on it. Each parameter is placed as it is read.
    Raises:
      ConfigError: a Flan-T5 checkpoint (named).
      ValueError: not an InstructBLIP checkpoint, or an unsupported part (named).
      CheckpointError: missing / unexpected / mis-shaped key (named).
    """
    import transformers

    path = resolve(path_or_id, revision=revision, cache_dir=cache_dir)
    hf = transformers.AutoConfig.from_pretrained(path)
    if hf.model_type != "instructblip":
        raise ValueError(f"{path}: model_type '{hf.model_type}' is not 'instructblip'")
    cfg = InstructBLIPConfig.from_hf(hf)
    if shardings is None and mesh is not None:
        from vl_jax import parallel

        shardings = functools.partial(parallel.param_shardings, mesh=mesh)
    reader = SafetensorsReader.from_dir(path)
    split_qv = "vision_model.encoder.layers.0.self_attn.q_bias" in reader
    return load_model(
        lambda: InstructBLIP(cfg, dtype=dtype, param_dtype=param_dtype or dtype, rngs=nnx.Rngs(0)),
        hf_rules(cfg, split_qv),
        reader,
        where=path,
        ignore=hf_ignore(cfg),
        shardings=shardings,
    )


def load_processor(path_or_id: str, *, revision: str | None = None, cache_dir: str | None = None):
    """The checkpoint's transformers `InstructBlipProcessor` (BLIP image processor, the LLM
    tokenizer, the Q-Former's BERT tokenizer from `qformer_tokenizer/`; never remote code). Its
    `pixel_values` are NCHW: pass `.transpose(0, 2, 3, 1)` to our model, or wrap
    `processor.image_processor` in `vl_jax.preprocess.HFImageProcessor` for the input pipeline."""
    import transformers

    path = resolve(
        path_or_id,
        revision=revision,
        cache_dir=cache_dir,
        allow_patterns=(*DEFAULT_PATTERNS, "*.jinja"),
    )
    return transformers.InstructBlipProcessor.from_pretrained(path, trust_remote_code=False)


def init(cfg: InstructBLIPConfig, seed: int = 0, dtype=jnp.float32, param_dtype=None):
    """A randomly initialised InstructBLIP (tests, benchmarks)."""
    return InstructBLIP(cfg, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(seed))
