"""The cleanser's models as objects, each loaded once per run.

    mllm = load_mllm(config.model, workdir, mesh)      # MLLM: model + processor + path + stops
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
      model: the NNX model (`vl_jax.models.llava.LLaVA`), parameters on the run's mesh.
      processor: its transformers processor (tokenizer, chat template, image processor).
      path: the local checkpoint directory (a hub id resolved to its snapshot).
      stop_tokens: [K] token ids that end an answer (tokenizer EOS + generation_config's).
      transform: (computed once) the checkpoint's image preprocessing as an input-pipeline
        transform, uint8 [H, W, 3] -> float32 [h, w, 3] (`image_transform`).
    """

    model: object
    processor: object
    path: str
    stop_tokens: tuple[int, ...]

    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @functools.cached_property
    def transform(self):
        return image_transform(self.path, self.processor)


# The image processors ClipPreprocess reproduces (transformers' slow, PIL and fast variants).
CLIP_PROCESSORS = ("CLIPImageProcessor", "CLIPImageProcessorPil", "CLIPImageProcessorFast")


def image_transform(path: str, processor):
    """The pipeline transform of the checkpoint at `path` (uint8 [H, W, 3] -> float32 [h, w, 3]).

    A CLIP image processor (LLaVA-1.5) -> `ClipPreprocess.from_hf_dir(path)`: numpy, equal to
    transformers' PIL-backend processor value for value, and picklable. Anything else, or CLIP
    settings ClipPreprocess cannot reproduce -> `HFImageProcessor(processor.image_processor)`,
    the checkpoint's processor run per image (it must have a fixed output size)."""
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
    """The MLLM of ``config.model`` on ``mesh``.

    "tiny-random" writes a random tiny LLaVA to ``workdir/tiny_llava`` once (the writer process,
    into a temporary folder renamed into place: a killed write leaves no half checkpoint; the
    others wait at a barrier)."""
    from vl_jax.checkpoints import resolve
    from vl_jax.models import llava

    path = cfg.name
    if path == TINY:
        from vl_jax.models import tiny

        path = os.path.join(workdir, "tiny_llava")
        if wd.is_writer():
            tiny.write_llava(path, seed=cfg.seed)
        wd.written("vdc: tiny checkpoint")
    path = resolve(path)
    model = llava.from_pretrained(
        path,
        dtype=dtype_of(cfg.dtype),
        shardings=functools.partial(parallel.param_shardings, mesh=mesh),
    )
    processor = llava.load_processor(path)
    return MLLM(model, processor, path, tuple(stop_tokens(path, processor.tokenizer)))


def text_llm(
    name: str, mllm: MLLM, dtype, mesh, max_new_tokens: int
) -> Callable[[list[str]], list[str]] | None:
    """`ask(prompts) -> replies` of a text LLM: "mllm" = the MLLM's language model with its
    tokenizer (LLaVA's decoder is a chat LLM), else a hub id / directory of a Llama-family LLM
    (loaded once, onto ``mesh``). None for "" (no LLM: templates)."""
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
        if not chat:  # LLaVA-1.5's conversation format
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
