"""Beam search with Hugging Face `generate` semantics, as one `lax.while_loop` inside jit.

A line-for-line port of transformers 5's `GenerationMixin._beam_search` (top-2K continuations,
finished hypotheses kept in a fixed-size pool of K, the length-penalty early-stopping heuristic)
on static shapes, so that it runs inside the same jitted function as the prefill. Used by
`vl_jax.generate`; see docs/generation.md for the semantics in words.

Shape letters: B batch, K beams, V vocabulary, L max new tokens, S cache slots.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from vl_jax.models.llm import KVCache

NEG = -1.0e9  # HF's "impossible" score; adding it (not -inf) keeps its tie behaviour


class BeamConfig(NamedTuple):
    """Static settings (hashable: part of the jit cache key)."""

    num_beams: int
    max_new_tokens: int
    num_eos: int  # how many stop tokens (their ids are traced: no recompile per tokenizer)
    pad: int
    use_repetition_penalty: bool
    length_penalty: float
    early_stopping: bool | str  # False (HF default heuristic), True, or "never"
    min_new_tokens: int = 0  # stop tokens are banned before this many new tokens (HF's)
    penalize_prompt: bool = True  # the repetition penalty also counts the prompt's tokens


def penalize(scores: jax.Array, seen: jax.Array, penalty) -> jax.Array:
    """HF `RepetitionPenaltyLogitsProcessor`: scores [R, V] of tokens already in the sequence
    (`seen` [R, V] bool) are multiplied by `penalty` when negative, divided when positive."""
    hit = jnp.where(scores < 0, scores * penalty, scores / penalty)
    return jnp.where(seen, hit, scores)


def ban_stops(scores: jax.Array, eos: jax.Array, active) -> jax.Array:
    """HF `MinNewTokensLengthLogitsProcessor`: while `active` (a bool scalar: fewer new tokens
    than the minimum so far), the stop tokens `eos` [E] get -inf in scores [R, V]."""
    if eos.shape[0] == 0:
        return scores
    banned = jnp.zeros(scores.shape[-1], bool).at[eos].set(True) & active
    return jnp.where(banned, -jnp.inf, scores)


def is_stop(tokens: jax.Array, eos: jax.Array) -> jax.Array:
    """tokens [...] int, eos [E] int -> bool [...], True for any of the stop tokens."""
    if eos.shape[0] == 0:
        return jnp.zeros(tokens.shape, bool)
    return jnp.any(tokens[..., None] == eos, axis=-1)


def _gather(x: jax.Array, idx: jax.Array) -> jax.Array:
    """x [B, M, ...], idx [B, N] -> [B, N, ...] (HF `_gather_beams`)."""
    idx = idx.reshape(idx.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, idx, axis=1)


def reorder_rows(x: jax.Array, origin: jax.Array) -> jax.Array:
    """Rows [B*K, ...] -> the rows of beams `origin` [B, K] (beam index within its batch item).

    Gathering along the beam axis of a [B, K, ...] view keeps the batch axis (the one sharded
    over `data`) untouched, so no device needs another device's rows."""
    b, k = origin.shape
    return _gather(x.reshape(b, k, *x.shape[1:]), origin).reshape(x.shape)


