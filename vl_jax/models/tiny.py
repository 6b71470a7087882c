"""The one definition of the tiny random models used by runlocal configs, the smoke run,
benchmarks and tests.

    path = tiny.write_clip(dir)                    # complete Hugging Face CLIP directory
    path = tiny.write_llava(dir)                   # LLaVA-1.5-style, with its processor
    path = tiny.write_instructblip(dir)            # InstructBLIP-Vicuna-style, with its processor
    cfg = tiny.clip_config(image_size=32)          # the same model family, other sizes

They exist to exercise the real code paths (a checkpoint written in Hugging Face's layout and
loaded back through the verified loader) in seconds on a CPU. Their weights are random, so
what they output means nothing. Sizes are keyword overrides of :data:`CLIP_FIELDS`; nothing
here needs PyTorch.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from flax import nnx

from vl_jax.fileio import write_folder_once
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

    return _numpy_filled(lambda: clip.CLIP(cfg, rngs=nnx.Rngs(0)), seed)


def _numpy_filled(make, seed: int):
    """``make()``'s model with N(0, 0.02) parameters (LayerNorm / RMSNorm scales around 1),
    drawn by numpy into the abstract state: nothing is compiled."""
    graphdef, abstract = nnx.split(nnx.eval_shape(make))
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
    existing complete checkpoint is kept. Returns ``path``.

    Weights come from ``clip.init`` (the model's own initialisers), as runlocal always used,
    not :func:`random_clip`: runlocal MCLA builds its semantic space from this model's text
    embeddings, and with the N(0, 0.02) fill that space came out empty."""
    from vl_jax.models import clip

    return write_folder_once(
        path,
        "model.safetensors",
        lambda tmp: save_clip(clip.init(clip_config(**overrides), seed=seed), tmp),
    )


# ----------------------------------------------------------------------------- tiny LLaVA
# Word-level vocabulary of the tiny LLaVA: the words of VDC's template / general questions, the
# runlocal class names and a few answer words, so random answers decode to words ("yes dog
# square ...") and prompts tokenize without unknown tokens.
LLAVA_WORDS = (
    "USER ASSISTANT : ? . , yes no not a an the is there in image main object show does kind of "
    "would you call this contain visible picture photo describe detail what it circle square "
    "triangle shape colour red blue green dark light background small large"
).split()
_SPECIALS = ("<unk>", "<pad>", "</s>", "<s>")


def _llava_vocab(vocab_size: int | None) -> dict[str, int]:
    words = [*_SPECIALS, *LLAVA_WORDS]
    words += [f"w{i}" for i in range(max(0, (vocab_size or 0) - 1 - len(words)))]
    return {w: i for i, w in enumerate(words)}


def llava_config(
    image_size: int = 30,
    patch_size: int = 6,
    vision: dict | None = None,
    text: dict | None = None,
    vocab_size: int | None = None,
):
    """The tiny LLaVA-1.5-style ``transformers.LlavaConfig`` (no weights, no torch).

    CLIP tower (2 layers, width 32) read at its penultimate layer without the class token, Llama
    decoder (2 layers, width 32, 2 KV heads). ``vision`` / ``text`` override the towers'
    transformers config fields; ``vocab_size`` pads the word-level vocabulary with filler words
    (benchmarks: a realistic LM head); the last id is ``<image>``."""
    import transformers

    vocab = _llava_vocab(vocab_size)
    image_id = len(vocab)
    return transformers.LlavaConfig(
        vision_config=transformers.CLIPVisionConfig(**{
            **dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                   num_attention_heads=4),
            **(vision or {}), "image_size": image_size, "patch_size": patch_size,
        }),
        text_config=transformers.LlamaConfig(**{
            **dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2),
            **(text or {}), "vocab_size": image_id + 1, "bos_token_id": vocab["<s>"],
            "eos_token_id": vocab["</s>"], "pad_token_id": vocab["<pad>"],
        }),
        image_token_index=image_id,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )  # fmt: skip


