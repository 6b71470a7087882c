"""Mapping tables between our CLIP parameters and Hugging Face / OpenCLIP checkpoint keys.

Our paths (see `vl_jax.models.clip`): `vision.patch_embed.kernel` [p*p*3, D], `vision.cls` [D],
`vision.pos` [N+1, D], `vision.ln_pre`, `vision.encoder.layers.i.{ln1, attn, ln2, mlp}`,
`vision.ln_post`, `vision.proj.kernel` [D, E]; `text.tok_embed.embedding` [V, D], `text.pos` [L, D],
`text.encoder...`, `text.ln_final`, `text.proj.kernel` [D, E]; `logit_scale` []. Attention keeps
q/k/v fused as [D, 3, H, Dh] and the output projection as [H, Dh, D].
"""

from __future__ import annotations

from vl_jax.checkpoints.mapping import Rule, copy, linear, reshaped, split_rows, stacked
from vl_jax.models.clip_config import CLIPConfig, VisionConfig
from vl_jax.models.transformer import EncoderConfig

# Buffers some checkpoints carry that are not parameters.
HF_IGNORE = (r"\.position_ids$",)
OPEN_CLIP_IGNORE = (r"^attn_mask$", r"\.attn_mask$")


def layer_norm_rules(ours: str, theirs: str) -> list[Rule]:
    return [copy(f"{ours}.scale", f"{theirs}.weight"), copy(f"{ours}.bias", f"{theirs}.bias")]


def patch_embed_rule(ours: str, theirs: str, v: VisionConfig) -> Rule:
    p, d = v.patch_size, v.encoder.width
    # torch conv [D, 3, p, p] -> [p, p, 3, D] -> [p*p*3, D], matching our (row, col, channel) patches.
    return reshaped(ours, theirs, (p * p * 3, d), (d, 3, p, p), perm=(2, 3, 1, 0))


# Per-block key names of the two formats, and how each stores the q/k/v projection.
_HF_BLOCK = dict(
    blocks="layers",
    ln1="layer_norm1",
    ln2="layer_norm2",
    out="self_attn.out_proj",
    fc1="mlp.fc1",
    fc2="mlp.fc2",
)
_OPEN_CLIP_BLOCK = dict(
    blocks="resblocks",
    ln1="ln_1",
    ln2="ln_2",
    out="attn.out_proj",
    fc1="mlp.c_fc",
    fc2="mlp.c_proj",
)


