"""LLaVA-1.5 (and LLaVA-Interleave) in Flax NNX, loading HF `LlavaForConditionalGeneration`.

    model = llava.from_pretrained("llava-hf/llava-1.5-7b-hf", dtype=jnp.bfloat16)
    processor = llava.load_processor("llava-hf/llava-1.5-7b-hf")   # transformers AutoProcessor
    inputs = processor(images=img, text=prompt, return_tensors="np")
    pixels = inputs["pixel_values"].transpose(0, 2, 3, 1)        # NCHW -> NHWC (ours)
    logits = model(inputs["input_ids"], pixels, inputs["attention_mask"])   # [B, T, V]

Architecture: a vision tower (CLIP ViT or SigLIP, by `vision_config.model_type`) read at
`vision_feature_layer` (strategy "default" drops the first token, CLIP's class token; "full" keeps
all), a 2-layer MLP projector, and a Llama-family decoder (`llm.LLM`) whose input embeddings at the
`image_token_id` positions are replaced by the P projected image features, in order. The prompt must
already hold P image tokens per image, as the HF processor expands them.

For generation (`vl_jax.generate`), the three steps are separate: `encode_images` once per distinct
image, `embed_inputs` to splice them into any number of prompts (`image_index` says which image a
row uses), then `language_model.forward` with a KV cache. Shape letters: B rows, T tokens, N images,
P image tokens per image, C vision width, D text width, V vocabulary.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vl_jax.checkpoints import SafetensorsReader, load_model, resolve
from vl_jax.checkpoints.hub import DEFAULT_PATTERNS
from vl_jax.checkpoints.mapping import Rule, copy, linear
from vl_jax.models import clip, clip_weights, llm, siglip
from vl_jax.models.clip_config import VisionConfig, vision_from_hf
from vl_jax.models.transformer import ACTIVATIONS, HF_ACTIVATIONS, sharded
from vl_jax.parallel import MODEL

__all__ = [
    "LLaVA",
    "LLaVAConfig",
    "Layout",
    "check_image_tokens",
    "detect_layout",
    "from_pretrained",
    "hf_rules",
    "load_processor",
]

VISION_TYPES = {"clip_vision_model": "clip", "siglip_vision_model": "siglip"}


@dataclasses.dataclass(frozen=True)
class LLaVAConfig:
    vision_type: str  # "clip" | "siglip"
    vision: VisionConfig
    text: llm.LLMConfig
    image_token_id: int
    # Indices into HF's vision hidden_states (0 = embeddings, i = after block i), made
    # non-negative; several are concatenated along the channels (newer configs).
    feature_layers: tuple[int, ...] = (-2,)
    select_strategy: str = "default"  # "default": drop the first token; "full": keep all
    projector_act: str = "gelu"
    projector_bias: bool = True

    def __post_init__(self):
        if self.vision_type not in ("clip", "siglip"):
            raise ValueError(f"unsupported vision tower '{self.vision_type}'")
        if self.select_strategy not in ("default", "full"):
            raise ValueError(
                f"vision_feature_select_strategy must be 'default' or 'full', "
                f"got '{self.select_strategy}'"
            )
        n = self.vision.encoder.layers + 1
        bad = [i for i in self.feature_layers if not -n <= i < n]
        if bad or not self.feature_layers:
            raise ValueError(
                f"vision_feature_layer {bad or '[]'} outside a tower of {n - 1} layers"
            )
        object.__setattr__(self, "feature_layers", tuple(i % n for i in self.feature_layers))
        if self.projector_act not in ACTIVATIONS:
            raise ValueError(f"unsupported projector activation '{self.projector_act}'")

    @property
    def num_image_tokens(self) -> int:
        """P: image features per image (= image tokens the prompt must hold per image)."""
        n = self.vision.num_patches + (1 if self.vision_type == "clip" else 0)
        return n - (1 if self.select_strategy == "default" else 0)

    @classmethod
    def from_hf(cls, c) -> LLaVAConfig:
        """From a transformers `LlavaConfig`."""
        v = c.vision_config
        kind = VISION_TYPES.get(v.model_type)
        if kind is None:
            raise ValueError(
                f"unsupported LLaVA vision tower '{v.model_type}' (supported: {sorted(VISION_TYPES)})"
            )
        vision = vision_from_hf(v) if kind == "clip" else siglip.config_from_hf(v)
        text = llm.LLMConfig.from_hf(c.text_config)
        # HF ties the output embedding when the top-level flag says so (it inherits the text one).
        tied = bool(getattr(c, "tie_word_embeddings", False)) or text.tie_word_embeddings
        act = HF_ACTIVATIONS.get(c.projector_hidden_act, c.projector_hidden_act)
        layers = c.vision_feature_layer
        return cls(
            vision_type=kind,
            vision=vision,
            text=dataclasses.replace(text, tie_word_embeddings=tied),
            image_token_id=int(c.image_token_index),
            feature_layers=(layers,) if isinstance(layers, int) else tuple(layers),
            select_strategy=c.vision_feature_select_strategy,
            projector_act=act,
            projector_bias=bool(getattr(c, "multimodal_projector_bias", True)),
        )


class Projector(nnx.Module):
    """linear_2(act(linear_1(x))): vision width (x feature layers) -> text width."""

    def __init__(self, cfg: LLaVAConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        c, d = cfg.vision.encoder.width * len(cfg.feature_layers), cfg.text.hidden_size
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs, use_bias=cfg.projector_bias)
        init = nnx.initializers.lecun_normal()
        zeros = nnx.initializers.zeros
        self.linear_1 = nnx.Linear(
            c, d, kernel_init=sharded(init, (None, MODEL)), bias_init=sharded(zeros, (MODEL,)), **kw
        )
        self.linear_2 = nnx.Linear(d, d, kernel_init=sharded(init, (MODEL, None)), **kw)
        self.act = ACTIVATIONS[cfg.projector_act]

    def __call__(self, x):
        return self.linear_2(self.act(self.linear_1(x)))


class LLaVA(nnx.Module):
    """Vision tower + projector + `llm.LLM`; `dtype` computes, `param_dtype` stores."""

    def __init__(self, cfg: LLaVAConfig, *, dtype=jnp.float32, param_dtype=None, rngs: nnx.Rngs):
        param_dtype = param_dtype or dtype
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.config, self.dtype = cfg, dtype
        tower = clip.VisionTower if cfg.vision_type == "clip" else siglip.SiglipVisionTower
        self.vision_tower = tower(cfg.vision, **kw)
        self.projector = Projector(cfg, **kw)
        self.language_model = llm.LLM(cfg.text, **kw)

    def encode_images(self, pixel_values: jax.Array) -> jax.Array:
        """pixel_values [N, H, W, 3] (NHWC, normalised by the processor) -> [N, P, D] features."""
        cfg, tower = self.config, self.vision_tower
        x = tower.hidden_states(pixel_values, num_layers=0)  # HF hidden_states[0]
        wanted = {0: x} if 0 in cfg.feature_layers else {}
        # Only the blocks up to the deepest selected layer run (LLaVA-1.5 skips the last one).
        for i, block in enumerate(tower.encoder.layers[: max(cfg.feature_layers)]):
            x = block(x)
            if i + 1 in cfg.feature_layers:
                wanted[i + 1] = x
        feats = jnp.concatenate([wanted[i] for i in cfg.feature_layers], axis=-1)
        if cfg.select_strategy == "default":
            feats = feats[:, 1:]
        return self.projector(feats)

    def embed_inputs(
        self,
        input_ids: jax.Array,
        image_features: jax.Array | None = None,
        image_index: jax.Array | None = None,
    ) -> jax.Array:
        """Token embeddings with image features spliced in.

        Args:
          input_ids: [B, T] int, holding P image tokens per row that has an image.
          image_features: [N, P, D] from `encode_images`, or None (text only).
          image_index: [B] int32, the image of each row (default arange(B)); rows without image
            tokens are left unchanged whatever their index.
        Returns:
          [B, T, D] in the compute dtype: the k-th image token of row b gets
          image_features[image_index[b], k].
        Raises:
          ValueError (only when input_ids are concrete, not under jit): a row whose image-token
            count is neither 0 nor P. Under jit call `check_image_tokens` on the host first.
        """
        x = self.language_model.embed(input_ids)
        if image_features is None:
            return x
        b = input_ids.shape[0]
        n, p = image_features.shape[:2]
        if p != self.config.num_image_tokens:
            raise ValueError(
                f"image_features have {p} tokens per image, expected {self.config.num_image_tokens}"
            )
        if not isinstance(input_ids, jax.core.Tracer):
            check_image_tokens(input_ids, self.config, allow_empty=True)
        if image_index is None:
            image_index = jnp.arange(b, dtype=jnp.int32)
        is_image = input_ids == self.config.image_token_id  # [B, T]
        # k-th image token of row b reads row image_index[b] * P + k of the flattened features.
        k = jnp.clip(jnp.cumsum(is_image, axis=1) - 1, 0, p - 1)
        flat = image_features.reshape(n * p, -1).astype(x.dtype)
        picked = flat[jnp.asarray(image_index, jnp.int32)[:, None] * p + k]  # [B, T, D]
        return jnp.where(is_image[..., None], picked, x)

    def __call__(self, input_ids, pixel_values, attention_mask=None) -> jax.Array:
        """One image per row: input_ids [B, T], pixel_values [B, H, W, 3], attention_mask [B, T]
        (1 = token) -> logits [B, T, V] float32, positions 0..T-1 as in the HF forward."""
        b, t = input_ids.shape
        if not isinstance(input_ids, jax.core.Tracer):
            check_image_tokens(input_ids, self.config, allow_empty=False)
        x = self.embed_inputs(input_ids, self.encode_images(pixel_values))
        if attention_mask is None:
            attention_mask = jnp.ones((b, t), bool)
        positions = jnp.broadcast_to(jnp.arange(t), (b, t))
        hidden, _ = self.language_model.forward(x, positions, attention_mask)
        return self.language_model.logits(hidden)


def check_image_tokens(input_ids, cfg: LLaVAConfig, allow_empty: bool = True) -> None:
    """Host-side check that every row of input_ids [B, T] holds exactly P image tokens (or none,
    with `allow_empty`). Raises ValueError naming the first bad row and both counts."""
    counts = (np.asarray(input_ids) == cfg.image_token_id).sum(axis=1)
    p = cfg.num_image_tokens
    for row, count in enumerate(counts):
        if count != p and not (allow_empty and count == 0):
            raise ValueError(
                f"row {row} of input_ids has {count} image tokens (id {cfg.image_token_id}), "
                f"expected {p} (one image's features; the processor expands <image>)"
            )


# ---- checkpoints -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where the parts of a `LlavaForConditionalGeneration` live in a checkpoint (key prefixes)."""

    text: str  # decoder body: embed_tokens, layers, norm
    lm_head: str  # full key of the output projection
    vision: str
    projector: str


