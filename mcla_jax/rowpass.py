"""The per-epoch pass over all rows, in blocks: assignments, per-cluster top rows, soft prototypes.

Every epoch, a trained method needs statistics over the whole dataset: each row's cluster, the
``m`` most confident rows of each cluster (SIC's semantic centres, MCLA's text centres) and the
assignment-weighted prototypes. Computed in one shot they take several ``[N, K]`` arrays (logits,
softmaxes, the transposed scores of a top-k): 5.1 GB each at ImageNet-1k size (1.28M x K = 1000).
Here a ``lax.scan`` walks the rows in ``Blocks`` of a few thousand and carries only

* the assignments ``[N]`` int32,
* a running top-``m`` per cluster ``[K, m]`` (scores and rows), merged with each block's
  ``[K, size]`` scores by one ``top_k`` -- as kNN merges its running neighbours,
* the prototype sums ``sum_i p_ik x_i`` ``[K, E]`` of each head,

so the memory beyond the features is ``O(size K + K m + K E)``, independent of ``N``. The result
equals the one-shot computation: the same rows win (ties go to the lower row in both), the sums
differ only in float summation order.

No padded copy of the features is made: the last block starts at ``N - size`` (it overlaps its
predecessor) and ``valid`` masks the rows it repeats. Each block is split over the mesh's ``data``
axis (``Blocks.spec``), so a multi-device pass is data-parallel; the reductions are global.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding

from mcla_jax.losses import l2_normalize

HI = jax.lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class Blocks:
    """``count`` blocks of ``size`` rows that cover rows ``[0, n)`` of a table of ``rows`` rows.

    ``rows = max(n, size)``: only inputs smaller than one block need padding (``Blocks.plan``).
    ``spec``: the sharding of one block inside the jit (rows over ``data``), or None.
    """

    n: int
    size: int
    count: int
    spec: NamedSharding | None = None

    @classmethod
    def plan(cls, n: int, max_rows: int, multiple: int = 1, spec=None) -> Blocks:
        """The fewest blocks of at most ~``max_rows`` rows, each a multiple of ``multiple``
        (the ``data`` axis size), of near-equal size (so the overlap of the last is small)."""
        if n <= 0 or max_rows <= 0 or multiple <= 0:
            raise ValueError(f"bad block plan: n={n}, max_rows={max_rows}, multiple={multiple}")
        count = -(-n // max(max_rows, multiple))
        per_block = -(-n // count)
        size = -(-per_block // multiple) * multiple
        return cls(n, size, count, spec)

    @property
    def rows(self) -> int:
        """Rows the feature tables must have (``n``, or ``size`` when ``n < size``)."""
        return max(self.n, self.size)

    def take(self, x: jax.Array, b) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Block ``b`` (traced) of ``x`` ``[rows, ...]``: ``(x_b [size, ...], row ids [size],
        valid [size] bool)``; ``valid`` is False for padding and for rows of an earlier block."""
        start = jnp.minimum(b * self.size, self.rows - self.size)
        xb = jax.lax.dynamic_slice_in_dim(x, start, self.size)
        if self.spec is not None:
            xb = jax.lax.with_sharding_constraint(xb, self.spec)
        ids = start + jnp.arange(self.size)
        return xb, ids, (ids >= b * self.size) & (ids < self.n)


def epoch_pass(model, u, t, blocks: Blocks, k: int, *, m: int = 0, prototypes: bool = False):
    """One pass of ``model`` over all rows (call inside a jit).

    Args:
      model: ``(u [B, E], t [B, E]) -> (z [B, E], logits_img [B, K], logits_txt [B, K] | None)``
        (``mcla_jax.methods``).
      u, t: ``[blocks.rows, E]`` prepared image features and text counterparts.
      blocks: the row blocks; k: clusters ``K``.
      m: rows per cluster to keep by image logit (0: none).
      prototypes: also sum each head's assignment-weighted features.

    Returns:
      ``assign`` ``[N]`` int32 (argmax image logit); with ``m``: ``top`` ``[K, m]`` int32, the
      rows with the largest image logit ``k`` (ties: lower row first); with ``prototypes``:
      ``proto_img`` = ``n(sum_i softmax(li)_ik z_i)`` and ``proto_txt`` = ``n(sum_i
      softmax(lt)_ik t_i)``, ``[K, E]`` each (``losses.soft_prototypes`` over all rows).
    """
    n, e = blocks.n, u.shape[1]
    carry = dict(assign=jnp.zeros(n, jnp.int32))
    if m:
        carry.update(
            top_s=jnp.full((k, m), -jnp.inf, jnp.float32), top=jnp.zeros((k, m), jnp.int32)
        )
    if prototypes:
        carry.update(sum_img=jnp.zeros((k, e), jnp.float32), sum_txt=jnp.zeros((k, e), jnp.float32))

    def body(c, b):
        ub, ids, valid = blocks.take(u, b)
        tb, _, _ = blocks.take(t, b)
        z, li, lt = model(ub, tb)
        c = dict(c)
        # Rows of an earlier block (the last block's overlap) and padding write nowhere.
        c["assign"] = (
            c["assign"]
            .at[jnp.where(valid, ids, n)]
            .set(jnp.argmax(li, axis=-1).astype(jnp.int32), mode="drop")
        )
        if m:
            # The block's own top rows first (ties: lower row), then, with several blocks, a
            # merge with the carried ones, which come first and are lower: the same rows win as
            # in one top_k over all rows.
            bs, bj = jax.lax.top_k(jnp.where(valid[None, :], li.T, -jnp.inf), min(m, blocks.size))
            br = ids.astype(jnp.int32)[bj]
            if blocks.count == 1:
                c["top_s"], c["top"] = bs, br
            else:
                s = jnp.concatenate([c["top_s"], bs], axis=1)
                c["top_s"], pos = jax.lax.top_k(s, m)
                c["top"] = jnp.take_along_axis(jnp.concatenate([c["top"], br], 1), pos, axis=1)
        if prototypes:
            w = valid.astype(jnp.float32)[:, None]
            c["sum_img"] += jnp.matmul((jax.nn.softmax(li, -1) * w).T, z, precision=HI)
            c["sum_txt"] += jnp.matmul((jax.nn.softmax(lt, -1) * w).T, tb, precision=HI)
        return c, None

    c, _ = jax.lax.scan(body, carry, jnp.arange(blocks.count))
    out = dict(assign=c["assign"])
    if m:
        out["top"] = c["top"]
    if prototypes:
        out["proto_img"], out["proto_txt"] = l2_normalize(c["sum_img"]), l2_normalize(c["sum_txt"])
    return out


def mean_rows(x: jax.Array, rows: jax.Array, chunk: int = 32) -> jax.Array:
    """``n(mean_j x[rows[k, j]])`` ``[K, E]`` for ``rows`` ``[K, m]``, ``chunk`` clusters at a
    time (``x[rows]`` at once is ``[K, m, E]``: 2.4 GB at K = 1000, m = 1152, E = 512)."""
    x = jnp.asarray(x)
    return l2_normalize(jax.lax.map(lambda r: jnp.mean(x[r], axis=0), rows, batch_size=chunk))
