"""MCLA losses: multi-level image-text alignment on frozen CLIP features, as pure jnp functions.

Every function is a pure ``jnp`` map from arrays to a scalar (or to a helper array), so it can be
jitted, differentiated and sharded freely. Inside a ``jax.jit`` whose inputs are split over the
mesh's ``data`` axis, the batch means below (``mean_i``) are *global* means: XLA inserts the
all-reduce, so the entropy balance sees the whole batch, not one device's share.

Notation (docs/mcla.md, which also gives each loss's source): ``B`` batch rows, ``E`` feature
dim, ``K`` clusters, ``M`` nouns. ``u_i`` image feature, ``t~_i`` its text counterpart, ``p_i`` a
cluster-probability row (softmax of a head's logits), ``<a, b>`` the dot product, ``n(x)`` L2
normalisation. Levels and their origin:

==========================  ===========================================================  ==========
instance (features)         ``instance_alignment``: symmetric InfoNCE ``n(g(u_i))`` vs ``t~_i``   MCA design
instance (assignments)      ``cross_modal_consistency``: ``-log <p^I_i, p^T_i>``           TAC L_con
prototype                   ``prototype_alignment`` of ``soft_prototypes``                  MCA design
semantic                    ``semantic_alignment``: CE to argmax ``<t~_i, h_k>``            SIC (text side)
cluster (assignment cols)   ``cluster_contrastive``: NT-Xent over the 2K columns            TAC L_dis
neighbours                  ``neighbour_consistency``: ``-log <p_i, p_j>``, j in kNN(i)     SCAN/SIC
entropy balance             ``entropy_balance``: ``-H(mean_i p_i)``                         SIC/TAC
==========================  ===========================================================  ==========
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

HI = jax.lax.Precision.HIGHEST  # float32 GEMMs: the losses are checked against numpy at 1e-5
EPS = 1e-8  # floor inside log(p . q): two one-hot rows that disagree give log(0) otherwise


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-12) -> jax.Array:
    """``x / max(||x||, eps)`` along ``axis`` (an all-zero row stays zero instead of NaN)."""
    norm = jnp.sqrt(jnp.sum(x * x, axis=axis, keepdims=True))
    return x / jnp.maximum(norm, eps)


def text_counterpart(u: jax.Array, nouns: jax.Array, tau: float = 0.005) -> jax.Array:
    """TAC's text counterpart of each image: a softmax-weighted mean of the semantic space's nouns.

    .. math:: \\tilde t_i = n\\Big(\\sum_w \\mathrm{softmax}_w(\\langle n(u_i), t_w\\rangle / \\tau)\\, t_w\\Big)

    Args:
      u: ``[N, E]`` image features (normalised here).
      nouns: ``[M, E]`` unit-norm noun text embeddings (``mcla_jax.semantic_space``).
      tau: softmax temperature; TAC uses 0.005, so only the few nearest nouns carry weight.

    Returns:
      ``[N, E]`` unit-norm text counterparts. Memory is ``[N, M]``: call it on row blocks for
      large ``N`` (``mcla_jax.train.build_text_counterparts`` does).
    """
    s = jnp.matmul(l2_normalize(u), nouns.T, precision=HI) / tau  # [N, M]
    return l2_normalize(jnp.matmul(jax.nn.softmax(s, axis=-1), nouns, precision=HI))


def _xent_diag(logits: jax.Array) -> jax.Array:
    """``-mean_i log softmax_j(logits)_{ii}`` for a square ``[n, n]`` score matrix."""
    return -jnp.mean(jnp.diagonal(jax.nn.log_softmax(logits, axis=-1)))


def instance_alignment(x: jax.Array, y: jax.Array, tau: float = 0.1) -> jax.Array:
    """Symmetric InfoNCE between paired rows (instance-level image-text alignment, CLIP's loss).

    .. math::
        S_{ij} = \\langle n(x_i), n(y_j)\\rangle / \\tau,\\quad
        L = \\tfrac12\\Big[-\\tfrac1B\\sum_i \\log\\frac{e^{S_{ii}}}{\\sum_j e^{S_{ij}}}
            -\\tfrac1B\\sum_i \\log\\frac{e^{S_{ii}}}{\\sum_j e^{S_{ji}}}\\Big]

    Args:
      x: ``[B, D]`` (adapted) image features. y: ``[B, D]`` their text counterparts.
      tau: temperature.

    Returns:
      scalar. Row ``i`` of ``x`` is pulled to row ``i`` of ``y`` and pushed from the others.
    """
    s = jnp.matmul(l2_normalize(x), l2_normalize(y).T, precision=HI) / tau
    return 0.5 * (_xent_diag(s) + _xent_diag(s.T))


def neighbour_consistency(p: jax.Array, p_nb: jax.Array, eps: float = EPS) -> jax.Array:
    """SCAN's consistency: a sample and its neighbour should get the same (confident) cluster.

    .. math:: L = -\\tfrac1B \\sum_i \\log \\max(\\langle p_i, p_{j(i)}\\rangle, \\epsilon)

    Args:
      p: ``[B, K]`` probabilities of the anchors. p_nb: ``[B, K]`` of one kNN neighbour each.

    Returns:
      scalar >= 0 (0 iff every pair is the same one-hot row).
    """
    return -jnp.mean(jnp.log(jnp.maximum(jnp.sum(p * p_nb, axis=-1), eps)))


def cross_modal_consistency(p_img: jax.Array, p_txt: jax.Array, eps: float = EPS) -> jax.Array:
    """Instance-level assignment agreement of the two modalities (TAC's ``L_con``).

    .. math:: L = -\\tfrac1B \\sum_i \\log \\max(\\langle p^I_i, p^T_i\\rangle, \\epsilon)

    Same form as ``neighbour_consistency``, with the pair being an image and its text counterpart.
    Args/returns: ``[B, K]`` x 2 -> scalar.
    """
    return neighbour_consistency(p_img, p_txt, eps)


def entropy_balance(p: jax.Array, eps: float = EPS) -> jax.Array:
    """Negative entropy of the mean assignment: minimising it spreads samples over all clusters.

    .. math:: \\bar p = \\tfrac1B\\sum_i p_i,\\quad L = -H(\\bar p) = \\sum_k \\bar p_k \\log \\bar p_k

    Args:
      p: ``[B, K]`` probabilities. Under a jit with ``p`` split over ``data`` the mean is global.

    Returns:
      scalar in ``[-log K, 0]``.
    """
    pbar = jnp.mean(p, axis=0)
    return jnp.sum(pbar * jnp.log(jnp.maximum(pbar, eps)))


def soft_prototypes(p: jax.Array, x: jax.Array) -> jax.Array:
    """Assignment-weighted cluster prototypes.

    .. math:: c_k = n\\Big(\\sum_i p_{ik}\\, x_i\\Big)

    Args:
      p: ``[B, K]`` probabilities (or weights; zero rows drop samples, e.g. padding).
      x: ``[B, D]`` features.

    Returns:
      ``[K, D]`` unit-norm prototypes (an empty cluster gives a zero row).
    """
    return l2_normalize(jnp.matmul(p.T, x, precision=HI))


def prototype_alignment(c_a: jax.Array, c_b: jax.Array, tau: float = 0.5) -> jax.Array:
    """Prototype-level alignment: cluster ``k``'s prototype in one modality should match cluster
    ``k``'s prototype in the other, and not cluster ``l != k``'s.

    .. math:: L = \\mathrm{InfoNCE}_\\tau(c^a, c^b) \\text{ over the } K \\text{ prototype pairs}

    (``instance_alignment`` applied to the ``[K, D]`` prototype matrices.)

    Args:
      c_a, c_b: ``[K, D]`` prototypes (``soft_prototypes``). tau: temperature (0.5).

    Returns:
      scalar.
    """
    return instance_alignment(c_a, c_b, tau)


def semantic_alignment(logits: jax.Array, t: jax.Array, centres: jax.Array) -> jax.Array:
    """Semantic-level alignment: the image head should predict the semantic centre nearest to the
    image's text counterpart (SIC's pseudo-label loss, on the text side).

    .. math::
        y_i = \\arg\\max_k \\langle \\tilde t_i, h_k\\rangle,\\quad
        L = -\\tfrac1B \\sum_i \\log \\mathrm{softmax}(z_i)_{y_i}

    Args:
      logits: ``[B, K]`` image-head logits ``z_i``.
      t: ``[B, E]`` text counterparts. centres: ``[K, E]`` semantic centres ``h_k`` (fixed per
        epoch; ``mcla_jax.train`` builds them). Ties in the argmax go to the lower ``k``.

    Returns:
      scalar; no gradient reaches ``t`` or ``centres`` (the labels are an argmax).
    """
    y = jnp.argmax(jnp.matmul(t, centres.T, precision=HI), axis=-1)
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=-1))


def cluster_contrastive(p_a: jax.Array, p_b: jax.Array, tau: float = 0.5) -> jax.Array:
    """Cluster-level contrast between the assignment *columns* of two views (TAC's ``L_dis``,
    Contrastive Clustering's cluster head).

    Columns ``a_k = P_a[:, k]``, ``b_k = P_b[:, k]`` form ``2K`` vectors ``v``; ``(a_k, b_k)`` is
    a positive pair, every other column a negative:

    .. math::
        s(v, w) = \\langle n(v), n(w)\\rangle / \\tau,\\quad
        L = \\tfrac1{2K}\\sum_{m=1}^{2K} -\\log
            \\frac{e^{s(v_m, v_{m^+})}}{\\sum_{l \\ne m} e^{s(v_m, v_l)}}

    Args:
      p_a, p_b: ``[B, K]`` probabilities. tau: temperature (TAC: 0.5 for K < 100).

    Returns:
      scalar.
    """
    k = p_a.shape[1]
    v = l2_normalize(jnp.concatenate([p_a.T, p_b.T], axis=0))  # [2K, B]
    s = jnp.matmul(v, v.T, precision=HI) / tau
    s = jnp.where(jnp.eye(2 * k, dtype=bool), -jnp.inf, s)  # drop self-similarity
    pos = jnp.concatenate([jnp.arange(k, 2 * k), jnp.arange(k)])  # partner of column m
    logp = jax.nn.log_softmax(s, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp, pos[:, None], axis=-1))