# Key prefixes by part, most specific first. Hub checkpoints (llava-hf/*, transformers 4 era):
# language_model.model.*, language_model.lm_head.weight, vision_tower.vision_model.*,
# multi_modal_projector.*. transformers 5 `save_pretrained` writes the same except
# vision_tower.* (its CLIP/SigLIP vision models dropped the `vision_model` level). transformers 5
# in memory (state_dict): model.language_model.*, model.vision_tower.*, model.multi_modal_projector.*,
# lm_head.weight.
_CANDIDATES = {
    "text": ("language_model.model.", "model.language_model."),
    "vision": (
        "vision_tower.vision_model.",
        "model.vision_tower.vision_model.",
        "vision_tower.",
        "model.vision_tower.",
    ),
    "projector": ("multi_modal_projector.", "model.multi_modal_projector."),
}
_LM_HEADS = ("language_model.lm_head.weight", "lm_head.weight")


def detect_layout(keys) -> Layout:
    """The layout of a checkpoint from its keys; parts it lacks get the hub layout's prefix, so
    that the loader reports their first missing key by its hub name."""
    keys = list(keys)
    pick = {
        part: next((c for c in cands if any(k.startswith(c) for k in keys)), cands[0])
        for part, cands in _CANDIDATES.items()
    }
    lm_head = next(
        (h for h in _LM_HEADS if h in keys),
        _LM_HEADS[0] if pick["text"] == _CANDIDATES["text"][0] else _LM_HEADS[1],
    )
    return Layout(pick["text"], lm_head, pick["vision"], pick["projector"])


