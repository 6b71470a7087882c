"""CLIP configuration, and its translation from Hugging Face and OpenCLIP config files."""

from __future__ import annotations

import dataclasses
import json
import os

from vl_jax.models.transformer import HF_ACTIVATIONS, EncoderConfig

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    encoder: EncoderConfig
    image_size: int = 224
    patch_size: int = 32

    def __post_init__(self):
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch {self.patch_size}"
            )

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2


@dataclasses.dataclass(frozen=True)
class TextConfig:
    encoder: EncoderConfig
    vocab_size: int = 49408
    context_length: int = 77
    # "eos": first position of `eos_token_id` (HF since PR #24773);
    # "argmax": position of the largest token id (original OpenAI CLIP / OpenCLIP / HF eos_token_id=2).
    pooling: str = "eos"
    eos_token_id: int = 49407

    def __post_init__(self):
        if self.pooling not in ("eos", "argmax"):
            raise ValueError(f"text pooling must be 'eos' or 'argmax', got '{self.pooling}'")


@dataclasses.dataclass(frozen=True)
class CLIPConfig:
    """A CLIP model; either tower may be absent (vision-only / text-only checkpoints)."""

    vision: VisionConfig | None
    text: TextConfig | None
    embed_dim: int = 512
    logit_scale_init: float = 2.6592
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD


# ---- Hugging Face ------------------------------------------------------------------------------


def _hf_encoder(c) -> EncoderConfig:
    act = HF_ACTIVATIONS.get(c.hidden_act)
    if act is None:
        raise ValueError(
            f"unsupported hidden_act '{c.hidden_act}' (supported: {sorted(HF_ACTIVATIONS)})"
        )
    return EncoderConfig(
        width=c.hidden_size,
        layers=c.num_hidden_layers,
        heads=c.num_attention_heads,
        mlp_dim=c.intermediate_size,
        act=act,
        ln_eps=c.layer_norm_eps,
    )


def vision_from_hf(c) -> VisionConfig:
    """From a `transformers.CLIPVisionConfig`."""
    return VisionConfig(_hf_encoder(c), image_size=c.image_size, patch_size=c.patch_size)


def text_from_hf(c) -> TextConfig:
    """From a `transformers.CLIPTextConfig`."""
    return TextConfig(
        _hf_encoder(c),
        vocab_size=c.vocab_size,
        context_length=c.max_position_embeddings,
        pooling="argmax" if c.eos_token_id == 2 else "eos",
        eos_token_id=c.eos_token_id,
    )


def from_hf_dir(path: str) -> tuple[CLIPConfig, str]:
    """Reads `config.json` of a HF CLIP checkpoint. Returns (config, HF model_type).

    model_type `clip` (CLIPModel), `clip_vision_model` (CLIPVisionModel[WithProjection]) or
    `clip_text_model` (CLIPTextModel[WithProjection]).
    """
    import transformers

    try:
        hf = transformers.AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: cannot read config.json ({e})") from e
    mean, std = _hf_preprocess_stats(path)
    if hf.model_type == "clip":
        cfg = CLIPConfig(
            vision_from_hf(hf.vision_config),
            text_from_hf(hf.text_config),
            embed_dim=hf.projection_dim,
            logit_scale_init=hf.logit_scale_init_value,
            mean=mean,
            std=std,
        )
    elif hf.model_type == "clip_vision_model":
        cfg = CLIPConfig(vision_from_hf(hf), None, embed_dim=hf.projection_dim, mean=mean, std=std)
    elif hf.model_type == "clip_text_model":
        cfg = CLIPConfig(None, text_from_hf(hf), embed_dim=hf.projection_dim, mean=mean, std=std)
    else:
        raise ValueError(f"{path}: config.json has model_type '{hf.model_type}', not a CLIP model")
    return cfg, hf.model_type


def _hf_preprocess_stats(path: str):
    f = os.path.join(path, "preprocessor_config.json")
    if not os.path.exists(f):
        return OPENAI_MEAN, OPENAI_STD
    with open(f) as fh:
        d = json.load(fh)
    return tuple(d.get("image_mean", OPENAI_MEAN)), tuple(d.get("image_std", OPENAI_STD))


# ---- OpenCLIP ----------------------------------------------------------------------------------

OPEN_CLIP_CONFIG = "open_clip_config.json"
OPEN_CLIP_WEIGHTS = "open_clip_model"  # open_clip_model.safetensors

