"""Batched generation for the Llama-family LLM and LLaVA: greedy, sampling, beam search.

    new = generate(model, input_ids, attention_mask, max_new_tokens=16, eos_token_id=2)
    new = generate(llava, ids, mask, pixel_values=px, image_index=idx, max_new_tokens=16)
    new = generate(llava, ids, mask, pixel_values=px_per_row, max_new_tokens=16)  # row i: image i

One jitted function per shape bucket runs the whole request: encode the distinct images once,
splice their features into every row that uses them, prefill a preallocated KV cache, then decode
in a `lax.while_loop` that stops as soon as every row is finished. Inputs are left-padded (as HF
`generate` expects; positions are `cumsum(mask) - 1`) to a length bucket, the batch is padded to
a batch bucket that divides over the mesh's `data` axis, so a warm engine never recompiles for
new sizes within a bucket. Greedy and beam-search outputs equal transformers' `generate`
token for token (tests/test_generate.py); see docs/generation.md.

Shape letters: B batch, T prompt length, N images, P image tokens, D width, V vocabulary,
L max new tokens.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vl_jax import parallel
from vl_jax.beam_search import BeamConfig, beam_search, is_stop, penalize

MIN_PROMPT_BUCKET = 16
MIN_SUFFIX_BUCKET = 8  # per-row question part when the image prefix is shared


def bucket(n: int, multiple: int = 1, minimum: int = 1) -> int:
    """The padded size for `n`: four buckets per octave (at most 25% padding: 1-7 exact, then
    8, 10, 12, 14, 16, 20, ... 512, 640, 768, 896, 1024, ...), rounded up to `multiple`."""
    n = max(int(n), minimum, 1)
    step = 2 ** max(0, n.bit_length() - 3)
    n = -(-n // step) * step
    return -(-n // multiple) * multiple


def left_pad(ids: np.ndarray, mask: np.ndarray, length: int, pad: int):
    """Moves each row's real tokens (mask 1, in order) to the right end of `length` slots.

    Accepts left-, right- or un-padded [B, T] inputs. Returns (ids [B, length] int32,
    mask [B, length] int32)."""
    ids, mask = np.asarray(ids), np.asarray(mask).astype(bool)
    out_ids = np.full((ids.shape[0], length), pad, np.int32)
    out_mask = np.zeros((ids.shape[0], length), np.int32)
    for r in range(ids.shape[0]):
        real = ids[r][mask[r]]
        if len(real):
            out_ids[r, length - len(real) :] = real
            out_mask[r, length - len(real) :] = 1
    return out_ids, out_mask


def shared_prefix(ids: np.ndarray, mask: np.ndarray, image_index: np.ndarray, image_token: int):
    """Length p of the prompt prefix that every row shares with the other rows of its image
    (VDC: "USER: <image>" + the P image tokens, then a different question per row), or 0 when
    sharing does not apply: p must cover all image tokens and leave >= 1 token per row.

    With p > 0 the engine prefills the prefix once per image and copies its KV cache to the
    image's rows, instead of running the P image tokens through the decoder for every question.
    """
    rows = [ids[r][mask[r].astype(bool)] for r in range(ids.shape[0])]
    first: dict[int, np.ndarray] = {}
    p = min(len(r) for r in rows) - 1
    for r, i in zip(rows, image_index.tolist()):
        ref = first.setdefault(i, r)
        n = min(len(r), len(ref))
        diff = np.flatnonzero(r[:n] != ref[:n])
        p = min(p, diff[0] if len(diff) else n)
        where = np.flatnonzero(r == image_token)
        if len(where) and where[-1] >= p:
            return 0
    if len(first) == len(rows) or p <= 0:
        return 0  # nothing is shared: the plain path does the same work with fewer steps
    return int(p)


def top_p_filter(logits: jax.Array, top_p) -> jax.Array:
    """HF `TopPLogitsWarper`: keep the smallest set of tokens whose probability reaches `top_p`
    (always the most likely one); the rest get -inf. logits [R, V]."""
    asc = jnp.sort(logits, axis=-1)
    cum = jnp.cumsum(jax.nn.softmax(asc, axis=-1), axis=-1)
    removed = (cum <= 1.0 - top_p).at[:, -1].set(False)
    # Sorted ascending, the removed tokens are a prefix: keep everything >= the first kept value.
    first = jnp.argmin(removed, axis=-1)
    threshold = jnp.take_along_axis(asc, first[:, None], axis=-1)
    return jnp.where(logits >= threshold, logits, -jnp.inf)


class _Static(NamedTuple):
    """Static (hashable) settings of one request: part of the jit cache key."""

    beam: BeamConfig
    do_sample: bool
    with_images: bool
    prefix: int = 0  # > 0: rows share their image's first `prefix` tokens (see shared_prefix)


class Generator:
    """Splits `model` once, places its parameters on `mesh`, and jits the request function.

    `model` is an `llm.LLM`, or a VLM with `language_model`, `encode_images` and `embed_inputs`
    (`vl_jax.models.llava.LLaVA`). Parameters replicate over `data` (split over `model` where
    annotated); requests shard over `data`. Call it like `generate` (without `model`, `mesh`).
    The jitted function is `self.run` (`self.run._cache_size()` counts compilations).
    """

    def __init__(self, model, mesh=None):
        self.vlm = hasattr(model, "language_model")
        self.image_token = model.config.image_token_id if self.vlm else None
        self.mesh = mesh
        self.data = 1 if mesh is None else mesh.shape[parallel.DATA]
        graphdef, state = nnx.split(model)
        self.state = state if mesh is None else parallel.shard_state(state, mesh)
        self.run = jax.jit(
            lambda state, *args, static: _request(
                graphdef, self.vlm, mesh, state, *args, static=static
            ),
            static_argnames=("static",),
        )

    def _put(self, x: np.ndarray) -> jax.Array:
        if self.mesh is None:
            return jnp.asarray(x)
        sharding = parallel.batch_sharding(self.mesh, x.ndim)
        if sharding.is_fully_addressable:
            return jax.device_put(x, sharding)
        # Multi-process: every process holds the same global request; each fills its shards.
        return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])

    def __call__(
        self,
        input_ids,
        attention_mask=None,
        *,
        pixel_values=None,
        image_index=None,
        max_new_tokens: int,
        num_beams: int = 1,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int = 0,
        eos_token_id: int | Sequence[int] | None = None,
        pad_token_id: int = 0,
        repetition_penalty: float = 1.0,
        length_penalty: float = 1.0,
        early_stopping: bool | str = False,
    ) -> np.ndarray:
        ids = np.asarray(input_ids)
        mask = np.ones_like(ids) if attention_mask is None else np.asarray(attention_mask)
        if ids.ndim != 2 or mask.shape != ids.shape:
            raise ValueError(f"input_ids {ids.shape} and attention_mask {mask.shape}: need [B, T]")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if num_beams < 1 or (num_beams > 1 and do_sample):
            raise ValueError("num_beams must be >= 1; beam sampling is not supported")
        if early_stopping not in (False, True, "never"):
            raise ValueError(f"early_stopping must be False, True or 'never', not {early_stopping}")
        if image_index is not None and pixel_values is None:
            raise ValueError("image_index given without pixel_values")
        if pixel_values is not None and not self.vlm:
            raise ValueError("pixel_values given to a text-only model")
        b = ids.shape[0]
        if pixel_values is not None and image_index is None:
            # transformers' convention: one image per row, row i uses image i.
            n = np.asarray(pixel_values).shape[0]
            if n != b:
                raise ValueError(
                    f"pixel_values holds {n} images for {b} rows: without image_index row i uses "
                    "image i, so there must be one image per row (pass image_index [B] to share "
                    "images between rows)"
                )
            image_index = np.arange(b, dtype=np.int32)
        if b == 0:
            return np.zeros((0, max_new_tokens), np.int32)
        eos = () if eos_token_id is None else tuple(np.atleast_1d(eos_token_id).tolist())

        prefix, prefix_ids = 0, None
        if pixel_values is not None:
            index = np.asarray(image_index, np.int32)
            n = np.asarray(pixel_values).shape[0]
            if index.shape != (b,) or index.min() < 0 or index.max() >= n:
                raise ValueError(f"image_index must be [B={b}] in [0, {n}), got {index}")
            prefix = shared_prefix(ids, mask, index, self.image_token)
        if prefix:
            # Each image's shared prefix once ([N, p]); the rows keep only their own suffix.
            prefix_ids = np.zeros((bucket(n, multiple=self.data), prefix), np.int32)
            keep = np.zeros_like(mask)
            for r in range(b):
                real = np.flatnonzero(mask[r])
                prefix_ids[index[r]] = ids[r, real[:prefix]]
                keep[r, real[prefix:]] = 1
            mask = keep
        # Buckets: prompt length (left padding), batch (pad rows: a 1-token prompt, discarded).
        lengths = mask.astype(bool).sum(-1)
        minimum = MIN_SUFFIX_BUCKET if prefix else MIN_PROMPT_BUCKET
        t = bucket(max(lengths.max(), 1), minimum=minimum)
        ids, mask = left_pad(ids, mask, t, pad_token_id)
        bb = bucket(b, multiple=self.data)
        valid = np.arange(bb) < b
        ids = np.concatenate([ids, np.full((bb - b, t), pad_token_id, np.int32)])
        mask = np.concatenate([mask, np.zeros((bb - b, t), np.int32)])
        mask[~valid, -1] = 1
        args = [ids, mask, valid, np.arange(bb, dtype=np.int32)]
        if pixel_values is not None:
            px = np.asarray(pixel_values)
            n = px.shape[0]
            nb = bucket(n, multiple=self.data)
            px = np.concatenate([px, np.zeros((nb - n, *px.shape[1:]), px.dtype)])
            index = np.zeros(bb, np.int32)
            index[:b] = np.asarray(image_index, np.int32)
            if index.min() < 0 or index.max() >= n:
                raise ValueError(f"image_index must lie in [0, {n}), got {index[:b]}")
            args += [px, index]
            if prefix:
                args.append(prefix_ids)
        args = [self._put(a) for a in args]
        scalars = [
            jax.random.key(seed),
            jnp.float32(temperature),
            jnp.float32(top_p),
            jnp.float32(repetition_penalty),
            jnp.asarray(eos, jnp.int32).reshape(len(eos)),
        ]
        static = _Static(
            BeamConfig(
                num_beams,
                int(max_new_tokens),
                len(eos),
                int(pad_token_id),
                float(repetition_penalty) != 1.0,
                float(length_penalty),
                early_stopping,
            ),
            bool(do_sample),
            pixel_values is not None,
            prefix,
        )
        out = self.run(self.state, scalars, *args, static=static)
        return np.asarray(parallel.fetch(out))[:b]


def _request(graphdef, vlm, mesh, state, scalars, ids, mask, valid, row_ids, *rest, static):
    """The whole request on device: [images ->] prefill -> decode. Returns [B, L] int32."""
    key, _, _, penalty, eos = scalars
    model = nnx.merge(graphdef, state)
    lm = model.language_model if vlm else model
    cfg = static.beam
    b, t = ids.shape
    n_new = cfg.max_new_tokens
    p = static.prefix  # shared image prefix (slots [0, p)), then T prompt slots, then L new ones
    shard = lambda c: (
        c if mesh is None else jax.lax.with_sharding_constraint(c, parallel.batch_sharding(mesh, 4))
    )
    cache = None
    if p:
        pixels, image_index, prefix_ids = rest
        n = prefix_ids.shape[0]
        # Each image's prefix through the decoder once: [N, p] -> KV cache rows, then every
        # question row starts from a copy of its image's rows.
        x = model.embed_inputs(prefix_ids, model.encode_images(pixels), jnp.arange(n))
        pos = jnp.broadcast_to(jnp.arange(p), (n, p))
        _, img_cache = lm.forward(x, pos, jnp.ones((n, p + t + n_new), bool),
                                  shard(lm.init_cache(n, p + t + n_new)), 0)  # fmt: skip
        cache = shard(jax.tree.map(lambda c: c[image_index], img_cache))
        x = lm.embed(ids)  # the suffixes hold no image tokens (checked by shared_prefix)
        prompt_ids = jnp.concatenate([prefix_ids[image_index], ids], axis=1)
        prompt_mask = jnp.concatenate([jnp.ones((b, p), mask.dtype), mask], axis=1)
    elif static.with_images:
        pixels, image_index = rest
        # Each distinct image once: [N, H, W, 3] -> [N, P, D], gathered into rows by index.
        x = model.embed_inputs(ids, model.encode_images(pixels), image_index)
    elif vlm:
        x = model.embed_inputs(ids, None, None)
    else:
        x = lm.embed(ids)
    if not p:
        prompt_ids, prompt_mask = ids, mask
        cache = shard(lm.init_cache(b, t + n_new))
    lengths = prompt_mask.sum(-1)  # real prompt tokens per row
    positions = p + jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0)
    # Slots [0, p + T) hold the prompt, then L slots the new tokens; causality hides the future.
    kv_mask = jnp.concatenate([prompt_mask.astype(bool), jnp.ones((b, n_new), bool)], axis=1)
    hidden, cache = lm.forward(x, positions, kv_mask, cache, p)
    t = p + t
    first_logits = lm.logits(hidden[:, -1:])[:, 0]  # [B, V] float32
    seen = None
    if cfg.use_repetition_penalty:
        v = first_logits.shape[-1]
        real = jnp.where(prompt_mask.astype(bool), prompt_ids, v)  # padding -> dropped
        seen = jnp.zeros((b, v), bool).at[jnp.arange(b)[:, None], real].set(True, mode="drop")

    def make_step(lengths, kv_mask):
        def step(cache, tokens, i):
            """tokens [R] at new-token index i -> (logits [R, V], cache)."""
            h, cache = lm.forward(
                lm.embed(tokens[:, None]), (lengths + i)[:, None], kv_mask, cache, t + i
            )
            return lm.logits(h)[:, 0], cache

        return step

    if cfg.num_beams > 1:
        k = cfg.num_beams
        step = make_step(jnp.repeat(lengths, k), jnp.repeat(kv_mask, k, axis=0))
        return beam_search(first_logits, step, cache, seen, valid, eos, penalty, cfg)
    step = make_step(lengths, kv_mask)
    return _decode(first_logits, step, cache, seen, valid, row_ids, key, scalars, static)


def _decode(first_logits, step, cache, seen, valid, row_ids, key, scalars, static) -> jax.Array:
    """Greedy or sampled decoding; rows stop at a stop token and are padded after it."""
    _, temperature, top_p, penalty, eos = scalars
    cfg = static.beam
    b = first_logits.shape[0]
    rows = jnp.arange(b)

    def choose(logits, seen, i):
        if cfg.use_repetition_penalty:  # HF order: penalty, then temperature, then top-p
            logits = penalize(logits, seen, penalty)
        if not static.do_sample:
            return jnp.argmax(logits, axis=-1).astype(jnp.int32)
        logits = top_p_filter(logits / temperature, top_p)
        # One key per (original row, step): a row's samples do not depend on its batch-mates,
        # on the bucket it was padded to, or on the mesh.
        keys = jax.vmap(lambda r: jax.random.fold_in(jax.random.fold_in(key, r), i))(row_ids)
        return jax.vmap(jax.random.categorical)(keys, logits).astype(jnp.int32)

    def emit(i, logits, tokens, done, seen):
        new = jnp.where(done, cfg.pad, choose(logits, seen, i))
        tokens = tokens.at[:, i].set(new)
        done = done | is_stop(new, eos)
        if seen is not None:
            seen = seen.at[rows, new].set(True)
        return new, tokens, done, seen

    tokens = jnp.full((b, cfg.max_new_tokens), cfg.pad, jnp.int32)
    new, tokens, done, seen = emit(0, first_logits, tokens, ~valid, seen)

    def cond(carry):
        i, done = carry[0], carry[2]
        return (i < cfg.max_new_tokens) & ~jnp.all(done)

    def body(carry):
        i, new, done, tokens, cache, seen = carry
        logits, cache = step(cache, new, i - 1)
        new, tokens, done, seen = emit(i, logits, tokens, done, seen)
        return i + 1, new, done, tokens, cache, seen

    carry = (jnp.int32(1), new, done, tokens, cache, seen)
    return jax.lax.while_loop(cond, body, carry)[3]


# One Generator per (model, mesh), kept while the model lives: `generate` splits a model once.
_GENERATORS: weakref.WeakKeyDictionary[Any, dict] = weakref.WeakKeyDictionary()


def generator_for(model, mesh=None) -> Generator:
    """The cached `Generator` of `model` on `mesh` (parameters are read at first use: build a
    new one with `Generator(model, mesh)` after changing the weights in place)."""
    per_model = _GENERATORS.setdefault(model, {})
    if mesh not in per_model:
        per_model[mesh] = Generator(model, mesh)
    return per_model[mesh]


def generate(model, input_ids, attention_mask=None, *, mesh=None, **kwargs) -> np.ndarray:
    """Generates up to `max_new_tokens` tokens after each prompt.

    Args:
      model: `llm.LLM` (text) or a LLaVA-style VLM (see `Generator`).
      input_ids: [B, T] int token ids; attention_mask: [B, T] (1 = real token), left-, right- or
        un-padded (rows are re-packed to the left-padded layout HF `generate` uses).
      pixel_values: optional [N, H, W, 3] float, N distinct images, each encoded once.
      image_index: optional [B] int, the image of each row (only with `pixel_values`): rows may
        share an image. Omitted, it is `arange(B)`: one image per row, row i uses image i, as in
        transformers' `generate` (then N must equal B, else ValueError).
      max_new_tokens: L. num_beams: 1 = greedy / sampling, > 1 = beam search (HF semantics,
        with `length_penalty`, `early_stopping` False | True | "never").
      do_sample, temperature, top_p, seed: sampling (no top-k: HF's default top_k=50 is not
        applied); the stream of row r is `fold_in(fold_in(key(seed), r), step)`.
      eos_token_id: int or list of stop tokens; pad_token_id: fills rows after they stop.
      repetition_penalty: HF's (on logits for greedy/sampling, on log-probs in beam search;
        prompt tokens count, padding does not).
      mesh: a `parallel.create_mesh` mesh; the batch is sharded over its `data` axis.
    Returns:
      [B, L] int32 numpy new tokens (the stop token included), `pad_token_id` after it.
    """
    return generator_for(model, mesh)(input_ids, attention_mask, **kwargs)


def generate_text(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    chat: bool = False,
    system: str | None = None,
    max_new_tokens: int = 64,
    mesh=None,
    **kwargs,
) -> list[str]:
    """Text in, text out for the text-only LLM (question generation, the judge).

    `chat=True` wraps each prompt as a user turn (after an optional system turn) with the
    tokenizer's chat template and the generation prompt. Stop tokens default to the
    tokenizer's EOS (plus the generation config's, when given), padding to its pad token."""
    if chat:
        prompts = [
            tokenizer.apply_chat_template(
                ([{"role": "system", "content": system}] if system else [])
                + [{"role": "user", "content": p}],
                tokenize=False,
                add_generation_prompt=True,
            )
            for p in prompts
        ]
    enc = tokenizer(list(prompts), padding=True, add_special_tokens=not chat, return_tensors="np")
    eos = kwargs.pop("eos_token_id", tokenizer.eos_token_id)
    pad = kwargs.pop("pad_token_id", tokenizer.pad_token_id)
    pad = pad if pad is not None else (np.atleast_1d(eos)[0] if eos is not None else 0)
    new = generate(
        model,
        enc["input_ids"],
        enc["attention_mask"],
        max_new_tokens=max_new_tokens,
        eos_token_id=eos,
        pad_token_id=int(pad),
        mesh=mesh,
        **kwargs,
    )
    return tokenizer.batch_decode(new, skip_special_tokens=True)