def _under(prefix: str, rules: list[Rule]) -> list[Rule]:
    return [dataclasses.replace(r, target=f"{prefix}.{r.target}") for r in rules]


def hf_rules(cfg: LLaVAConfig, layout: Layout) -> list[Rule]:
    """Our parameter paths <- checkpoint keys in `layout`."""
    v = layout.vision.removesuffix(".")
    if cfg.vision_type == "clip":
        rules = clip_weights.hf_vision_tower_rules(cfg.vision, ours="vision_tower", theirs=v)
    else:
        rules = siglip.hf_rules(cfg.vision, ours="vision_tower", theirs=v)
    for name in ("linear_1", "linear_2"):
        rules.append(linear(f"projector.{name}.kernel", f"{layout.projector}{name}.weight"))
        if cfg.projector_bias:
            rules.append(copy(f"projector.{name}.bias", f"{layout.projector}{name}.bias"))
    text = llm.hf_rules(cfg.text, prefix=layout.text, lm_head=layout.lm_head)
    return rules + _under("language_model", text)


def hf_ignore(cfg: LLaVAConfig, layout: Layout) -> tuple[str, ...]:
    """Keys deliberately not loaded: buffers, SigLIP's pooling head, a tied model's stored lm_head."""
    ignore = (r"\.position_ids$", r"rotary_emb\.inv_freq$")
    if cfg.vision_type == "siglip":
        ignore += siglip.hf_ignore(layout.vision.removesuffix("."))
    if cfg.text.tie_word_embeddings:
        ignore += tuple(f"^{h.replace('.', '[.]')}$" for h in _LM_HEADS)
    return ignore


