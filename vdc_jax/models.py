"""The cleanser's models as objects, each loaded once per run.

    mllm = load_mllm(config.model, workdir, mesh)      # LLaVA, InstructBLIP, Qwen2(.5)-VL
    mllm.transform                                      # its image preprocessing (pipeline)
    ask = text_llm(config.vqg.llm, mllm, dtype, mesh, max_new_tokens=256)  # VQG (or None)
    judge = make_judge(config.judge, mllm, dtype, mesh)                     # VAE judge (or None)

The MLLM's parameters are read from the checkpoint straight into their shardings on the mesh
(`vl_jax.parallel.param_shardings`), and the one `MLLM` object is handed to VQA, VQG and the
judge — nothing reloads it. A caller that runs the cleanser several times in one process
(a notebook, tests) passes the same object to every run (`cleanse.clean(..., mllm=mllm)`), so
the compiled generation functions are reused too.

Images reach the MLLM through the project's one input pipeline (`vl_jax.data.pipeline`), with
the checkpoint's own preprocessing as the transform (`image_transform`): `ClipPreprocess` (numpy,
equal to transformers' PIL-backend CLIP processor) when the checkpoint's image processor is
CLIP's, as on LLaVA-1.5; otherwise the processor itself behind `HFImageProcessor` (any fixed
output size: BLIP, SigLIP, ...). See `vl_jax.preprocess` for dynamic-resolution processors.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from collections.abc import Callable, Sequence

import jax.numpy as jnp
import numpy as np

from vdc_jax import answers as vae
from vl_jax import parallel
from vl_jax import workdir as wd
from vl_jax.errors import ConfigError
from vl_jax.preprocess import ClipPreprocess, HFImageProcessor, hf_image_processor_config

log = logging.getLogger(__name__)

TINY = "tiny-random"  # config.model.name: a random tiny LLaVA written into the workdir
TINY_INSTRUCTBLIP = "tiny-instructblip"  # a random tiny InstructBLIP-Vicuna, likewise
TINY_QWEN2_5_VL = "tiny-qwen2_5_vl"  # a random tiny Qwen2.5-VL, likewise
# config.model.name -> (the workdir folder it is written to, its vl_jax.models.tiny writer)
TINY_MODELS = {TINY: ("tiny_llava", "write_llava"),
               TINY_INSTRUCTBLIP: ("tiny_instructblip", "write_instructblip"),
               TINY_QWEN2_5_VL: ("tiny_qwen2_5_vl", "write_qwen2_vl")}  # fmt: skip
# config.json `architectures` -> the MLLM family (its vl_jax.models module)
FAMILIES = {
    "LlavaForConditionalGeneration": "llava",
    "InstructBlipForConditionalGeneration": "instructblip",
    "Qwen2VLForConditionalGeneration": "qwen2_vl",
    "Qwen2_5_VLForConditionalGeneration": "qwen2_vl",
}
# config.json `model_type` of a config saved without `architectures` -> family
MODEL_TYPES = {"llava": "llava", "instructblip": "instructblip", "qwen2_vl": "qwen2_vl",
               "qwen2_5_vl": "qwen2_vl"}  # fmt: skip
MLLM_LLM = "mllm"  # config.vqg.llm / judge.llm: the MLLM's own language model
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def dtype_of(name: str):
    """The jnp dtype of a config dtype name (ConfigError names the known ones)."""
    if name not in DTYPES:
        raise ConfigError(f"config.model.dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


@dataclasses.dataclass(frozen=True, eq=False)
class MLLM:
    """A loaded multimodal LLM and what is needed to prompt it.

    Attributes:
      model: the NNX model (`vl_jax.models.llava.LLaVA` or `vl_jax.models.instructblip.
        InstructBLIP`), parameters on the run's mesh.
      processor: its transformers processor (tokenizer, chat template, image processor; for
        InstructBLIP also the Q-Former's tokenizer).
      path: the local checkpoint directory (a hub id resolved to its snapshot).
      stop_tokens: [K] token ids that end an answer (tokenizer EOS + generation_config's).
      family: "llava" | "instructblip" | "qwen2_vl" (`FAMILIES`, from config.json's
        `architectures`).
      transform: (computed once) the checkpoint's image preprocessing as an input-pipeline
        transform, uint8 [H, W, 3] -> float32 [h, w, 3] (`image_transform`).
    """

    model: object
    processor: object
    path: str
    stop_tokens: tuple[int, ...]
    family: str = "llava"

    @property
    def tokenizer(self):
        """The language model's tokenizer (prompts, answers, the text-only VQG / judge)."""
        return self.processor.tokenizer

    @property
    def qformer_tokenizer(self):
        """InstructBLIP: the Q-Former's (BERT) tokenizer of the instruction; else None."""
        return getattr(self.processor, "qformer_tokenizer", None)

    @functools.cached_property
    def transform(self):
        return image_transform(self.path, self.processor)


# The image processors ClipPreprocess reproduces (transformers' slow, PIL and fast variants).
CLIP_PROCESSORS = ("CLIPImageProcessor", "CLIPImageProcessorPil", "CLIPImageProcessorFast")


def image_transform(path: str, processor):
    """The pipeline transform of the checkpoint at `path` (uint8 [H, W, 3] -> float32 [h, w, 3]).

    A CLIP image processor (LLaVA-1.5) -> `ClipPreprocess.from_hf_dir(path)`: numpy, equal to
    transformers' PIL-backend processor value for value, and picklable. Qwen2-VL's dynamic
    resolution -> `CanvasTransform` (the processor's resize, at the top-left of a fixed canvas
    of side sqrt(2 max_pixels): float32 [Hc, Wc, 3], NaN outside the image). Anything else, or CLIP
    settings ClipPreprocess cannot reproduce -> `HFImageProcessor(processor.image_processor)`,
    the checkpoint's processor run per image (it must have a fixed output size)."""
    from vl_jax.models.qwen2_vl_preprocess import CanvasTransform, Qwen2VLPreprocess

    if isinstance(processor.image_processor, Qwen2VLPreprocess):  # dynamic resolution
        return CanvasTransform.for_budget(processor.image_processor)
    try:
        cfg, file = hf_image_processor_config(path)
    except FileNotFoundError:
        cfg, file = {}, path
    if cfg.get("image_processor_type") in CLIP_PROCESSORS:
        try:
            return ClipPreprocess.from_hf_dir(file)
        except ValueError as e:
            log.info("%s: ClipPreprocess does not reproduce it (%s); using the processor", path, e)
    return HFImageProcessor(processor.image_processor)


def stop_tokens(path: str, tokenizer) -> list[int]:
    """The tokenizer's EOS plus `generation_config.json`'s `eos_token_id`(s) in `path`."""
    ids = [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]
    cfg = os.path.join(path, "generation_config.json")
    if os.path.exists(cfg):
        with open(cfg, encoding="utf-8") as f:
            extra = json.load(f).get("eos_token_id")
        ids += [int(i) for i in np.atleast_1d(extra if extra is not None else [])]
    return list(dict.fromkeys(ids))


def load_mllm(cfg, workdir: str, mesh) -> MLLM:
    """The MLLM of ``config.model`` on ``mesh``: LLaVA, InstructBLIP (Vicuna) or Qwen2(.5)-VL,
    told apart by the checkpoint's ``config.json`` (`mllm_family`). ``config.model.max_pixels``
    (Qwen2-VL only; 0 or absent = the checkpoint's) caps each image's pixel budget.

    "tiny-random" / "tiny-instructblip" / "tiny-qwen2_5_vl" write a random tiny LLaVA /
    InstructBLIP / Qwen2.5-VL to ``workdir/tiny_llava`` / ``tiny_instructblip`` /
    ``tiny_qwen2_5_vl`` once (the writer process, into a
    temporary folder renamed into place: a killed write leaves no half checkpoint; the others
    wait at a barrier)."""
    import importlib

    from vl_jax.checkpoints import resolve

    path = cfg.name
    if path in TINY_MODELS:
        from vl_jax.models import tiny

        folder, writer = TINY_MODELS[path]
        path = os.path.join(workdir, folder)
        if wd.is_writer():
            getattr(tiny, writer)(path, seed=cfg.seed)
        wd.written("vdc: tiny checkpoint")
    path = resolve(path)
    family = mllm_family(path)
    module = importlib.import_module(f"vl_jax.models.{family}")
    model = module.from_pretrained(
        path,
        dtype=dtype_of(cfg.dtype),
        shardings=functools.partial(parallel.param_shardings, mesh=mesh),
    )
    processor = module.load_processor(path)
    max_pixels = int(cfg.get("max_pixels", 0) or 0)
    if max_pixels:
        if family != "qwen2_vl":
            raise ConfigError(
                f"config.model.max_pixels is for dynamic-resolution MLLMs (Qwen2-VL), not {family}"
            )
        pre = processor.image_processor
        # The budget is the throughput knob: it bounds each image's patches (docs/generation.md).
        processor.image_processor = dataclasses.replace(
            pre, max_pixels=max_pixels, min_pixels=min(pre.min_pixels, max_pixels)
        )
    return MLLM(model, processor, path, tuple(stop_tokens(path, processor.tokenizer)), family)


def mllm_family(path: str) -> str:
    """The MLLM family of the checkpoint at ``path``, "llava", "instructblip" or "qwen2_vl"
    (Qwen2-VL and Qwen2.5-VL), from its
    ``config.json``'s ``architectures``; ConfigError for anything else, naming it
    (InstructBLIP with a Flan-T5 decoder by name)."""
    file = os.path.join(path, "config.json")
    try:
        with open(file, encoding="utf-8") as f:
            hf = json.load(f)
    except (OSError, ValueError) as e:
        raise ConfigError(f"{file}: not a readable checkpoint config ({e})") from None
    archs = hf.get("architectures") or []
    families = {FAMILIES[a] for a in archs if a in FAMILIES}
    if not families and hf.get("model_type") in MODEL_TYPES:
        families = {MODEL_TYPES[hf["model_type"]]}  # a config saved without `architectures`
    if len(families) != 1:
        raise ConfigError(
            f"{path}: architectures {archs} is not one of the supported MLLMs "
            f"({', '.join(FAMILIES)})"
        )
    family = families.pop()
    if family == "instructblip" and (hf.get("text_config") or {}).get("model_type") == "t5":
        raise ConfigError(
            f"{path}: InstructBLIP with a Flan-T5 language model is not supported (an "
            "encoder-decoder); use an InstructBLIP-Vicuna checkpoint"
        )
    return family


def text_llm(
    name: str, mllm: MLLM, dtype, mesh, max_new_tokens: int
) -> Callable[[list[str]], list[str]] | None:
    """`ask(prompts) -> replies` of a text LLM: "mllm" = the MLLM's language model with its
    tokenizer (LLaVA's decoder and InstructBLIP's Vicuna are chat LLMs; without a chat
    template they get the "USER: ... ASSISTANT:" turn format they share), else a hub id /
    directory of a Llama-family LLM (loaded once, onto ``mesh``). None for "" (no LLM:
    templates)."""
    from vl_jax.generate import generate_text

    if not name:
        return None
    if name == MLLM_LLM:
        model, tokenizer = mllm.model.language_model, mllm.tokenizer
    else:
        import transformers

        from vl_jax.checkpoints import resolve
        from vl_jax.models import llm

        path = resolve(name)
        model = llm.from_pretrained(
            path, dtype=dtype, shardings=functools.partial(parallel.param_shardings, mesh=mesh)
        )
        tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    chat = bool(tokenizer.chat_template)

    def ask(prompts: Sequence[str]) -> list[str]:
        if not chat:  # LLaVA-1.5's and Vicuna v1.1's conversation format
            prompts = [f"USER: {p} ASSISTANT:" for p in prompts]
        return generate_text(model, tokenizer, list(prompts), chat=chat,
                             max_new_tokens=max_new_tokens, mesh=mesh)  # fmt: skip

    return ask


def make_judge(cfg, mllm: MLLM, dtype, mesh) -> vae.Judge | None:
    """The VAE judge of ``config.judge`` for descriptions without a keyword hit (None = count
    them inconsistent)."""
    if cfg.kind == "none":
        return None
    if cfg.kind == "llm":
        ask = text_llm(cfg.llm, mllm, dtype, mesh, cfg.max_new_tokens)
        if ask is None:
            raise ConfigError("config.judge.kind='llm' needs config.judge.llm")
        return vae.llm_judge(ask, batch_size=cfg.batch_size)
    if cfg.kind == "embedding":
        from vl_jax.models import clip
        from vl_jax.models.clip_tokenizer import load_tokenizer, tokenize

        model = clip.from_pretrained(cfg.embed_model)
        length = model.config.text.context_length
        tok = load_tokenizer(cfg.embed_model, length)

        def embed(texts):
            ids, mask = tokenize(tok, list(texts), length)
            return np.asarray(model.encode_text(ids, mask))

        return vae.embedding_judge(embed, threshold=cfg.embed_threshold)
    raise ConfigError(f"config.judge.kind must be llm, embedding or none, got {cfg.kind!r}")
