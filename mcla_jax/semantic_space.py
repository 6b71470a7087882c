"""Semantic spaces: the WordNet nouns that describe a set of images (SIC, TAC, MCLA).

Each builder takes unit-norm CLIP image features ``[N, E]`` and the noun table's text embeddings
``[M, E]`` (``mcla_jax.noun_embeddings.embed_nouns``; row ``i`` <-> ``wordnet.load().wnids[i]``)
and returns a ``SemanticSpace``: the chosen noun rows with a score each, best first.

    space = sic_space(img, emb, n_clusters=15)           # SIC: top-500 per centre, uniqueness
    space = tac_space(img, emb)                          # TAC: ~N/300 centres, top-5 nouns each
    space = mcla_space(img, emb, wordnet.load(), n_clusters=15)  # SIC + WordNet-hierarchy filter
    write_tsv(space, workdir)                            # <workdir>/semantic_space_<method>.tsv

The formulas (docs/semantic_space.md, taken from SIC's and TAC's official code) are restated in
each docstring. Memory stays O((N + M) E): similarities are computed by a jitted scan over blocks of
``block`` nouns with a running ``lax.top_k`` merge, so at most ``[Q, block]`` scores exist at once
(Q = number of centres). Ties go to the lower noun row everywhere, so results are deterministic
and do not depend on ``block``.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import numpy as np

from mcla_jax import wordnet
from vl_jax.cluster import kmeans
from vl_jax.fileio import atomic_open

HI = jax.lax.Precision.HIGHEST
NOUN_BLOCK = 8192  # nouns per similarity block: [Q, 8192] float32 scores per step


@dataclasses.dataclass(frozen=True)
class SemanticSpace:
    """Chosen nouns, best first (score descending, then noun row ascending).

    Attributes:
      method: ``"sic"`` | ``"tac"`` | ``"mcla"`` (names the TSV file).
      indices: int64 ``[S]`` rows of the noun table / embedding matrix.
      scores: float32 ``[S]`` the method's score (see each builder).
      columns: extra per-noun columns, each ``[S]`` (e.g. ``"centre"``: the centre that chose it).
    """

    method: str
    indices: np.ndarray
    scores: np.ndarray
    columns: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.indices)


# ------------------------------------------------------------------------------ blocked kernels
def _unit(x, name: str) -> np.ndarray:
    """float32 ``[R, E]`` with unit rows (inputs should be unit already; this makes sure)."""
    x = np.asarray(x, np.float32)
    if x.ndim != 2 or 0 in x.shape or not np.all(np.isfinite(x)):
        raise ValueError(f"{name} must be a finite non-empty [R, E] matrix, got shape {x.shape}")
    norm = np.sqrt(np.einsum("re,re->r", x, x))[:, None]
    return x / np.where(norm > 0, norm, 1.0)


def _padded_blocks(t: np.ndarray, block: int, candidates=None):
    """Noun table ``[M, E]`` -> (``[Mp, E]`` zero padded to a multiple of ``block``, valid [Mp]);
    ``candidates`` (bool ``[M]``) marks the nouns that may be chosen (default all)."""
    if block < 1:
        raise ValueError(f"block must be >= 1, got {block}")
    m = t.shape[0]
    mp = -(-m // block) * block
    if mp != m:  # one copy of the table; blocks are then static-shape slices of it
        t = np.concatenate([t, np.zeros((mp - m, t.shape[1]), t.dtype)])
    valid = np.arange(mp) < m
    if candidates is not None:
        candidates = np.asarray(candidates, bool)
        if candidates.shape != (m,):
            raise ValueError(
                f"candidates must be a bool mask of shape ({m},), got {candidates.shape}"
            )
        valid[:m] &= candidates
    return t, valid


def _merge(vals, idx, v, j, k):
    """Running top-k ``[Q, k]`` merged with a block's ``[Q, kb]``. Running entries come first and
    hold lower rows; ``top_k`` is stable, so ties keep going to the lower row."""
    v2, j2 = jax.lax.top_k(jnp.concatenate([vals, v], 1), k)
    return v2, jnp.take_along_axis(jnp.concatenate([idx, j], 1), j2, 1)


def _noun_blocks(t, valid, block: int):
    """``(t [Mp, E], valid [Mp])`` -> scan inputs ``(t [Mp/b, b, E], valid [Mp/b, b], rows
    [Mp/b, b] int32)`` for ``b = block`` (``Mp`` a multiple of it)."""
    ids = jnp.arange(t.shape[0], dtype=jnp.int32)
    return t.reshape(-1, block, t.shape[1]), valid.reshape(-1, block), ids.reshape(-1, block)


@functools.lru_cache(maxsize=16)
def _topk_program(k: int, block: int):
    """Jitted ``(q [Q, E], t [Mp, E], valid [Mp]) -> (scores [Q, k], rows [Q, k])``: the ``k``
    largest ``q . t`` per query, scanning ``t`` in blocks of ``block`` rows."""
    kb = min(k, block)

    def run(q, t, valid):
        blocks = _noun_blocks(t, valid, block)

        def step(carry, blk):
            tb, vb, ib = blk
            s = jnp.where(vb[None], jnp.dot(q, tb.T, precision=HI), -jnp.inf)
            v, j = jax.lax.top_k(s, kb)
            return _merge(*carry, v, ib[j], k), None

        init = (jnp.full((q.shape[0], k), -jnp.inf), jnp.full((q.shape[0], k), -1, jnp.int32))
        return jax.lax.scan(step, init, blocks)[0]

    return jax.jit(run)


def topk_nouns(queries, nouns, k: int, *, block: int = NOUN_BLOCK, candidates=None):
    """The ``k`` nouns of largest inner product with each query, blocked over the nouns.

    Args:
      queries: ``[Q, E]``; nouns: ``[M, E]`` (pass unit rows for cosine similarity).
      k: ``1 <= k <= M``.
      block: nouns per step; the result does not depend on it.
      candidates: optional bool ``[M]``: only these nouns can be returned.

    Returns:
      (scores float32 ``[Q, k]`` descending, rows int64 ``[Q, k]``; ties -> lower row).
    """
    q, t = np.asarray(queries, np.float32), np.asarray(nouns, np.float32)
    m = t.shape[0] if candidates is None else int(np.count_nonzero(candidates))
    if not 1 <= k <= m:
        raise ValueError(f"need 1 <= k <= M (candidate nouns), got k={k}, M={m}")
    tp, valid = _padded_blocks(t, block, candidates)
    vals, idx = jax.device_get(_topk_program(k, block)(q, tp, valid))
    return np.asarray(vals, np.float32), np.asarray(idx, np.int64)


@functools.lru_cache(maxsize=16)
def _reverse_program(p: int, block: int, temperature: float):
    """Jitted TAC reverse assignment ``(c [K, E], t [Mp, E], valid) -> (conf [K, p], rows
    [K, p])``: each noun goes to its argmax centre with confidence ``max_k softmax_k(c_k . t /
    temperature)``; each centre keeps its ``p`` most confident nouns (-inf / -1 pad a centre
    that got fewer)."""
    pb = min(p, block)

    def run(c, t, valid):
        blocks = _noun_blocks(t, valid, block)

        def step(carry, blk):
            tb, vb, ib = blk
            logits = jnp.dot(c, tb.T, precision=HI) / temperature  # [K, b]
            conf = jnp.max(jax.nn.softmax(logits, axis=0), axis=0)  # [b]
            mine = jnp.arange(c.shape[0])[:, None] == jnp.argmax(logits, axis=0)[None]
            s = jnp.where(mine & vb[None], conf[None], -jnp.inf)
            v, j = jax.lax.top_k(s, pb)
            return _merge(*carry, v, ib[j], p), None

        init = (jnp.full((c.shape[0], p), -jnp.inf), jnp.full((c.shape[0], p), -1, jnp.int32))
        return jax.lax.scan(step, init, blocks)[0]

    return jax.jit(run)


@functools.lru_cache(maxsize=16)
def _margin_program(r: int, block: int):
    """Jitted discriminative lists ``(c [K, E], t [Mp, E], valid [Mp]) -> (margin [K, r], rows
    [K, r])``, K >= 2: each noun goes to its nearest centre ``a(w) = argmax_k c_k . t_w`` (ties:
    lower k) with margin ``c_a . t_w - max_{k != a} c_k . t_w``; each centre keeps the ``r``
    nouns of largest margin that went to it (-inf / -1 pad a centre that got fewer)."""
    rb = min(r, block)

    def run(c, t, valid):
        blocks = _noun_blocks(t, valid, block)

        def step(carry, blk):
            tb, vb, ib = blk
            s = jnp.dot(c, tb.T, precision=HI)  # [K, b]
            top2 = jax.lax.top_k(s.T, 2)[0]  # [b, 2]: best and second-best centre
            margin = top2[:, 0] - top2[:, 1]
            mine = jnp.arange(c.shape[0])[:, None] == jnp.argmax(s, axis=0)[None]
            v, j = jax.lax.top_k(jnp.where(mine & vb[None], margin[None], -jnp.inf), rb)
            return _merge(*carry, v, ib[j], r), None

        init = (jnp.full((c.shape[0], r), -jnp.inf), jnp.full((c.shape[0], r), -1, jnp.int32))
        return jax.lax.scan(step, init, blocks)[0]

    return jax.jit(run)


def margin_nouns(centres, nouns, r: int, *, block: int = NOUN_BLOCK, candidates=None):
    """Per centre, the ``r`` nouns that single it out most: the nouns whose nearest centre it is,
    by largest margin over the second-nearest centre (``_margin_program``), blocked over nouns.

    Args:
      centres: ``[K, E]``, K >= 2; nouns: ``[M, E]`` (unit rows for cosine similarity).
      r: ``r >= 1`` nouns per centre at most.
      block, candidates: as ``topk_nouns``.

    Returns:
      (margins float32 ``[K, r]`` descending, rows int64 ``[K, r]``; ties -> lower row; a centre
      that is the nearest of fewer than ``r`` nouns is padded with -inf / -1).
    """
    c, t = np.asarray(centres, np.float32), np.asarray(nouns, np.float32)
    if c.shape[0] < 2 or r < 1:
        raise ValueError(f"margin lists need >= 2 centres and r >= 1, got {c.shape[0]}, {r}")
    tp, valid = _padded_blocks(t, block, candidates)
    vals, idx = jax.device_get(_margin_program(r, block)(c, tp, valid))
    return np.asarray(vals, np.float32), np.asarray(idx, np.int64)


def _best_per_noun(vals: np.ndarray, idx: np.ndarray):
    """Per-centre lists ``[K, r]`` -> (rows [S], best score [S], its centre [S]), one entry per
    distinct noun, sorted by score desc then row asc. A noun listed by several centres keeps its
    largest score (ties: lowest centre)."""
    centre = np.broadcast_to(np.arange(vals.shape[0])[:, None], vals.shape).ravel()
    v, i = vals.ravel(), idx.ravel()
    ok = i >= 0
    v, i, centre = v[ok], i[ok], centre[ok]
    first = np.lexsort((centre, -v, i))  # by row, then best score, then lowest centre
    i, v, centre = i[first], v[first], centre[first]
    keep = np.r_[True, i[1:] != i[:-1]]
    i, v, centre = i[keep], v[keep], centre[keep]
    order = np.lexsort((i, -v))
    return i[order], v[order].astype(np.float32), centre[order]


def _centres(x: np.ndarray, centres, k: int, n_init: int, seed: int, spherical: bool):
    """Given centres ``[K, E]`` or k-means of the image features (``vl_jax.cluster.kmeans``)."""
    if centres is None:
        centres = kmeans(x, k, n_init=n_init, seed=seed, spherical=spherical)[0]
    return _unit(centres, "centres")


# ------------------------------------------------------------------------------ SIC
RULES = ("nearest", "margin")  # per-centre noun lists (mcla_space's ``rule``)


def _sic_lists(
    img, emb, *, n_clusters, gamma_r, centres, n_init, seed, block, candidates=None,
    rule="nearest", raw_kmeans=False,
):  # fmt: skip
    """Per-centre lists ``[K, r]`` (scores, rows; -1 pads) and the uniqueness cosine of each
    listed noun ``{row: cos(t_w, mean text)}``. ``rule``: ``"nearest"`` = SIC's top-``gamma_r``
    by cosine; ``"margin"`` = ``margin_nouns`` (the ``gamma_r`` most discriminative nouns).
    ``raw_kmeans``: k-means on the features as given (SIC's code clusters raw CLIP features),
    not on their unit rows; the centres are normalised for the cosines either way."""
    if rule not in RULES:
        raise ValueError(f"unknown noun rule {rule!r}; known: {RULES}")
    x, t = _unit(img, "image_features"), _unit(emb, "noun_embeddings")
    if raw_kmeans:
        x = np.asarray(img, np.float32)
    c = _centres(x, centres, n_clusters, n_init, seed, spherical=False)
    m = t.shape[0] if candidates is None else int(np.count_nonzero(candidates))
    if rule == "margin":
        vals, idx = margin_nouns(c, t, min(gamma_r, m), block=block, candidates=candidates)
    else:
        vals, idx = topk_nouns(c, t, min(gamma_r, m), block=block, candidates=candidates)
    # Mean over the *whole* candidate table (float64, O(M E) time, O(E) memory): a noun close to
    # the average text is one CLIP finds similar to every image -- it separates nothing.
    mean = (t if candidates is None else t[np.asarray(candidates, bool)]).sum(
        axis=0, dtype=np.float64
    )
    mean /= max(np.linalg.norm(mean), 1e-12)
    rows = np.unique(idx[idx >= 0])
    uniq = dict(zip(rows.tolist(), (t[rows] @ mean).astype(np.float32).tolist()))
    return vals, idx, uniq


def sic_space(
    image_features,
    noun_embeddings,
    *,
    n_clusters: int,
    gamma_r: int = 500,
    gamma_u: float = 0.05,
    centres=None,
    n_init: int = 20,
    seed: int = 0,
    block: int = NOUN_BLOCK,
    candidates=None,
    raw_kmeans: bool = False,
) -> SemanticSpace:
    """SIC's semantic space (Cai et al., AAAI 2023; docs/semantic_space.md).

    ``C = kmeans(u, K)``; ``T_r = U_k top-gamma_r_w cos(C_k, t_w)``;
    ``T_u = {w : cos(t_w, mean_w' t_w') < 1 - gamma_u}``; ``T = T_r n T_u``.

    Args:
      image_features: ``[N, E]`` unit CLIP image features.
      noun_embeddings: ``[M, E]`` unit noun text embeddings.
      n_clusters: K (the number of classes in SIC).
      gamma_r, gamma_u: SIC's defaults 500 and 0.05.
      centres: ``[K, E]`` image centres to use instead of k-means (then ``n_clusters`` is unused).
      n_init, seed: k-means (sklearn-style Lloyd, SIC's n_init 20).
      block: nouns per similarity block.
      candidates: optional bool ``[M]`` vocabulary mask (e.g. ``vocabulary_mask``): only these
        nouns can be chosen, and the uniqueness mean is taken over them.
      raw_kmeans: SIC's code: k-means on the raw (un-normalised) ``image_features``; False:
        k-means on their unit rows.

    Returns:
      ``SemanticSpace("sic")``; score = the largest ``cos(C_k, t_w)`` over the centres whose
      top-``gamma_r`` list holds ``w``; columns ``centre`` (that k) and ``uniq_cos``.
    """
    vals, idx, uniq = _sic_lists(
        image_features, noun_embeddings, n_clusters=n_clusters, gamma_r=gamma_r,
        centres=centres, n_init=n_init, seed=seed, block=block, candidates=candidates,
        raw_kmeans=raw_kmeans,
    )  # fmt: skip
    rows, score, centre = _best_per_noun(vals, idx)
    u = np.array([uniq[r] for r in rows.tolist()], np.float32)
    keep = u < 1.0 - gamma_u
    return SemanticSpace(
        "sic", rows[keep], score[keep], {"centre": centre[keep], "uniq_cos": u[keep]}
    )


# ------------------------------------------------------------------------------ TAC
def tac_space(
    image_features,
    noun_embeddings,
    *,
    n_centres: int | None = None,
    per_centre: int = 5,
    temperature: float = 1.0,
    centres=None,
    n_init: int = 10,
    seed: int = 0,
    block: int = NOUN_BLOCK,
    candidates=None,
) -> SemanticSpace:
    """TAC's semantic space by reverse assignment (Li et al., ICML 2024; docs/semantic_space.md).

    ``C = spherical-kmeans(u, L)`` with ``L = max(1, round(N / 300))`` (the counts TAC's code
    hard-codes per dataset: CIFAR-10 167, STL-10 17, ImageNet-10 43, ImageNet-Dogs 65); each noun goes to
    ``a(w) = argmax_l cos(C_l, t_w)`` with confidence ``p(w) = max_l softmax_l(cos(C_l, t_w) /
    temperature)``; centre ``l`` keeps the ``per_centre`` nouns with ``a(w) = l`` of highest
    ``p(w)``; the space is the union (at most ``per_centre * L`` nouns).

    Args:
      image_features: ``[N, E]``; noun_embeddings: ``[M, E]`` (unit rows).
      n_centres: L; default ``max(1, round(N / 300))`` (ImageNet-Dogs: 65).
      per_centre, temperature: TAC's 5 and 1.
      centres: ``[L, E]`` to use instead of k-means.
      n_init, seed: spherical k-means.
      block: nouns per step.
      candidates: optional bool ``[M]`` vocabulary mask (only these nouns can be chosen).

    Returns:
      ``SemanticSpace("tac")``; score = ``p(w)``; column ``centre`` = ``a(w)``.
    """
    x, t = _unit(image_features, "image_features"), _unit(noun_embeddings, "noun_embeddings")
    n_centres = n_centres or max(1, int(np.floor(x.shape[0] / 300 + 0.5)))
    c = _centres(x, centres, n_centres, n_init, seed, spherical=True)
    tp, valid = _padded_blocks(t, block, candidates)
    program = _reverse_program(min(per_centre, t.shape[0]), block, float(temperature))
    vals, idx = jax.device_get(program(c, tp, valid))
    rows, score, centre = _best_per_noun(np.asarray(vals), np.asarray(idx, np.int64))
    return SemanticSpace("tac", rows, score, {"centre": centre})


# ------------------------------------------------------------------------------ MCLA
def _stored_path_hops(a: wordnet.Noun, b: wordnet.Noun) -> int:
    """max(hops from a, hops from b) up to their deepest common node on the stored root paths
    (siblings: 1, cousins: 2, parent-child: 1). Stored paths are one path per synset; under
    multiple inheritance this can overstate the distance, never understate it."""
    common = 0
    for u, v in zip(a.path, b.path):
        if u != v:
            break
        common += 1
    return max(len(a.path), len(b.path)) - common


def _near_pairs(t: np.ndarray, rows: np.ndarray, min_cos: float, block: int):
    """Pairs (i, j), i != j, of positions in ``rows`` with ``cos(t_i, t_j) >= min_cos``, from
    ``[block, S]`` tiles (S = candidates, a few thousand), never ``S x S`` at once."""
    e = t[rows]
    dot = jax.jit(lambda a, b: jnp.dot(a, b.T, precision=HI))
    out = []
    for s in range(0, len(rows), block):
        tile = np.asarray(dot(e[s : s + block], e))
        i, j = np.nonzero(tile >= min_cos)
        out.append(np.stack([i + s, j], 1)[i + s != j])
    return np.concatenate(out) if out else np.zeros((0, 2), np.int64)


def mcla_space(
    image_features,
    noun_embeddings,
    nouns: wordnet.WordNetNouns | None = None,
    *,
    n_clusters: int,
    gamma_r: int = 500,
    gamma_u: float = 0.05,
    keep_per_centre: int = 100,
    min_depth: int = 6,
    max_descendants: int = 1000,
    instances: bool = True,
    dup_cos: float = 0.95,
    dup_hops: int = 2,
    centres=None,
    n_init: int = 20,
    seed: int = 0,
    block: int = NOUN_BLOCK,
    candidates=None,
    rule: str = "nearest",
) -> SemanticSpace:
    """MCLA's "smaller but better" space: SIC's filters, then a WordNet-hierarchy filter.

    Only "SIC's filters + hierarchy-aware filtering" is known of MCA (its abstract); the
    filter below is our design (docs/semantic_space.md). On the candidates (per-centre lists of
    ``gamma_r`` nouns by ``rule``, SIC's uniqueness filter), with ``s(w)`` = the list score:

    0. lists: ``rule="nearest"`` (SIC): centre ``k`` lists the ``gamma_r`` nouns of largest
       ``cos(C_k, t_w)``, ``s(w)`` = that cosine. ``rule="margin"`` (ours): each noun goes to its
       nearest centre ``a(w)``; centre ``k`` lists the ``gamma_r`` nouns with ``a(w) = k`` of
       largest ``s(w) = cos(C_a, t_w) - max_{j != a} cos(C_j, t_w)`` -- nouns that tell the
       clusters apart, not nouns that fit every image (e.g. a colour word, when the K clusters
       differ in shape and each holds every colour);

    1. too general: drop ``w`` with ``depth < min_depth`` or ``n_descendants >
       max_descendants`` (and instances if ``instances=False``);
    2. subsumed: drop ``w`` if a surviving hyponym ``v`` (any path) has ``s(v) >= s(w)`` -- the
       specific noun describes the images at least as well;
    3. near-duplicates: in order of ``s`` (desc, row asc) drop ``w`` if an earlier kept ``v`` has
       ``cos(t_v, t_w) >= dup_cos`` and either the same lemma or a common hypernym within
       ``dup_hops`` of both on their stored paths;
    4. small: each centre keeps the first ``keep_per_centre`` survivors of its top list; union.

    Args:
      image_features, noun_embeddings: as ``sic_space``; embedding row i <-> ``nouns`` row i.
      nouns: the WordNet noun table (default ``wordnet.load()``).
      n_clusters, gamma_r, gamma_u, centres, n_init, seed, block: as ``sic_space``.
      keep_per_centre, min_depth, max_descendants, instances, dup_cos, dup_hops: steps 1-4.
      candidates: optional bool ``[M]`` vocabulary mask, as ``sic_space``.
      rule: ``"nearest"`` | ``"margin"``, step 0 (``"margin"`` needs K >= 2).

    Returns:
      ``SemanticSpace("mcla")``; score = ``s(w)``, ``centre`` = the centre whose list holds
      ``w`` (the best-scoring one); columns ``uniq_cos``, ``depth``.
    """
    wn = wordnet.load() if nouns is None else nouns
    t = _unit(noun_embeddings, "noun_embeddings")
    if len(wn) != t.shape[0]:
        raise ValueError(f"{t.shape[0]} noun embeddings for a table of {len(wn)} nouns")
    vals, idx, uniq = _sic_lists(
        image_features, t, n_clusters=n_clusters, gamma_r=gamma_r, centres=centres,
        n_init=n_init, seed=seed, block=block, candidates=candidates, rule=rule,
    )  # fmt: skip
    rows, score, centre = _best_per_noun(vals, idx)
    ok = np.array([uniq[r] for r in rows.tolist()]) < 1.0 - gamma_u
    # 1. too general (absolute position in the hierarchy)
    ok &= wn.depth[rows] >= min_depth
    ok &= wn.n_descendants[rows] <= max_descendants
    if not instances:
        ok &= ~wn.instance[rows]
    # 2. subsumed by a specific noun that scores at least as well (judged against the survivors
    # of step 1 all at once, so the outcome does not depend on an iteration order)
    pos = {r: p for p, r in enumerate(rows.tolist())}
    subsumed = np.zeros(len(rows), bool)
    for p in np.flatnonzero(ok):
        for a in wn.ancestors(wn.wnids[rows[p]]):
            q = pos.get(wn.index[a])
            if q is not None and ok[q] and score[q] <= score[p]:
                subsumed[q] = True
    ok &= ~subsumed
    # 3. near-duplicates, greedily in score order (rows are already sorted best first)
    cand = np.flatnonzero(ok)
    dropped = np.zeros(len(rows), bool)
    pairs = cand[_near_pairs(t, rows[cand], dup_cos, block)] if len(cand) else ()
    earlier = {}
    for p, q in pairs:  # q better-ranked than p: q may remove p
        if q < p:
            earlier.setdefault(int(p), []).append(int(q))
    for p in cand:
        a = wn.nouns[rows[p]]
        for q in earlier.get(int(p), ()):
            b = wn.nouns[rows[q]]
            if not dropped[q] and (a.lemma == b.lemma or _stored_path_hops(a, b) <= dup_hops):
                dropped[p] = True
                break
    ok &= ~dropped
    # 4. keep the space small: each centre's best keep_per_centre survivors
    survive = np.zeros(t.shape[0], bool)
    survive[rows[ok]] = True
    chosen = np.zeros(t.shape[0], bool)
    for k in range(idx.shape[0]):
        listed = idx[k][idx[k] >= 0]  # margin lists are -1 padded
        listed = listed[survive[listed]]
        chosen[listed[:keep_per_centre]] = True
    sel = chosen[rows]
    r = rows[sel]
    cols = {"centre": centre[sel], "uniq_cos": np.array([uniq[i] for i in r.tolist()], np.float32)}
    cols["depth"] = wn.depth[r].astype(np.int64)
    return SemanticSpace("mcla", r, score[sel], cols)


# ------------------------------------------------------------------------------ TSV
def write_tsv(
    space: SemanticSpace,
    workdir: str,
    nouns: wordnet.WordNetNouns | None = None,
    pool: wordnet.NounPool | None = None,
) -> str:
    """Writes ``<workdir>/semantic_space_<method>.tsv`` atomically (temp file, fsync, rename).

    ``space.indices`` are rows of ``pool`` (``wordnet.noun_pool``; default: one row per synset,
    the table's rows); ``lemma`` is the pool's text, ``wnid`` its synset.

    Columns: ``lemma, wnid, index, score`` then ``space.columns`` in order; one row per noun,
    best first. Floats are written as float32's shortest round-trip text (exact on reading).

    Returns:
      the path written.
    """
    wn = wordnet.load() if nouns is None else nouns
    names = ["lemma", "wnid", "index", "score", *space.columns]
    cols = [space.indices, space.scores, *space.columns.values()]
    # Integers as integers, floats as float32's shortest round-trip text ("0.1", "1.0", "1e-07"),
    # which always has a "." or "e", so read_tsv can tell the two apart.
    fmt = lambda v: (
        str(int(v)) if np.issubdtype(np.asarray(v).dtype, np.integer) else str(np.float32(v))
    )
    lines = ["\t".join(names)]
    texts, synset = (wn.lemmas, None) if pool is None else (pool.texts, pool.rows)
    for i, row in enumerate(space.indices.tolist()):
        lemma = texts[row]
        if "\t" in lemma or "\n" in lemma:
            raise ValueError(f"lemma {lemma!r} cannot be written to a TSV")
        wnid = wn.wnids[row if synset is None else int(synset[row])]
        lines.append("\t".join([lemma, wnid, *(fmt(c[i]) for c in cols)]))
    path = os.path.join(workdir, f"semantic_space_{space.method}.tsv")
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


def read_tsv(path: str) -> tuple[SemanticSpace, list[str], list[str]]:
    """Reads a file of ``write_tsv`` -> (space, lemmas [S], wnids [S]). The method comes from
    the file name; integer-valued columns come back as int64, the rest as float32."""
    with open(path, encoding="utf-8") as f:
        header, *body = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    data = {h: [r[i] for r in body] for i, h in enumerate(header)}

    def parse(vals):
        try:
            return np.array([int(v) for v in vals], np.int64)
        except ValueError:
            return np.array([float(v) for v in vals], np.float32)

    base = os.path.basename(path)
    method = base.removeprefix("semantic_space_").removesuffix(".tsv")
    extra = {h: parse(data[h]) for h in header[4:]}
    space = SemanticSpace(
        method,
        parse(data["index"]).astype(np.int64),
        parse(data["score"]).astype(np.float32),
        extra,
    )
    return space, data["lemma"], data["wnid"]
