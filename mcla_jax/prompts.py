"""Learnable prompt context (CoOp-style) through the frozen CLIP text tower: MCLA's text path.

Each noun ``w`` of the semantic space is written as the prompt ``"<init> {w}."`` (``init`` =
``"a photo of a"``, the prompt of the noun cache); its token sequence is
``[BOS, c_1 .. c_n, w tokens, ".", EOS, pad...]``. The ``n`` context positions ``c_1 .. c_n``
hold *learned* vectors at the token-embedding level (shape ``[n, D]``, shared by all nouns,
initialised from the token embeddings of ``init``) instead of ``tok_embed`` rows; the rest of the
tower (positions, transformer, final LayerNorm, projection) is CLIP's and frozen:

    t_w(ctx) = n( proj( text_tower([tok(BOS); ctx; tok(w . EOS)]) ) )              [M, E]

With ``ctx`` equal to its initial value, ``t_w`` equals the frozen tower's embedding of
``"a photo of a {w}."`` (tested against transformers' ``CLIPTextModelWithProjection``). The
tower's parameters are a jit *argument* that is never differentiated: only ``ctx`` (a parameter
of ``MCLAModel``) receives gradients.

The text counterparts of the images (``losses.text_counterpart``), the semantic centres and the
text prototypes become functions of ``ctx``. How they are refreshed (docs/mcla.md, "Prompt
learning"): once per epoch all ``M`` nouns are embedded (the *bank*, no gradient) and with it
every row's counterpart, their train mean (the centring of ``prepare``) and the epoch targets;
at every step ``nouns_per_step`` nouns (0 = all) are re-embedded with gradient and spliced into
the bank, and the batch's counterparts are computed from that bank.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mcla_jax.losses import l2_normalize, text_counterpart
from vl_jax import parallel
from vl_jax.models.clip_tokenizer import tokenize
from vl_jax.parallel import DATA

_TOKEN_BUCKET = 8  # padded length rounded up to this (one compiled shape per run)


@dataclasses.dataclass(frozen=True)
class PromptTokens:
    """Token ids of ``"<init> {noun}."`` for ``M`` nouns.

    Attributes:
      ids, mask: ``[M, L]`` int32 token ids and attention mask (1 = token).
      n_ctx: number of context positions (1 .. n_ctx, right after BOS).
      init_ids: ``[n_ctx]`` the token ids of ``init`` (the context's initial value).
    """

    ids: np.ndarray
    mask: np.ndarray
    n_ctx: int
    init_ids: np.ndarray


def prompt_tokens(tokenizer, nouns: Sequence[str], context_length: int,
                  init: str = "a photo of a") -> PromptTokens:  # fmt: skip
    """Tokenises ``"<init> {noun}."`` for every noun and checks that positions ``1 .. n_ctx``
    hold ``init``'s tokens in every row (so the context replaces exactly those).

    Raises:
      ValueError: ``init`` is empty, or a noun changes how ``init`` is tokenised.
    """
    init_ids = np.asarray(tokenizer(init, add_special_tokens=False)["input_ids"], np.int32)
    n = len(init_ids)
    if n == 0:
        raise ValueError(f"prompt init {init!r} has no tokens")
    ids, mask = tokenize(tokenizer, [f"{init} {w}." for w in nouns], context_length)
    length = min(-(-ids.shape[1] // _TOKEN_BUCKET) * _TOKEN_BUCKET, context_length)
    pad = ((0, 0), (0, length - ids.shape[1]))
    ids, mask = np.pad(ids, pad), np.pad(mask, pad)
    bad = np.flatnonzero(np.any(ids[:, 1 : 1 + n] != init_ids[None], axis=1))
    if len(bad):
        raise ValueError(f"the prompt {init!r} tokenises differently before {nouns[bad[0]]!r}")
    return PromptTokens(ids.astype(np.int32), mask.astype(np.int32), n, init_ids)


def embed(tower: nnx.Module, ctx: jax.Array, ids: jax.Array, mask: jax.Array) -> jax.Array:
    """Unit text embeddings ``[B, E]`` float32 of prompts ``ids, mask`` ``[B, L]`` whose positions
    ``1 .. n`` (``n = ctx.shape[0]``) are replaced by the context ``ctx`` ``[n, D]``.

    ``tower``: the CLIP ``TextTower`` (with its ``proj``), e.g. ``nnx.merge(graphdef, state)``.
    """
    x = tower.tok_embed(ids)  # [B, L, D]
    c = jnp.broadcast_to(ctx.astype(x.dtype)[None], (x.shape[0], *ctx.shape))
    x = jax.lax.dynamic_update_slice_in_dim(x, c, 1, axis=1)
    e = tower.proj(tower.from_embeddings(x, ids, mask)).astype(jnp.float32)
    return l2_normalize(e)


class PromptText:
    """The prompt-learning text path of one run: the frozen text tower (placed on the mesh per
    ``vl_jax.parallel.param_shardings``) and the prompt tokens of the semantic space's nouns.

    Args:
      text_tower: the checkpoint's ``CLIP.text`` module (``ClipCheckpoint.model.text``).
      tokens: ``prompt_tokens(...)`` of the ``M`` space nouns, in the row order of the noun
        embeddings the counterparts use.
      mesh: the run's mesh. tau: the counterparts' softmax temperature (``tau.text``).

    ``arrays()`` are the jit arguments (tower state, ids, mask; never differentiated);
    ``init_context()`` the ``[n_ctx, D]`` initial context (token embeddings of ``init``).
    """

    def __init__(self, text_tower: nnx.Module, tokens: PromptTokens, mesh, tau: float = 0.005):
        self.graphdef, state = nnx.split(text_tower)
        self.state = parallel.shard_state(state, mesh)
        self.tokens, self.mesh, self.tau = tokens, mesh, float(tau)
        self.num_nouns = int(tokens.ids.shape[0])
        self._init = np.asarray(
            jax.device_get(text_tower.tok_embed.embedding[...][tokens.init_ids]), np.float32
        )

    def init_context(self) -> np.ndarray:
        return self._init.copy()

    def arrays(self) -> dict:
        rep = parallel.replicated(self.mesh)
        return dict(
            tower=self.state,
            ids=jax.device_put(self.tokens.ids, rep),
            mask=jax.device_put(self.tokens.mask, rep),
        )

    # -------------------------------------------------------- pure functions (inside a jit)

    def embed_rows(self, frozen: dict, ctx: jax.Array, rows: jax.Array) -> jax.Array:
        """``t_w(ctx)`` ``[b, E]`` of noun ``rows`` ``[b]`` (split over ``data`` if ``rows`` is)."""
        tower = nnx.merge(self.graphdef, frozen["tower"])
        return embed(tower, ctx, frozen["ids"][rows], frozen["mask"][rows])

    def bank(self, frozen: dict, ctx: jax.Array, chunk: int = 1024) -> jax.Array:
        """All ``M`` noun embeddings ``[M, E]`` under ``ctx``, ``chunk`` nouns at a time, each
        chunk split over ``data`` (no gradient is taken through it)."""
        d = self.mesh.shape[DATA]
        m = self.num_nouns
        chunk = -(-min(chunk, m) // d) * d
        count = -(-m // chunk)
        rows = np.minimum(np.arange(count * chunk), m - 1).reshape(count, chunk).astype(np.int32)
        spec = NamedSharding(self.mesh, P(DATA))

        def one(r):
            r = jax.lax.with_sharding_constraint(r, spec)
            return self.embed_rows(frozen, ctx, r)

        out = jax.lax.map(one, jnp.asarray(rows))  # [count, chunk, E]
        return jax.lax.stop_gradient(out.reshape(count * chunk, -1)[:m])

    def counterparts(self, r: jax.Array, bank: jax.Array, mean: jax.Array) -> jax.Array:
        """Prepared text counterparts ``n(t~(r) - mean)`` ``[B, E]`` of image features ``r``
        ``[B, E]`` (raw; normalised inside ``text_counterpart``) over the noun ``bank``."""
        return l2_normalize(text_counterpart(r, bank, self.tau) - mean)

    def all_counterparts(self, r: jax.Array, bank: jax.Array, blocks):
        """Every row's prepared counterpart ``[blocks.rows, E]`` and the train mean ``[E]`` of
        the raw counterparts over the ``N`` real rows (``prepare``'s centring), in ``blocks``
        (``mcla_jax.rowpass.Blocks``; memory ``[size, M]``)."""
        rows, e = r.shape

        def body(c, b):
            rb, ids, valid = blocks.take(r, b)
            tb = text_counterpart(rb, bank, self.tau)
            buf = jax.lax.dynamic_update_slice_in_dim(c[0], tb, ids[0], axis=0)
            return (buf, c[1] + jnp.sum(tb * valid[:, None], axis=0)), None

        init = (jnp.zeros((rows, e), jnp.float32), jnp.zeros(e, jnp.float32))
        (raw, total), _ = jax.lax.scan(body, init, jnp.arange(blocks.count))
        mean = total / blocks.n
        return l2_normalize(raw - mean), mean


def noun_rows(rng: np.random.Generator, num_nouns: int, steps: int, per_step: int,
              multiple: int) -> np.ndarray:  # fmt: skip
    """``[steps, s]`` int32 noun rows re-embedded with gradient at each step: ``per_step`` (0 or
    >= M: all ``M``) nouns, walking a random permutation so that an epoch covers the nouns
    evenly; ``s`` is rounded up to ``multiple`` (the ``data`` axis) by repeating rows (a
    repeated row gets the same value twice)."""
    per = num_nouns if per_step <= 0 or per_step >= num_nouns else per_step
    s = -(-per // multiple) * multiple
    if per == num_nouns:
        row = np.resize(np.arange(num_nouns), s)
        return np.broadcast_to(row, (steps, s)).astype(np.int32).copy()
    reps = -(-steps * per // num_nouns)
    walk = np.concatenate([rng.permutation(num_nouns) for _ in range(reps)])[: steps * per]
    walk = walk.reshape(steps, per)
    return walk[:, np.resize(np.arange(per), s)].astype(np.int32)