def random_llava(hf_config, seed: int = 0):
    """Our LLaVA of a ``transformers.LlavaConfig`` with N(0, 0.02) weights (norm scales around
    1), filled from numpy like :func:`random_clip` (no XLA compilation)."""
    import jax.numpy as jnp

    from vl_jax.models import llava

    cfg = llava.LLaVAConfig.from_hf(hf_config)
    return _numpy_filled(lambda: llava.LLaVA(cfg, dtype=jnp.float32, rngs=nnx.Rngs(0)), seed)


def _word_tokenizer(vocab_size: int | None, image_token_id: int):
    """The tiny decoders' word-level tokenizer (BOS added like Llama's, left padding), with
    ``<image>`` as a special token of id ``image_token_id``; `tokenizers` + transformers only."""
    import tokenizers
    import transformers
    from tokenizers import models, pre_tokenizers, processors

    vocab = _llava_vocab(vocab_size)
    tok = tokenizers.Tokenizer(
        models.WordLevel(vocab | {"<image>": image_token_id}, unk_token="<unk>")
    )
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", vocab["<s>"])]
    )
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="</s>",
        bos_token="<s>", padding_side="left",
    )  # fmt: skip
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    return tokenizer


def _llava_processor(hf_config, vocab_size: int | None):
    """A LlavaProcessor: :func:`_word_tokenizer` and the CLIP image processor of the tower's
    size (no torch)."""
    import transformers

    tokenizer = _word_tokenizer(vocab_size, hf_config.image_token_index)
    v = hf_config.vision_config
    return transformers.LlavaProcessor(
        image_processor=transformers.CLIPImageProcessorPil(
            size={"shortest_edge": v.image_size},
            crop_size={"height": v.image_size, "width": v.image_size},
        ),
        tokenizer=tokenizer,
        patch_size=v.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's class token
    )


def save_llava(model, hf_config, path: str, vocab_size: int | None = None) -> str:
    """A Hugging Face LLaVA directory for ``model``: safetensors in the layout transformers 5
    writes (``vision_tower.*``, ``language_model.model.*``), config.json, tokenizer and
    processor."""
    from vl_jax.checkpoints import save_safetensors
    from vl_jax.checkpoints.mapping import export_state
    from vl_jax.models import llava

    layout = llava.Layout(
        "language_model.model.", "language_model.lm_head.weight", "vision_tower.",
        "multi_modal_projector.",
    )  # fmt: skip
    os.makedirs(path, exist_ok=True)
    tensors = export_state(nnx.state(model, nnx.Param), llava.hf_rules(model.config, layout))
    save_safetensors(tensors, os.path.join(path, "model.safetensors"), {"format": "pt"})
    _llava_processor(hf_config, vocab_size).save_pretrained(path)
    hf_config.save_pretrained(path)  # last: config.json marks a complete checkpoint
    return path


def write_llava(path: str, seed: int = 0, vocab_size: int | None = None, **overrides) -> str:
    """Writes the tiny random LLaVA (:func:`llava_config` with ``vocab_size`` and
    ``overrides``) with its processor to ``path`` once: into a temporary folder renamed into
    place, so a killed write leaves no half checkpoint; an existing complete one (config.json)
    is kept. Deterministic in ``seed``; no torch. Returns ``path``."""

    def write(tmp: str) -> None:
        hf_config = llava_config(vocab_size=vocab_size, **overrides)
        save_llava(random_llava(hf_config, seed), hf_config, tmp, vocab_size)

    return write_folder_once(path, "config.json", write)


# ----------------------------------------------------------------------------- tiny InstructBLIP
# The Q-Former's word-level BERT vocabulary: BERT's specials (ids as bert-base-uncased orders
# them: [PAD] = 0) and the tiny decoder's words, lowercased as the uncased tokenizer sees them.
_BERT_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def _qformer_vocab() -> dict[str, int]:
    words = dict.fromkeys(w.lower() for w in LLAVA_WORDS)
    return {w: i for i, w in enumerate([*_BERT_SPECIALS, *words])}


