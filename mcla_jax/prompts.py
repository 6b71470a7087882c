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
the bank, and the batch's counterparts are computed from that bank. A step's nouns are drawn
per length group (``subset_groups``: each group's share of the step, walking its own
permutation), so each group is read at its own length.

Cost (why the text path is not a plain tower call): every prompt shares its first ``1 + n``
tokens and the tower is causal, so ``TextTower.pool_shared_prefix`` computes that prefix once
per call and each noun only from there to its end-of-text token; nouns are grouped by that
length (``length_buckets``). At CLIP ViT-B/32's tower with 1,000 WordNet nouns this is ~4 instead
of 16 token positions per noun (docs/benchmarks.md, ``mcla_epoch``).
"""

from __future__ import annotations

import copy
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
      max_buckets: at most this many suffix lengths for ``all_rows`` (see below).

    ``arrays()`` are the jit arguments (tower state, token suffixes, pooled positions; never
    differentiated); ``init_context()`` the ``[n_ctx, D]`` initial context (token embeddings of
    ``init``).

    Every prompt starts with the same ``P = 1 + n_ctx`` tokens (BOS, then the context), so the
    embeddings go through ``TextTower.pool_shared_prefix``: the prefix once per call, each noun
    only from position ``P`` to its end-of-text token (``embed`` is the plain full-sequence
    path, the reference it is tested against). ``embed_rows`` (any subset of rows, one static
    shape) reads suffixes of the space's longest length; ``all_rows`` (every noun) groups the
    nouns by suffix length into at most ``max_buckets`` buckets, each read at its own length.
    """

    def __init__(self, text_tower: nnx.Module, tokens: PromptTokens, mesh, tau: float = 0.005,
                 max_buckets: int = 4):  # fmt: skip
        self.graphdef, state = nnx.split(text_tower)
        self.state = parallel.shard_state(state, mesh)
        self.tokens, self.mesh, self.tau = tokens, mesh, float(tau)
        self.num_nouns = int(tokens.ids.shape[0])
        self._init = np.asarray(
            jax.device_get(text_tower.tok_embed.embedding[...][tokens.init_ids]), np.float32
        )
        ids, p = tokens.ids, 1 + tokens.n_ctx
        eot = np.asarray(text_tower.pool_index(ids), np.int64)
        if np.any(eot < p) or np.any(ids[:, 0] != ids[0, 0]):
            raise ValueError("prompt rows must share BOS and end after the context")
        self.prefix_len = p
        self._bos = ids[:1, 0].astype(np.int32)  # [1]
        self._eot = (eot - p).astype(np.int32)  # [M] pooled position within the suffix
        self._suffix = ids[:, p : int(eot.max()) + 1].astype(np.int32)  # [M, S_max]
        self.buckets = length_buckets(self._eot + 1, max_buckets)
        order = np.concatenate([rows for rows, _ in self.buckets])
        self._where = np.argsort(order).astype(np.int32)  # noun row -> position in `order`
        self.subset: tuple[SubsetGroup, ...] | None = None  # set by `with_subset`

    def with_subset(self, per_step: int) -> PromptText:
        """This text path re-embedding ``per_step`` nouns per step (``0`` or ``>= M``: every
        noun, ``subset`` None), drawn by length group (``subset_groups``)."""
        out = copy.copy(self)
        per = int(per_step)
        every = per <= 0 or per >= self.num_nouns
        out.subset = None if every else subset_groups(self._eot + 1, per, self.mesh.shape[DATA])
        return out

    def noun_rows(self, rng: np.random.Generator, steps: int) -> np.ndarray:
        """``[steps, s]`` int32 noun rows re-embedded at each step (``subset`` layout)."""
        return noun_rows(rng, self.subset, steps)

    def init_context(self) -> np.ndarray:
        return self._init.copy()

    def arrays(self) -> dict:
        rep = parallel.replicated(self.mesh)
        host = dict(bos=self._bos, suffix=self._suffix, eot=self._eot)
        return dict(tower=self.state, **jax.device_put(host, rep))

    # -------------------------------------------------------- pure functions (inside a jit)

    def _embed(self, frozen: dict, ctx: jax.Array, rows: jax.Array, length: int) -> jax.Array:
        """Unit embeddings ``[b, E]`` of noun ``rows`` ``[b]`` with suffixes cut to ``length``
        (at least each row's end-of-text position + 1)."""
        tower = nnx.merge(self.graphdef, frozen["tower"])
        bos = tower.tok_embed(frozen["bos"])  # [1, D]
        prefix = jnp.concatenate([bos, ctx.astype(bos.dtype)])  # [P, D]
        suffix = tower.tok_embed(frozen["suffix"][rows, :length])  # [b, S, D]
        pooled = tower.pool_shared_prefix(prefix, suffix, frozen["eot"][rows])
        return l2_normalize(tower.proj(pooled).astype(jnp.float32))

    def embed_rows(self, frozen: dict, ctx: jax.Array, rows: jax.Array) -> jax.Array:
        """``t_w(ctx)`` ``[b, E]`` of noun ``rows`` ``[b]`` (split over ``data`` if ``rows`` is)."""
        return self._embed(frozen, ctx, rows, self._suffix.shape[1])

    def embed_subset(self, frozen: dict, ctx: jax.Array, w: jax.Array) -> jax.Array:
        """Embeddings ``[s, E]`` of one step's rows ``w`` ``[s]`` (``noun_rows`` layout: the
        columns of each ``subset`` group together, each group read at its own length)."""
        parts, lo = [], 0
        spec = NamedSharding(self.mesh, P(DATA))
        for g in self.subset:
            r = jax.lax.with_sharding_constraint(w[lo : lo + g.width], spec)
            parts.append(self._embed(frozen, ctx, r, g.length))
            lo += g.width
        return jnp.concatenate(parts)

    def all_rows(self, frozen: dict, ctx: jax.Array, chunk: int = 1024) -> jax.Array:
        """All ``M`` noun embeddings ``[M, E]`` under ``ctx`` (differentiable in ``ctx``): per
        length bucket, ``chunk`` nouns at a time, each chunk split over ``data``."""
        d = self.mesh.shape[DATA]
        spec = NamedSharding(self.mesh, P(DATA))
        parts = []
        for rows, length in self.buckets:
            size = -(-min(chunk, len(rows)) // d) * d
            count = -(-len(rows) // size)
            idx = np.resize(rows, count * size).reshape(count, size).astype(np.int32)

            def one(r, length=length):
                r = jax.lax.with_sharding_constraint(r, spec)
                return self._embed(frozen, ctx, r, length)

            idx = jnp.asarray(idx)
            out = one(idx[0])[None] if count == 1 else jax.lax.map(one, idx)
            parts.append(out.reshape(count * size, -1)[: len(rows)])
        return jnp.concatenate(parts)[self._where]

    def bank(self, frozen: dict, ctx: jax.Array, chunk: int = 1024) -> jax.Array:
        """``all_rows`` with no gradient: the epoch's noun bank ``[M, E]``."""
        return jax.lax.stop_gradient(self.all_rows(frozen, ctx, chunk))

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


@dataclasses.dataclass(frozen=True)
class SubsetGroup:
    """Nouns of similar prompt length drawn together at every step.

    Attributes:
      rows: ``[n_g]`` the group's noun rows. count: nouns drawn from it per step.
      width: ``count`` rounded up to the ``data`` axis (columns in ``noun_rows``).
      length: the suffix length the group is read at (its longest).
    """

    rows: np.ndarray
    count: int
    width: int
    length: int


def subset_groups(lengths: np.ndarray, per_step: int, multiple: int,
                  max_groups: int = 4) -> tuple[SubsetGroup, ...]:  # fmt: skip
    """The per-step draw of ``per_step`` of ``M`` nouns, stratified by suffix length
    ``lengths`` ``[M]``: ``length_buckets`` groups (at most ``min(max_groups, per_step)``),
    each drawing a share of ``per_step`` proportional to its size (largest remainders) and at
    least one noun (a rare length is then refreshed more often than its share). So a step's
    nouns are read at their group's length instead of all at the space's longest, and every
    noun is still refreshed at least about every ``M / per_step`` steps."""
    m = len(lengths)
    groups = [rows for rows, _ in length_buckets(lengths, min(max_groups, per_step))]
    share = np.array([len(r) * per_step / m for r in groups])
    count = np.maximum(np.floor(share).astype(int), 1)
    while count.sum() > per_step:  # the minimum of one took nouns from the largest shares
        count[np.argmax(np.where(count > 1, share - count, -np.inf))] -= 1
    count[np.argsort(-(share - count), kind="stable")[: per_step - count.sum()]] += 1
    return tuple(
        SubsetGroup(
            r.astype(np.int32), int(c), -(-int(c) // multiple) * multiple, int(lengths[r].max())
        )
        for r, c in zip(groups, count)
    )


def noun_rows(rng: np.random.Generator, groups, steps: int) -> np.ndarray:
    """``[steps, sum(width)]`` int32 noun rows re-embedded with gradient at each step: for each
    ``SubsetGroup`` in turn, ``count`` rows walking random permutations of its rows (so an epoch
    covers each group evenly), padded to ``width`` by repeating rows (a repeated row gets the
    same value twice)."""
    cols = []
    for g in groups:
        reps = -(-steps * g.count // len(g.rows))
        walk = np.concatenate([rng.permutation(g.rows) for _ in range(reps)])
        walk = walk[: steps * g.count].reshape(steps, g.count)
        cols.append(walk[:, np.resize(np.arange(g.count), g.width)])
    return np.concatenate(cols, axis=1).astype(np.int32)


def length_buckets(lengths: np.ndarray, max_buckets: int) -> list[tuple[np.ndarray, int]]:
    """Rows grouped by ``lengths`` ``[M]`` into at most ``max_buckets`` groups ``(rows, L)``,
    every row of a group read at the group's largest length ``L``: the grouping with the fewest
    padded positions (dynamic programme over the distinct lengths; each group is one more
    compiled shape, hence the cap)."""
    values, counts = np.unique(lengths, return_counts=True)
    n, g = len(values), max(1, min(int(max_buckets), len(values)))
    # cost[i][j]: padding when distinct lengths i..j-1 share values[j-1]
    cum = np.concatenate([[0], np.cumsum(counts)])
    wsum = np.concatenate([[0], np.cumsum(counts * values)])

    def cost(i, j):
        return int((cum[j] - cum[i]) * values[j - 1] - (wsum[j] - wsum[i]))

    best = {(0, 0): (0, [])}
    for k in range(1, g + 1):
        for j in range(1, n + 1):
            cands = [(best[(k - 1, i)][0] + cost(i, j), best[(k - 1, i)][1] + [j])
                     for i in range(j) if (k - 1, i) in best]  # fmt: skip
            if cands:
                best[(k, j)] = min(cands)
    cuts = min(best[(k, n)] for k in range(1, g + 1) if (k, n) in best)[1]
    out, lo = [], 0
    for hi in cuts:
        rows = np.flatnonzero((lengths >= values[lo]) & (lengths <= values[hi - 1]))
        out.append((rows.astype(np.int32), int(values[hi - 1])))
        lo = hi
    return out