# Options of OpenCLIP towers we implement, with the only value we support when not the default.
_VISION_UNSUPPORTED = (
    "timm_model_name",
    "attentional_pool",
    "ls_init_value",
    "no_ln_pre",
    "final_ln_after_pool",
    "output_tokens",
    "act_kwargs",
    "norm_kwargs",
)
_TEXT_UNSUPPORTED = (
    "hf_model_name",
    "ls_init_value",
    "embed_cls",
    "no_causal_mask",
    "proj_bias",
    "act_kwargs",
    "norm_kwargs",
    "attn_mask",
)


def from_open_clip_dict(d: dict, where: str = OPEN_CLIP_CONFIG) -> CLIPConfig:
    """From the contents of an `open_clip_config.json` ({"model_cfg": ..., "preprocess_cfg": ...})."""
    model = d.get("model_cfg", d)
    vc, tc = model.get("vision_cfg", {}), model.get("text_cfg", {})
    for key in _VISION_UNSUPPORTED:
        if vc.get(key):
            raise ValueError(f"{where}: vision_cfg.{key}={vc[key]!r} is not supported")
    for key in _TEXT_UNSUPPORTED:
        if tc.get(key):
            raise ValueError(f"{where}: text_cfg.{key}={tc[key]!r} is not supported")
    if vc.get("pool_type", "tok") != "tok" or tc.get("pool_type", "argmax") != "argmax":
        raise ValueError(
            f"{where}: only pool_type 'tok' (vision) and 'argmax' (text) are supported"
        )
    if isinstance(vc.get("layers", 12), (list, tuple)):
        raise ValueError(f"{where}: ResNet vision towers (layers as a list) are not supported")
    act = "quick_gelu" if model.get("quick_gelu", False) else "gelu"
    image_size = vc.get("image_size", 224)
    if isinstance(image_size, (list, tuple)):
        if image_size[0] != image_size[1]:
            raise ValueError(f"{where}: non-square image_size {image_size} is not supported")
        image_size = image_size[0]
    vwidth = vc.get("width", 768)
    vision = VisionConfig(
        EncoderConfig(
            width=vwidth,
            layers=vc.get("layers", 12),
            heads=vwidth // vc.get("head_width", 64),
            mlp_dim=int(vwidth * vc.get("mlp_ratio", 4.0)),
            act=act,
        ),
        image_size=image_size,
        patch_size=vc.get("patch_size", 16),
    )
    twidth = tc.get("width", 512)
    vocab = tc.get("vocab_size", 49408)
    text = TextConfig(
        EncoderConfig(
            width=twidth,
            layers=tc.get("layers", 12),
            heads=tc.get("heads", 8),
            mlp_dim=int(twidth * tc.get("mlp_ratio", 4.0)),
            act=act,
        ),
        vocab_size=vocab,
        context_length=tc.get("context_length", 77),
        pooling="argmax",
        eos_token_id=vocab - 1,
    )
    pre = d.get("preprocess_cfg", {})
    return CLIPConfig(
        vision,
        text,
        embed_dim=model.get("embed_dim", 512),
        mean=tuple(pre.get("mean", OPENAI_MEAN)),
        std=tuple(pre.get("std", OPENAI_STD)),
    )


def to_open_clip_dict(cfg: CLIPConfig) -> dict:
    """Inverse of `from_open_clip_dict` (both towers required)."""
    if cfg.vision is None or cfg.text is None:
        raise ValueError("the OpenCLIP format needs both towers")
    v, t = cfg.vision.encoder, cfg.text.encoder
    if v.act != t.act or v.act not in ("quick_gelu", "gelu"):
        raise ValueError(f"OpenCLIP cannot express activations {v.act}/{t.act}")
    if t.width // t.heads * t.heads != t.width or v.width % v.heads:
        raise ValueError("width must be divisible by heads")
    return {
        "model_cfg": {
            "embed_dim": cfg.embed_dim,
            "quick_gelu": v.act == "quick_gelu",
            "vision_cfg": {
                "image_size": cfg.vision.image_size,
                "layers": v.layers,
                "width": v.width,
                "head_width": v.width // v.heads,
                "mlp_ratio": v.mlp_dim / v.width,
                "patch_size": cfg.vision.patch_size,
            },
            "text_cfg": {
                "context_length": cfg.text.context_length,
                "vocab_size": cfg.text.vocab_size,
                "width": t.width,
                "heads": t.heads,
                "layers": t.layers,
                "mlp_ratio": t.mlp_dim / t.width,
            },
        },
        "preprocess_cfg": {"mean": list(cfg.mean), "std": list(cfg.std)},
    }