def beam_search(
    first_logits: jax.Array,
    step: Callable[[KVCache, jax.Array, jax.Array], tuple[jax.Array, KVCache]],
    cache: KVCache,
    seen: jax.Array | None,
    valid: jax.Array,
    eos: jax.Array,
    repetition_penalty: jax.Array,
    cfg: BeamConfig,
) -> jax.Array:
    """Runs beam search from the prefill's last logits.

    Args:
      first_logits: [B, V] float32 logits of the token after each prompt.
      step: `(cache, tokens [B*K], t) -> (logits [B*K, V], cache)`: feeds the token chosen at
        new-token index `t` of every beam (beam-major within a batch item) through the model.
      cache: the prefill's KV cache with B rows; it is repeated to B*K rows here.
      seen: [B, V] bool, tokens of each prompt (for the repetition penalty), or None.
      valid: [B] bool, False for rows that only pad the batch to its bucket: they count as
        finished from the start so they never keep the loop running.
      eos: [E] int32 stop tokens (E = `cfg.num_eos`).
      repetition_penalty: float32 scalar (used when `cfg.use_repetition_penalty`).
    Returns:
      [B, L] int32: the best finished hypothesis of each row, `cfg.pad` after its end.
    """
    k, n_new = cfg.num_beams, cfg.max_new_tokens
    b, v = first_logits.shape
    keep = max(2, 1 + cfg.num_eos) * k  # HF: enough candidates that K stay unfinished
    top_mask = jnp.arange(keep) < k  # only the K best candidates may finish
    # Length-penalty divisors, computed like HF's Python `len ** length_penalty` (in double).
    lp = cfg.length_penalty
    denom = jnp.asarray([float(n) ** lp for n in range(1, n_new + 1)], jnp.float32)
    never = cfg.early_stopping == "never" and lp > 0.0
    stop_when_full = cfg.early_stopping is True

    def select(t, logits, st):
        """One HF beam step: logits [B*K, V] for new-token index t -> updated state."""
        run_seq, run_scores, fin_seq, fin_scores, fin, unsat, seen = st[:7]
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        if cfg.use_repetition_penalty:
            # HF applies the processors to the log-probabilities in beam search.
            logp = penalize(logp, seen, repetition_penalty)
        if cfg.min_new_tokens:  # after the penalty, as HF orders its processors
            logp = ban_stops(logp, eos, t < cfg.min_new_tokens)
        acc = (logp.reshape(b, k, v) + run_scores[:, :, None]).reshape(b, k * v)
        top_lp, top_idx = jax.lax.top_k(acc, keep)  # [B, 2K], sorted, ties -> lower index
        beam, tok = top_idx // v, (top_idx % v).astype(jnp.int32)
        top_seq = _gather(run_seq, beam).at[:, :, t].set(tok)
        hits = is_stop(tok, eos) | (t + 1 >= n_new) | ~valid[:, None]

        # Running beams for the next step: the K best that did not just finish.
        run_lp = top_lp + hits.astype(jnp.float32) * NEG
        _, nxt = jax.lax.top_k(run_lp, k)
        run_seq, run_scores = _gather(top_seq, nxt), _gather(run_lp, nxt)
        origin = _gather(beam, nxt)

        # Finished pool: merge the K best candidates that just finished into it.
        did = hits & top_mask[None, :]
        cand = top_lp / denom[t]
        if stop_when_full:
            cand += jnp.all(fin, axis=-1, keepdims=True).astype(jnp.float32) * NEG
        cand += (~unsat).astype(jnp.float32)[:, None] * NEG
        cand += (~did).astype(jnp.float32) * NEG
        m_scores = jnp.concatenate([fin_scores, cand], axis=1)
        _, best = jax.lax.top_k(m_scores, k)
        fin_seq = _gather(jnp.concatenate([fin_seq, top_seq], axis=1), best)
        fin_scores = _gather(m_scores, best)
        fin = _gather(jnp.concatenate([fin, did], axis=1), best)

        if seen is not None:
            rows = jnp.arange(b * k)
            seen = reorder_rows(seen, origin).at[rows, run_seq[:, :, t].reshape(-1)].set(True)

        # HF `_check_early_stop_heuristic` at cur_len + 1.
        best_len = n_new - 1 if never else t
        best_running = run_scores[:, :1] / denom[best_len]
        worst = jnp.where(fin, jnp.min(fin_scores, axis=1, keepdims=True), NEG)
        unsat = unsat & jnp.any(best_running > worst, axis=-1)
        go = jnp.any(unsat) & ~jnp.all(hits)
        if stop_when_full:
            go &= ~jnp.all(fin)
        return (run_seq, run_scores, fin_seq, fin_scores, fin, unsat, seen), origin, go

    run_seq = jnp.full((b, k, n_new), cfg.pad, jnp.int32)
    state = (
        run_seq,
        jnp.tile(jnp.asarray([0.0] + [NEG] * (k - 1), jnp.float32), (b, 1)),  # only beam 0 live
        run_seq,
        jnp.full((b, k), NEG, jnp.float32),
        jnp.zeros((b, k), bool),
        valid,
        None if seen is None else jnp.repeat(seen, k, axis=0),
    )
    # Step 0 from the prefill logits (identical for all beams of a row: computed once).
    state, origin, go = select(0, jnp.repeat(first_logits, k, axis=0), state)
    cache = jax.tree.map(lambda c: reorder_rows(jnp.repeat(c, k, axis=0), origin), cache)

    def cond(carry):
        t, go = carry[0], carry[1]
        return go & (t < n_new)

    def body(carry):
        t, _, cache, state = carry
        logits, cache = step(cache, state[0][:, :, t - 1].reshape(-1), t - 1)
        state, origin, go = select(t, logits, state)
        cache = jax.tree.map(lambda c: reorder_rows(c, origin), cache)
        return t + 1, go, cache, state

    _, _, _, state = jax.lax.while_loop(cond, body, (jnp.int32(1), go, cache, state))
    return state[2][:, 0]