def from_pretrained(
    path_or_id: str,
    dtype=jnp.float32,
    param_dtype=None,
    *,
    revision: str | None = None,
    cache_dir: str | None = None,
    shardings=None,
) -> LLaVA:
    """Loads a HF `LlavaForConditionalGeneration` checkpoint (any layout, see `detect_layout`;
    single or sharded safetensors; fp32/fp16/bf16) from a directory or hub id, verifying every key
    and shape.

    Args:
      dtype: compute dtype; param_dtype: storage dtype (default `dtype`).
      shardings: optional callable `abstract_state -> shardings` to place parameters on a mesh.
    Raises:
      ValueError: not a LLaVA checkpoint, or an unsupported tower / decoder (named).
      CheckpointError: missing / unexpected / mis-shaped key (named).
    """
    import transformers

    path = resolve(path_or_id, revision=revision, cache_dir=cache_dir)
    hf = transformers.AutoConfig.from_pretrained(path)
    if hf.model_type != "llava":
        raise ValueError(f"{path}: model_type '{hf.model_type}' is not 'llava'")
    cfg = LLaVAConfig.from_hf(hf)
    reader = SafetensorsReader.from_dir(path)
    layout = detect_layout(reader.keys())
    return load_model(
        lambda: LLaVA(cfg, dtype=dtype, param_dtype=param_dtype or dtype, rngs=nnx.Rngs(0)),
        hf_rules(cfg, layout),
        reader,
        where=path,
        ignore=hf_ignore(cfg, layout),
        shardings=shardings,
    )


def load_processor(path_or_id: str, *, revision: str | None = None, cache_dir: str | None = None):
    """The checkpoint's transformers `AutoProcessor` (tokenizer, chat template, image processor;
    never remote code). Its `pixel_values` are NCHW: pass `.transpose(0, 2, 3, 1)` to our models."""
    import transformers

    path = resolve(
        path_or_id,
        revision=revision,
        cache_dir=cache_dir,
        allow_patterns=(*DEFAULT_PATTERNS, "*.jinja"),  # chat_template.jinja in newer repos
    )
    return transformers.AutoProcessor.from_pretrained(path, trust_remote_code=False)


def init(cfg: LLaVAConfig, seed: int = 0, dtype=jnp.float32, param_dtype=None) -> LLaVA:
    """A randomly initialised LLaVA (tests, benchmarks)."""
    return LLaVA(cfg, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(seed))
