"""Batched generation for the Llama-family LLM, LLaVA, InstructBLIP and Qwen2(.5)-VL: greedy,
sampling, beam search.

    new = generate(model, input_ids, attention_mask, max_new_tokens=16, eos_token_id=2)
    new = generate(llava, ids, mask, pixel_values=px, image_index=idx, max_new_tokens=16)
    new = generate(llava, ids, mask, pixel_values=px_per_row, max_new_tokens=16)  # row i: image i
    new = generate(instructblip, ids, mask, pixel_values=px, image_index=idx,
                   qformer_input_ids=q, qformer_attention_mask=qm, max_new_tokens=16)

One jitted function per shape bucket runs the whole request: encode the distinct images once,
splice their features into every row that uses them, prefill a preallocated KV cache, then decode
in a `lax.while_loop` that stops as soon as every row is finished. Inputs are left-padded (as HF
`generate` expects; positions are `cumsum(mask) - 1`) to a length bucket, the batch is padded to
a batch bucket that divides over the mesh's `data` axis, so a warm engine never recompiles for
new sizes within a bucket. Greedy and beam-search outputs equal transformers' `generate`
token for token (tests/test_generate.py); see docs/generation.md.

The host-side checks and bucketing live in `vl_jax.generate_inputs` (`bucket`, `left_pad` and
`shared_prefix` are re-exported here).

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
from vl_jax.beam_search import BeamConfig, ban_stops, beam_search, is_stop, penalize
from vl_jax.generate_inputs import (
    MIN_PROMPT_BUCKET,
    MIN_SUFFIX_BUCKET,
    bucket,
    check_request,
    left_pad,
    pack_request,
    shared_prefix,
)

__all__ = [
    "MIN_PROMPT_BUCKET",
    "MIN_SUFFIX_BUCKET",
    "Generator",
    "bucket",
    "generate",
    "generate_text",
    "generator_for",
    "left_pad",
    "shared_prefix",
    "top_p_filter",
]


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
        # InstructBLIP: image features per row, from the image and the row's instruction.
        self.query = hasattr(model, "query_features")
        self.image_token = model.config.image_token_id if self.vlm else None
        # Dynamic resolution (Qwen2-VL): images of different sizes, laid out on the host.
        self.image_layout = getattr(model, "image_layout", None) if self.vlm else None
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

    def _put(self, x: np.ndarray | jax.Array) -> jax.Array:
        """A request array onto the mesh, split over `data` (a jax.Array is resharded on
        device; a host array is placed shard by shard)."""
        if hasattr(x, "_fields"):  # a model's image pytree (`image_layout`)
            return jax.tree.map(self._put, x)
        if self.mesh is None:
            return jnp.asarray(x)
        sharding = parallel.batch_sharding(self.mesh, x.ndim)
        if isinstance(x, jax.Array) or sharding.is_fully_addressable:
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
        qformer_input_ids=None,
        qformer_attention_mask=None,
        max_new_tokens: int,
        min_new_tokens: int = 0,
        num_beams: int = 1,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int = 0,
        eos_token_id: int | Sequence[int] | None = None,
        pad_token_id: int = 0,
        repetition_penalty: float = 1.0,
        penalize_prompt: bool = True,
        length_penalty: float = 1.0,
        early_stopping: bool | str = False,
    ) -> np.ndarray:
        """One request: check, pack into buckets, one device call, the B real rows [B, L]."""
        ids, mask, image_index, qformer = check_request(
            input_ids,
            attention_mask,
            pixel_values=pixel_values,
            image_index=image_index,
            vlm=self.vlm,
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            do_sample=do_sample,
            early_stopping=early_stopping,
            min_new_tokens=min_new_tokens,
            query=self.query,
            qformer_input_ids=qformer_input_ids,
            qformer_attention_mask=qformer_attention_mask,
        )
        b = ids.shape[0]
        if b == 0:
            return np.zeros((0, max_new_tokens), np.int32)
        eos = () if eos_token_id is None else tuple(np.atleast_1d(eos_token_id).tolist())
        if pixel_values is not None and self.image_layout is not None:
            pixel_values = self.image_layout(pixel_values)
        arrays, prefix = pack_request(
            ids,
            mask,
            pixel_values,
            image_index,
            image_token=self.image_token,
            pad=pad_token_id,
            multiple=self.data,
            qformer=qformer,
            per_image_prefix=self.image_layout is not None,
        )
        args = [self._put(a) for a in arrays]
        scalars = _traced_settings(seed, temperature, top_p, repetition_penalty, eos, self.mesh)
        static = _Static(
            BeamConfig(
                num_beams,
                int(max_new_tokens),
                len(eos),
                int(pad_token_id),
                float(repetition_penalty) != 1.0,
                float(length_penalty),
                early_stopping,
                int(min_new_tokens),
                bool(penalize_prompt),
            ),
            bool(do_sample),
            pixel_values is not None,
            prefix,
        )
        out = self.run(self.state, scalars, *args, static=static)
        return np.asarray(parallel.fetch(out))[:b]


def _traced_settings(seed, temperature, top_p, repetition_penalty, eos: tuple[int, ...], mesh=None):
    """The request settings passed as traced values, so that changing them never recompiles:
    [key, temperature, top_p, repetition_penalty (float32 scalars), eos [E] int32]. Only E,
    the number of stop tokens, is a shape (and in `_Static`). Placed by one explicit
    `device_put`, replicated on `mesh`: a request passes `jax.transfer_guard("disallow")`."""
    seed, *rest = jax.device_put([
        np.int64(seed),  # as jax.random.key converts a Python int
        np.float32(temperature),
        np.float32(top_p),
        np.float32(repetition_penalty),
        np.asarray(eos, np.int32).reshape(len(eos)),
    ], None if mesh is None else parallel.replicated(mesh))  # fmt: skip
    return [jax.random.key(seed), *rest]


def _request(graphdef, vlm, mesh, state, scalars, ids, mask, valid, row_ids, *rest, static):
    """The whole request on device: [images ->] prefill -> decode.

    ids, mask [B, T] left-padded; valid, row_ids [B]; `rest` as `pack_request` orders it:
    (), (pixels [N, H, W, 3], image_index [B]), those and prefix_ids, prefix_mask [N, p], or
    those and
    qformer_ids, qformer_mask [B, Qt] (a query model: InstructBLIP). KV cache slots:
    [0, p) the shared image prefix, [p, p + T) the prompt, then L new tokens.
    Returns [B, L] int32."""
    key, _, _, penalty, eos = scalars
    model = nnx.merge(graphdef, state)
    lm = model.language_model if vlm else model
    cfg = static.beam
    b, t = ids.shape
    n_new = cfg.max_new_tokens
    p = static.prefix
    shard = lambda c: (
        c if mesh is None else jax.lax.with_sharding_constraint(c, parallel.batch_sharding(mesh, 4))
    )
    positions = offsets = None  # default rotary positions; else multimodal (_rope_positions)
    if p:
        x, cache, prompt_ids, prompt_mask, offsets = _prefill_shared_prefix(
            model, lm, ids, mask, *rest, n_new=n_new, shard=shard
        )
        # The suffix continues after its image's prefix (left-padded: its real tokens count).
        start = prompt_mask[:, :p].sum(-1) + (0 if offsets is None else offsets)
        positions = start[:, None] + jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0)
    else:
        x = _embed_prompt(model, lm, vlm, ids, rest, static.with_images)
        prompt_ids, prompt_mask = ids, mask
        cache = shard(lm.init_cache(b, t + n_new))
        pixels, image_index = rest[:2] if static.with_images else (None, None)
        positions, offsets = _rope_positions(model, vlm, ids, mask, pixels, image_index)
    first_logits, cache, lengths, kv_mask = _prefill(
        lm, x, mask, prompt_mask, cache, p, n_new, positions
    )
    if offsets is not None:
        lengths = lengths + offsets  # new tokens continue after the prompt's multimodal positions
    seen = None
    if cfg.use_repetition_penalty:
        seen = _tokens_seen(prompt_ids, prompt_mask, first_logits.shape[-1])
        if not cfg.penalize_prompt:  # only the new tokens count (LAVIS's InstructBLIP call)
            seen = jnp.zeros_like(seen)
    if cfg.num_beams > 1:
        k = cfg.num_beams
        step = _decode_step(lm, jnp.repeat(lengths, k), jnp.repeat(kv_mask, k, axis=0), p + t)
        return beam_search(first_logits, step, cache, seen, valid, eos, penalty, cfg)
    step = _decode_step(lm, lengths, kv_mask, p + t)
    return _decode(first_logits, step, cache, seen, valid, row_ids, key, scalars, static)


def _embed_prompt(model, lm, vlm, ids, rest, with_images: bool) -> jax.Array:
    """ids [B, T] -> embeddings [B, T, D]. With images, rest = (pixels [N, H, W, 3],
    image_index [B]): each distinct image is encoded once ([N, P, D]) and its features are
    spliced into the image tokens of every row that uses it. A query model (InstructBLIP)
    also gets rest[2:] = (qformer_ids, qformer_mask [B, Qt]): its vision tower still runs
    once per distinct image ([N, S, C]), the Q-Former once per row (its queries read the
    row's instruction), giving [B, P, D] features, row b's in row b."""
    if with_images:
        pixels, image_index, *instruction = rest
        images = model.encode_images(pixels)
        if instruction:
            features = model.query_features(images, image_index, *instruction)
            return model.embed_inputs(ids, features, jnp.arange(ids.shape[0]))
        return model.embed_inputs(ids, images, image_index)
    if vlm:
        return model.embed_inputs(ids, None, None)
    return lm.embed(ids)


def _rope_positions(model, vlm, ids, mask, pixels, image_index=None):
    """(positions [B, T, E/2], offsets [B]) of a model with multimodal rotary positions
    (Qwen2-VL's M-RoPE: `model.prompt_positions`), else (None, None): positions count the real
    tokens. A new token's position is its slot's count of real tokens plus the row's offset.
    Images: pixels' size (one size), or the sizes an image pytree carries (`hw` [N, 2]) of
    each row's image (`image_index` [B]; None: row i is image i)."""
    if not (vlm and hasattr(model, "prompt_positions")):
        return None, None
    hw = None
    if pixels is not None:
        hw = getattr(pixels, "hw", None)
        if hw is None:
            hw = tuple(pixels.shape[1:3])
        elif image_index is not None:
            hw = hw[image_index]
    return model.prompt_positions(ids, mask, hw)


def _prefill_shared_prefix(
    model, lm, ids, mask, pixels, image_index, prefix_ids, prefix_mask, *, n_new, shard
):
    """Prefills each image's shared prefix once and gives every row a copy of its image's cache,
    so the P image tokens go through the decoder N times, not B times.

    ids, mask [B, T] the per-row suffixes (no image tokens: `shared_prefix` checks), pixels
    [N, H, W, 3] (or a model's image pytree), image_index [B], prefix_ids, prefix_mask [N, p]
    (left-padded when the images' prefixes differ in length). Returns (x [B, T, D] the
    suffixes' embeddings, cache with B rows of p + T + L slots, [0, p) filled, prompt_ids
    [B, p + T], prompt_mask [B, p + T]: the whole prompt of each row, offsets [B] or None: see
    `_rope_positions`)."""
    n, p = prefix_ids.shape
    t = ids.shape[1]
    x = model.embed_inputs(prefix_ids, model.encode_images(pixels), jnp.arange(n))
    pos, offsets = _rope_positions(model, True, prefix_ids, prefix_mask, pixels)
    if pos is None:
        pos = jnp.maximum(jnp.cumsum(prefix_mask, axis=-1) - 1, 0)
    else:
        offsets = offsets[image_index]
    kv_mask = jnp.concatenate([prefix_mask.astype(bool), jnp.ones((n, t + n_new), bool)], axis=1)
    _, img_cache = lm.forward(x, pos, kv_mask, shard(lm.init_cache(n, p + t + n_new)), 0)
    cache = shard(jax.tree.map(lambda c: c[image_index], img_cache))
    x = lm.embed(ids)
    prompt_ids = jnp.concatenate([prefix_ids[image_index], ids], axis=1)
    prompt_mask = jnp.concatenate([prefix_mask[image_index].astype(mask.dtype), mask], axis=1)
    return x, cache, prompt_ids, prompt_mask, offsets


def _prefill(lm, x, mask, prompt_mask, cache, p: int, n_new: int, positions=None):
    """Runs the prompt x [B, T, D] (mask [B, T]) through the decoder into cache slots
    [p, p + T); `prompt_mask` [B, p + T] covers the whole prompt, shared prefix included.

    Returns (first_logits [B, V] float32 for the first new token, cache, lengths [B] real
    prompt tokens, kv_mask [B, p + T + L] bool: the prompt mask, then ones; causality over the
    slots hides the new-token slots not written yet). `positions` (default: real tokens counted
    from p) may be multimodal [B, T, E/2] (see `_rope_positions`)."""
    b = x.shape[0]
    lengths = prompt_mask.sum(-1)
    if positions is None:
        positions = p + jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0)
    kv_mask = jnp.concatenate([prompt_mask.astype(bool), jnp.ones((b, n_new), bool)], axis=1)
    hidden, cache = lm.forward(x, positions, kv_mask, cache, p)
    first_logits = lm.logits(hidden[:, -1:])[:, 0]
    return first_logits, cache, lengths, kv_mask


def _tokens_seen(prompt_ids, prompt_mask, v: int) -> jax.Array:
    """[B, V] bool: the tokens each prompt holds, padding excluded (repetition penalty)."""
    b = prompt_ids.shape[0]
    real = jnp.where(prompt_mask.astype(bool), prompt_ids, v)  # padding -> dropped
    return jnp.zeros((b, v), bool).at[jnp.arange(b)[:, None], real].set(True, mode="drop")


def _decode_step(lm, lengths, kv_mask, start: int):
    """`step(cache, tokens [R], i) -> (logits [R, V], cache)`: feeds new token i of each of R
    rows (B, or B*K beams with `lengths` [R] and `kv_mask` [R, S] repeated to match) at cache
    slot `start + i` and position `lengths + i`."""

    def step(cache, tokens, i):
        h, cache = lm.forward(
            lm.embed(tokens[:, None]), (lengths + i)[:, None], kv_mask, cache, start + i
        )
        return lm.logits(h)[:, 0], cache

    return step


def _decode(first_logits, step, cache, seen, valid, row_ids, key, scalars, static) -> jax.Array:
    """Greedy or sampled decoding; rows stop at a stop token and are padded after it.

    first_logits [B, V] from the prefill, `step` from `_decode_step`, seen [B, V] bool or None,
    valid and row_ids [B]. Returns [B, L] int32."""
    _, temperature, top_p, penalty, eos = scalars
    cfg = static.beam
    b = first_logits.shape[0]
    rows = jnp.arange(b)

    def choose(logits, seen, i):
        if cfg.use_repetition_penalty:  # HF order: penalty, minimum length, temperature, top-p
            logits = penalize(logits, seen, penalty)
        if cfg.min_new_tokens:
            logits = ban_stops(logits, eos, i < cfg.min_new_tokens)
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
      pixel_values: optional [N, H, W, 3] float, N distinct images, each encoded once: a host
        array, or a jax.Array already on the mesh (an input pipeline's batch; it stays on
        device, also when its rows live on several processes).
      image_index: optional [B] int, the image of each row (only with `pixel_values`): rows may
        share an image. Omitted, it is `arange(B)`: one image per row, row i uses image i, as in
        transformers' `generate` (then N must equal B, else ValueError).
      qformer_input_ids, qformer_attention_mask: [B, Qt], a query model's (InstructBLIP)
        per-row instruction for its Q-Former, as its processor tokenizes it (required with
        `pixel_values` for such a model, refused otherwise).
      max_new_tokens: L. min_new_tokens: the stop tokens are banned before this many new
        tokens (HF's `min_new_tokens`). num_beams: 1 = greedy / sampling, > 1 = beam search
        (HF semantics, with `length_penalty`, `early_stopping` False | True | "never").
      do_sample, temperature, top_p, seed: sampling (no top-k: HF's default top_k=50 is not
        applied); the stream of row r is `fold_in(fold_in(key(seed), r), step)`.
      eos_token_id: int or list of stop tokens; pad_token_id: fills rows after they stop.
      repetition_penalty: HF's (on logits for greedy/sampling, on log-probs in beam search;
        prompt tokens count, padding does not). penalize_prompt=False: only the new tokens
        count (LAVIS's InstructBLIP call, whose `generate` sees no prompt ids).
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