def _hf_qkv(o: str, t: str, d: int, h: int) -> list[Rule]:
    """HF: separate q/k/v Linear layers."""
    qkv = [f"{t}.self_attn.{n}_proj" for n in "qkv"]
    return [
        stacked(f"{o}.attn.qkv", [f"{k}.weight" for k in qkv], (d, 3, h, d // h), transpose=True),
        stacked(f"{o}.attn.qkv_bias", [f"{k}.bias" for k in qkv], (3, h, d // h), transpose=False),
    ]


def _open_clip_qkv(o: str, t: str, d: int, h: int) -> list[Rule]:
    """OpenCLIP (torch nn.MultiheadAttention): one fused in_proj [3D, D] and bias [3D]."""
    return [
        split_rows(f"{o}.attn.qkv", f"{t}.attn.in_proj_weight", (d, 3, h, d // h), transpose=True),
        split_rows(f"{o}.attn.qkv_bias", f"{t}.attn.in_proj_bias", (3, h, d // h), transpose=False),
    ]


def encoder_rules(ours: str, theirs: str, e: EncoderConfig, names: dict, qkv_rules) -> list[Rule]:
    """A `transformer.Encoder` under `ours` <- its blocks under `theirs`, with per-block key
    `names` (as `_HF_BLOCK`) and `qkv_rules(ours_block, theirs_block, width, heads)` for the
    q/k/v projection, which each format stores its own way."""
    d, h = e.width, e.heads
    rules = []
    for i in range(e.layers):
        o, t = f"{ours}.layers.{i}", f"{theirs}.{names['blocks']}.{i}"
        rules += [
            *qkv_rules(o, t, d, h),
            reshaped(f"{o}.attn.out", f"{t}.{names['out']}.weight", (h, d // h, d), (d, d), (1, 0)),
            copy(f"{o}.attn.out_bias", f"{t}.{names['out']}.bias"),
            linear(f"{o}.mlp.fc1.kernel", f"{t}.{names['fc1']}.weight"),
            copy(f"{o}.mlp.fc1.bias", f"{t}.{names['fc1']}.bias"),
            linear(f"{o}.mlp.fc2.kernel", f"{t}.{names['fc2']}.weight"),
            copy(f"{o}.mlp.fc2.bias", f"{t}.{names['fc2']}.bias"),
            *layer_norm_rules(f"{o}.ln1", f"{t}.{names['ln1']}"),
            *layer_norm_rules(f"{o}.ln2", f"{t}.{names['ln2']}"),
        ]
    return rules


def hf_encoder_rules(ours: str, theirs: str, e: EncoderConfig) -> list[Rule]:
    return encoder_rules(ours, theirs, e, _HF_BLOCK, _hf_qkv)


def _open_clip_encoder(ours: str, theirs: str, e: EncoderConfig) -> list[Rule]:
    return encoder_rules(ours, theirs, e, _OPEN_CLIP_BLOCK, _open_clip_qkv)


def hf_vision_tower_rules(v: VisionConfig, ours: str = "vision", theirs: str = "vision_model"):
    """The ViT body of a HF CLIP vision model (no projection); reused by LLaVA-style models."""
    return [
        patch_embed_rule(
            f"{ours}.patch_embed.kernel", f"{theirs}.embeddings.patch_embedding.weight", v
        ),
        copy(f"{ours}.cls", f"{theirs}.embeddings.class_embedding"),
        copy(f"{ours}.pos", f"{theirs}.embeddings.position_embedding.weight"),
        *layer_norm_rules(f"{ours}.ln_pre", f"{theirs}.pre_layrnorm"),  # sic: HF's spelling
        *hf_encoder_rules(f"{ours}.encoder", f"{theirs}.encoder", v.encoder),
        *layer_norm_rules(f"{ours}.ln_post", f"{theirs}.post_layernorm"),
    ]


def hf_rules(cfg: CLIPConfig, model_type: str = "clip") -> list[Rule]:
    """Rules for HF `CLIPModel` (model_type clip) and the single-tower `*WithProjection` models."""
    rules: list[Rule] = []
    if cfg.vision is not None:
        rules += hf_vision_tower_rules(cfg.vision)
        rules.append(linear("vision.proj.kernel", "visual_projection.weight"))
    if cfg.text is not None:
        t = "text_model"
        rules += [
            copy("text.tok_embed.embedding", f"{t}.embeddings.token_embedding.weight"),
            copy("text.pos", f"{t}.embeddings.position_embedding.weight"),
            *hf_encoder_rules("text.encoder", f"{t}.encoder", cfg.text.encoder),
            *layer_norm_rules("text.ln_final", f"{t}.final_layer_norm"),
            linear("text.proj.kernel", "text_projection.weight"),
        ]
    if model_type == "clip":
        rules.append(copy("logit_scale", "logit_scale"))
    return rules


def open_clip_rules(cfg: CLIPConfig) -> list[Rule]:
    """Rules for OpenCLIP's `CLIP` state dict (ViT image tower + transformer text tower).

    OpenCLIP stores projections as plain [D, E] matrices used as `x @ proj`, i.e. already in our
    kernel layout.
    """
    if cfg.vision is None or cfg.text is None:
        raise ValueError("the OpenCLIP format needs both towers")
    return [
        patch_embed_rule("vision.patch_embed.kernel", "visual.conv1.weight", cfg.vision),
        copy("vision.cls", "visual.class_embedding"),
        copy("vision.pos", "visual.positional_embedding"),
        *layer_norm_rules("vision.ln_pre", "visual.ln_pre"),
        *_open_clip_encoder("vision.encoder", "visual.transformer", cfg.vision.encoder),
        *layer_norm_rules("vision.ln_post", "visual.ln_post"),
        copy("vision.proj.kernel", "visual.proj"),
        copy("text.tok_embed.embedding", "token_embedding.weight"),
        copy("text.pos", "positional_embedding"),
        *_open_clip_encoder("text.encoder", "transformer", cfg.text.encoder),
        *layer_norm_rules("text.ln_final", "ln_final"),
        copy("text.proj.kernel", "text_projection"),
        copy("logit_scale", "logit_scale"),
    ]