def instructblip_config(
    image_size: int = 32,
    patch_size: int = 8,
    num_query_tokens: int = 4,
    vision: dict | None = None,
    qformer: dict | None = None,
    text: dict | None = None,
    vocab_size: int | None = None,
):
    """The tiny InstructBLIP-Vicuna ``transformers.InstructBlipConfig`` (no weights, no torch).

    Vision tower 2 layers width 32 (32 px images in 8 px patches: 17 image tokens), Q-Former 2
    layers width 32 with ``num_query_tokens`` queries (cross-attention in layer 0), Llama decoder
    2 layers width 32 with 2 KV heads over :data:`LLAVA_WORDS`; the last id is ``<image>``.
    ``vision`` / ``qformer`` / ``text`` override the parts' transformers config fields."""
    import transformers

    vocab = _llava_vocab(vocab_size)
    image_id = len(vocab)
    config = transformers.InstructBlipConfig(
        vision_config={
            **dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                   num_attention_heads=4),
            **(vision or {}), "image_size": image_size, "patch_size": patch_size,
        },
        qformer_config={
            **dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                   num_attention_heads=4, max_position_embeddings=64,
                   cross_attention_frequency=2),
            **(qformer or {}), "vocab_size": len(_qformer_vocab()), "pad_token_id": 0,
        },
        text_config={
            **dict(model_type="llama", hidden_size=32, intermediate_size=64,
                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
            **(text or {}), "vocab_size": image_id + 1, "bos_token_id": vocab["<s>"],
            "eos_token_id": vocab["</s>"], "pad_token_id": vocab["<pad>"],
        },
        num_query_tokens=num_query_tokens,
        image_token_index=image_id,
    )  # fmt: skip
    config.architectures = ["InstructBlipForConditionalGeneration"]
    return config


def random_instructblip(hf_config, seed: int = 0):
    """Our InstructBLIP of a ``transformers.InstructBlipConfig`` with N(0, 0.02) weights (norm
    scales around 1), filled from numpy (no XLA compilation)."""
    import jax.numpy as jnp

    from vl_jax.models import instructblip

    cfg = instructblip.InstructBLIPConfig.from_hf(hf_config)
    make = lambda: instructblip.InstructBLIP(cfg, dtype=jnp.float32, rngs=nnx.Rngs(0))
    return _numpy_filled(make, seed)


def _qformer_tokenizer():
    """An uncased word-level BERT-style tokenizer: ``[CLS] words [SEP]``, right padding."""
    import tokenizers
    import transformers
    from tokenizers import models, normalizers, pre_tokenizers, processors

    vocab = _qformer_vocab()
    tok = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]", padding_side="right",
    )  # fmt: skip


def _instructblip_processor(hf_config, vocab_size: int | None):
    """An InstructBlipProcessor: the BLIP image processor (bicubic resize to the tower's size,
    CLIP mean/std, no crop), :func:`_word_tokenizer` and :func:`_qformer_tokenizer`."""
    import transformers

    size = hf_config.vision_config.image_size
    return transformers.InstructBlipProcessor(
        image_processor=transformers.BlipImageProcessorPil(size={"height": size, "width": size}),
        tokenizer=_word_tokenizer(vocab_size, hf_config.image_token_index),
        qformer_tokenizer=_qformer_tokenizer(),
        num_query_tokens=hf_config.num_query_tokens,
    )


def save_instructblip(model, hf_config, path: str, vocab_size: int | None = None) -> str:
    """A Hugging Face InstructBLIP directory for ``model``: model.safetensors in the hub's key
    layout, config.json, generation_config.json, tokenizer, ``qformer_tokenizer/`` and the
    image processor / processor configs."""
    import transformers

    from vl_jax.checkpoints import save_safetensors
    from vl_jax.checkpoints.mapping import export_state
    from vl_jax.models import instructblip

    os.makedirs(path, exist_ok=True)
    tensors = export_state(nnx.state(model, nnx.Param), instructblip.hf_rules(model.config))
    save_safetensors(tensors, os.path.join(path, "model.safetensors"), {"format": "pt"})
    _instructblip_processor(hf_config, vocab_size).save_pretrained(path)
    t = hf_config.text_config
    transformers.GenerationConfig(
        bos_token_id=t.bos_token_id, eos_token_id=t.eos_token_id, pad_token_id=t.pad_token_id
    ).save_pretrained(path)
    hf_config.save_pretrained(path)  # last: config.json marks a complete checkpoint
    return path


def write_instructblip(path: str, seed: int = 0, vocab_size: int | None = None, **overrides) -> str:
    """Writes the tiny random InstructBLIP-Vicuna (:func:`instructblip_config` with
    ``vocab_size`` and ``overrides``) with its processor to ``path`` once (a temporary folder
    renamed into place; an existing complete one is kept). Deterministic in ``seed``; no torch.
    Loads in our :func:`vl_jax.models.instructblip.from_pretrained` and in transformers'
    ``InstructBlipForConditionalGeneration`` / ``InstructBlipProcessor``. Returns ``path``."""

    def write(tmp: str) -> None:
        hf_config = instructblip_config(vocab_size=vocab_size, **overrides)
        save_instructblip(random_instructblip(hf_config, seed), hf_config, tmp, vocab_size)

    return write_folder_once(path, "config.json", write)


# ----------------------------------------------------------------------------- tiny Qwen2(.5)-VL
# Qwen's chat markers and vision tokens, after the words; "<|endoftext|>" pads, as in Qwen's.
_QWEN_SPECIALS = (
    "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
    "<|video_pad|>",
)  # fmt: skip
_QWEN_WORDS = ("system", "user", "You", "are", "helpful", "Yes", "No", "Picture", "Video")

# Qwen2-VL-Instruct's chat template (images and videos, optional "Picture n:" labels).
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def _qwen_vocab(vocab_size: int | None) -> dict[str, int]:
    words = ["<|endoftext|>", *dict.fromkeys([*LLAVA_WORDS, *_QWEN_WORDS])]
    words += [f"w{i}" for i in range(max(0, (vocab_size or 0) - len(_QWEN_SPECIALS) - len(words)))]
    return {w: i for i, w in enumerate([*words, *_QWEN_SPECIALS])}


def qwen2_vl_config(
    version: str = "2.5",
    vision: dict | None = None,
    text: dict | None = None,
    vocab_size: int | None = None,
):
    """The tiny ``transformers.Qwen2_5_VLConfig`` (``version="2.5"``) or ``Qwen2VLConfig``
    (``"2"``), no weights, no torch.

    Real patch geometry (14 px patches, 2x2 merge, 2 temporal patches), 2 vision layers of width
    32 (2.5: 56 px windows = 2x2 merged tokens, the second layer full attention; 2: LayerNorm /
    quick_gelu), a Qwen2 decoder of 2 layers, width 64, 4 heads over 2 KV heads (head dim 16,
    M-RoPE sections 2/3/3) over the word vocabulary with Qwen's special tokens last.
    ``vision`` / ``text`` override the parts' transformers config fields."""
    import transformers

    vocab = _qwen_vocab(vocab_size)
    common = dict(depth=2, num_heads=4, patch_size=14, spatial_merge_size=2,
                  temporal_patch_size=2)  # fmt: skip
    text_cfg = {
        **dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2,
               rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3],
                                "rope_theta": 1000000.0}),
        **(text or {}), "vocab_size": len(vocab), "bos_token_id": None,
        "eos_token_id": vocab["<|im_end|>"], "pad_token_id": vocab["<|endoftext|>"],
    }  # fmt: skip
    ids = dict(
        image_token_id=vocab["<|image_pad|>"], video_token_id=vocab["<|video_pad|>"],
        vision_start_token_id=vocab["<|vision_start|>"],
        vision_end_token_id=vocab["<|vision_end|>"],
    )  # fmt: skip
    if version == "2.5":
        v = {**common, "hidden_size": 32, "intermediate_size": 64, "out_hidden_size": 64,
             "window_size": 56, "fullatt_block_indexes": [1], **(vision or {})}  # fmt: skip
        config = transformers.Qwen2_5_VLConfig(vision_config=v, text_config=text_cfg, **ids)
        config.architectures = ["Qwen2_5_VLForConditionalGeneration"]
    elif version == "2":
        v = {**common, "embed_dim": 32, "hidden_size": 64, "mlp_ratio": 2, **(vision or {})}
        config = transformers.Qwen2VLConfig(vision_config=v, text_config=text_cfg, **ids)
        config.architectures = ["Qwen2VLForConditionalGeneration"]
    else:
        raise ValueError(f"unknown Qwen-VL version {version!r} (expected '2' or '2.5')")
    return config


def random_qwen2_vl(hf_config, seed: int = 0):
    """Our Qwen2-VL / Qwen2.5-VL of a transformers config with N(0, 0.02) weights (norm scales
    around 1), filled from numpy (no XLA compilation)."""
    import jax.numpy as jnp

    from vl_jax.models import qwen2_vl

    cfg = qwen2_vl.Qwen2VLConfig.from_hf(hf_config)
    return _numpy_filled(lambda: qwen2_vl.Qwen2VL(cfg, dtype=jnp.float32, rngs=nnx.Rngs(0)), seed)


def _qwen_tokenizer(vocab_size: int | None):
    """Word-level, no BOS, left padding, Qwen's special tokens and chat template."""
    import tokenizers
    import transformers
    from tokenizers import models, pre_tokenizers

    tok = tokenizers.Tokenizer(models.WordLevel(_qwen_vocab(vocab_size), unk_token="<|endoftext|>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<|endoftext|>", pad_token="<|endoftext|>",
        eos_token="<|im_end|>", padding_side="left",
    )  # fmt: skip
    tokenizer.add_special_tokens({"additional_special_tokens": list(_QWEN_SPECIALS)})
    tokenizer.chat_template = QWEN2_VL_CHAT_TEMPLATE
    return tokenizer


def save_qwen2_vl(model, hf_config, path: str, vocab_size: int | None = None,
                  min_pixels: int = 56 * 56, max_pixels: int = 28 * 28 * 36) -> str:  # fmt: skip
    """A Hugging Face Qwen2-VL / Qwen2.5-VL directory for ``model``: model.safetensors in the
    hub's key layout (``model.*``, ``visual.*``, ``lm_head``), config.json,
    generation_config.json, tokenizer with the chat template and the image processor's
    ``preprocessor_config.json`` (``min_pixels`` / ``max_pixels`` its pixel budget)."""
    import transformers

    from vl_jax.checkpoints import save_safetensors
    from vl_jax.checkpoints.mapping import export_state
    from vl_jax.models import qwen2_vl

    os.makedirs(path, exist_ok=True)
    tensors = export_state(nnx.state(model, nnx.Param), qwen2_vl.hf_rules(model.config))
    save_safetensors(tensors, os.path.join(path, "model.safetensors"), {"format": "pt"})
    _qwen_tokenizer(vocab_size).save_pretrained(path)
    v = hf_config.vision_config
    transformers.Qwen2VLImageProcessorPil(
        min_pixels=min_pixels, max_pixels=max_pixels, patch_size=v.patch_size,
        temporal_patch_size=v.temporal_patch_size, merge_size=v.spatial_merge_size,
    ).save_pretrained(path)  # fmt: skip
    t = hf_config.text_config
    transformers.GenerationConfig(
        eos_token_id=t.eos_token_id, pad_token_id=t.pad_token_id
    ).save_pretrained(path)
    hf_config.save_pretrained(path)  # last: config.json marks a complete checkpoint
    return path


def write_qwen2_vl(path: str, seed: int = 0, version: str = "2.5", vocab_size: int | None = None,
                   **overrides) -> str:  # fmt: skip
    """Writes the tiny random Qwen2.5-VL (or Qwen2-VL, ``version="2"``;
    :func:`qwen2_vl_config` with ``vocab_size`` and ``overrides``) with its tokenizer and image
    processor to ``path`` once (a temporary folder renamed into place; an existing complete one
    is kept). Deterministic in ``seed``; no torch. Loads in our
    :func:`vl_jax.models.qwen2_vl.from_pretrained` and in transformers. Returns ``path``."""

    def write(tmp: str) -> None:
        hf_config = qwen2_vl_config(version, vocab_size=vocab_size, **overrides)
        save_qwen2_vl(random_qwen2_vl(hf_config, seed), hf_config, tmp, vocab_size)

    return write_folder_once(path, "config.json", write)
