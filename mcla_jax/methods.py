"""The trained clustering methods on frozen features: MCLA, SIC and TAC as one `Method` each.

A `Method` tells the generic trainer (`mcla_jax.train.Trainer`) four things:

* how features are prepared (`prepare`: centre + normalise, normalise, or raw),
* its learnable model, an NNX module ``(u [B, E], t [B, E]) -> (z [B, E], logits_img [B, K],
  logits_txt [B, K] | None)``,
* its per-epoch targets, computed by one jitted pass over all rows in blocks (`targets`,
  built on `mcla_jax.rowpass.epoch_pass`), and
* its loss terms on a batch (`loss_terms`), a weighted sum with the unweighted terms returned.

Adding an alignment loss or a new method is a few lines here; the trainer, sharding,
checkpointing, protocol and outputs are shared (docs/mcla.md). The baselines follow their
official code (summarised in docs/mcla.md, "Reference methods"); differences are listed in
docs/mcla.md ("SIC and TAC in this framework").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mcla_jax import losses as L
from mcla_jax.rowpass import epoch_pass, mean_rows

HI = jax.lax.Precision.HIGHEST


def _probs(logits):
    return jax.nn.softmax(logits, axis=-1)


def _head(dim: int, k: int, hidden: int, rngs: nnx.Rngs) -> nnx.Module:
    if hidden <= 0:
        return nnx.Linear(dim, k, rngs=rngs)
    return nnx.Sequential(
        nnx.Linear(dim, hidden, rngs=rngs), nnx.relu, nnx.Linear(hidden, k, rngs=rngs)
    )


@dataclasses.dataclass(frozen=True)
class Method:
    """One clustering method for `mcla_jax.train.Trainer`.

    Attributes:
      name: config name (``config.method``).
      terms: the loss-term names it reads from ``config.weights`` (0 disables a term).
      prepare: ``"centre"`` (subtract the train mean, then L2-normalise), ``"normalize"`` or
        ``"raw"``; applied to image features and text counterparts alike.
      build: ``(dim, k, config, rngs) -> nnx.Module`` (see the module docstring).
      targets: ``(model, u [R, E], t [R, E], blocks, aux, m, cfg) -> dict`` inside a jit:
        ``u, t`` all rows (``R = blocks.rows``; rows from ``N`` on are padding),
        ``blocks`` their ``rowpass.Blocks``; must hold ``assign`` ``[N]``; ``aux``: the
        method's extra replicated arrays (e.g. noun embeddings); ``m``: the confident rows per
        cluster, ``floor(frac floor(N / K))``; ``cfg``: the run config (static values).
      loss_terms: ``(model, batch, targets, weights, tau, on) -> (total, {term: value})``;
        ``batch`` holds ``u, t`` of the anchors and ``u_nb, t_nb`` of one image-space kNN
        neighbour each (plus ``u_nbt, t_nbt`` of a text-space neighbour when ``text_knn``);
        ``on`` (0/1) gates the terms that read targets during warm-up.
      text_knn: batches also need neighbours in the text-counterpart space.
    """

    name: str
    terms: tuple[str, ...]
    prepare: str
    build: Callable
    targets: Callable
    loss_terms: Callable
    text_knn: bool = False


def _weighted(out: dict, weights: dict, on, gated=()):
    w = {k: float(v) for k, v in weights.items()}
    return sum(w[n] * v * (on if n in gated else 1.0) for n, v in out.items())


# ------------------------------------------------------------------------------------- MCLA


class MCLAModel(nnx.Module):
    """Image and text cluster heads (+ optional residual image adapter) over frozen features.

    ``__call__(u [B, E], t [B, E]) -> (z [B, E], logits_img [B, K], logits_txt [B, K])`` where
    ``z`` is the (adapted) unit-norm image feature. Inputs are centred and unit-norm (``prepare``).
    """

    def __init__(self, dim: int, k: int, *, hidden: int = 0, adapter: bool = False,
                 adapter_ratio: float = 0.2, rngs: nnx.Rngs):  # fmt: skip
        self.image_head = _head(dim, k, hidden, rngs)
        self.text_head = _head(dim, k, hidden, rngs)
        # Zero init: the adapter starts as the identity (z = u), so training starts from CLIP.
        zeros = nnx.initializers.zeros
        self.adapter = (
            nnx.Linear(dim, dim, kernel_init=zeros, bias_init=zeros, rngs=rngs) if adapter else None
        )
        self.ratio = adapter_ratio

    def embed_image(self, u: jax.Array) -> jax.Array:
        if self.adapter is None:
            return u
        return L.l2_normalize(self.ratio * self.adapter(u) + (1.0 - self.ratio) * u)

    def __call__(self, u: jax.Array, t: jax.Array):
        z = self.embed_image(u)
        return z, self.image_head(z), self.text_head(t)


def _mcla_build(dim, k, cfg, rngs):
    return MCLAModel(dim, k, hidden=int(cfg.model.hidden), adapter=bool(cfg.model.adapter),
                     adapter_ratio=float(cfg.model.adapter_ratio), rngs=rngs)  # fmt: skip


def _mcla_targets(model, u, t, blocks, aux, m, cfg):
    """Image/text prototypes ``[K, E]`` over all rows, and semantic centres ``[K, E]``: the
    normalised mean text counterpart of the ``m`` rows with the largest image logit k (SIC's
    rule, on the text side)."""
    out = epoch_pass(model, u, t, blocks, int(cfg.num_clusters), m=m, prototypes=True)
    out["centres"] = mean_rows(t, out.pop("top"))
    return out


def mcla_loss_terms(model, batch: dict, targets: dict, weights: dict, tau: dict, on):
    """MCLA's weighted terms on one global batch (docs/mcla.md); zero-weight terms are skipped."""
    z, li, lt = model(batch["u"], batch["t"])
    pi, pt = _probs(li), _probs(lt)
    w = {k: float(v) for k, v in weights.items()}
    out = {}
    # The instance InfoNCE trains something only when a side of it is learnable: the adapter
    # (image) or the prompt context (text, through batch["t"]).
    if w["instance"] and (model.adapter is not None or _has_context(model)):
        out["instance"] = L.instance_alignment(z, batch["t"], tau["instance"])
    if w["consistency"]:
        out["consistency"] = L.cross_modal_consistency(pi, pt)
    if w["prototype"]:
        out["prototype"] = 0.5 * (
            L.prototype_alignment(L.soft_prototypes(pi, z), targets["proto_txt"], tau["prototype"])
            + L.prototype_alignment(
                L.soft_prototypes(pt, batch["t"]), targets["proto_img"], tau["prototype"]
            )
        )
    if w["semantic"]:
        out["semantic"] = L.semantic_alignment(li, batch["t"], targets["centres"])
    if w["cluster"]:
        out["cluster"] = L.cluster_contrastive(pi, pt, tau["cluster"])
    if w["neighbour"]:
        _, li_nb, lt_nb = model(batch["u_nb"], batch["t_nb"])
        out["neighbour"] = L.neighbour_consistency(pi, _probs(li_nb)) + L.neighbour_consistency(
            pt, _probs(lt_nb)
        )
    if w["entropy"]:
        out["entropy"] = L.entropy_balance(pi) + L.entropy_balance(pt)
    total = _weighted({k: v for k, v in out.items() if k != "semantic"}, weights, on,
                      gated=("prototype",))  # fmt: skip
    if "semantic" in out:  # gated by the warm-up and by its own (possibly later) start
        gate = on * targets.get("semantic_on", 1.0)
        total = total + gate * float(weights["semantic"]) * out["semantic"]
    return total, out


def _has_context(model) -> bool:
    return getattr(model, "context", None) is not None


MCLA = Method(
    name="mcla",
    terms=("instance", "consistency", "prototype", "semantic", "cluster", "neighbour", "entropy"),
    prepare="centre",
    build=_mcla_build,
    targets=_mcla_targets,
    loss_terms=mcla_loss_terms,
)


# -------------------------------------------------------------------------------------- SIC


class SICModel(nnx.Module):
    """SIC's one linear head on raw CLIP image features: ``u [B, E] -> (u, logits [B, K], None)``."""

    def __init__(self, dim: int, k: int, *, rngs: nnx.Rngs):
        self.head = nnx.Linear(dim, k, rngs=rngs)

    def __call__(self, u: jax.Array, t: jax.Array):
        return u, self.head(u), None


def _sic_targets(model, u, t, blocks, aux, m, cfg):
    """SIC's semantic centres: image centre ``v_k`` = mean raw feature of the ``m`` rows with
    the largest logit k; ``h_k`` = normalised mean of the ``aux["nouns"]`` embeddings of the
    ``cfg.semantic_nouns`` (30) space nouns nearest (cosine) to ``v_k``. ``[K, E]``.

    The mean is over the rows as given: raw text embeddings (``space.combine = "none"``, SIC's
    code: a noun with a longer embedding weighs more) or unit rows (our variant)."""
    out = epoch_pass(model, u, t, blocks, int(cfg.num_clusters), m=m)
    v = mean_rows(u, out.pop("top"))  # [K, E]
    nouns = aux["nouns"]  # [M, E] the semantic space's noun embeddings (raw or unit rows)
    near_k = min(int(cfg.semantic_nouns), nouns.shape[0])
    near = jax.lax.top_k(jnp.matmul(v, L.l2_normalize(nouns).T, precision=HI), near_k)[1]
    return dict(out, centres=L.l2_normalize(jnp.mean(nouns[near], axis=1)))


def sic_loss_terms(model, batch: dict, targets: dict, weights: dict, tau: dict, on):
    """``-mean log(p_i . p_j) - 5 H(mean p) + 0.1 CE(z_i, argmax_k <u_i, h_k>)`` (SIC's code)."""
    _, li, _ = model(batch["u"], batch["t"])
    _, li_nb, _ = model(batch["u_nb"], batch["t_nb"])
    p = _probs(li)
    out = dict(
        neighbour=L.neighbour_consistency(p, _probs(li_nb)),
        entropy=L.entropy_balance(p),
        semantic=L.semantic_alignment(li, batch["u"], targets["centres"]),
    )
    out = {k: v for k, v in out.items() if float(weights[k])}
    return _weighted(out, weights, on, gated=("semantic",)), out


SIC = Method(
    name="sic",
    terms=("neighbour", "entropy", "semantic"),
    prepare="raw",
    build=lambda dim, k, cfg, rngs: SICModel(dim, k, rngs=rngs),
    targets=_sic_targets,
    loss_terms=sic_loss_terms,
)


# -------------------------------------------------------------------------------------- TAC


class BatchNorm1d(nnx.Module):
    """``torch.nn.BatchNorm1d`` over ``[B, C]``, with its running statistics as ``nnx.BatchStat``.

    Train mode normalises with the batch mean and biased variance and updates the running mean
    and the running *unbiased* variance with ``momentum`` (torch's convention: ``r <- (1 - m) r
    + m b``); eval mode (``model.eval()``: ``use_running_average``) uses the running values.
    ``nnx.BatchNorm`` keeps the biased variance, so its eval outputs differ from torch's by a
    factor ``B / (B - 1)`` inside the square root: hence this module. Under ``jax.jit`` with the
    batch split over the mesh's ``data`` axis, ``jnp.mean`` over the batch is a global mean (XLA
    inserts the all-reduce), so the statistics are those of the global batch, as on 1 device.
    """

    def __init__(self, dim: int, *, momentum: float = 0.1, eps: float = 1e-5):
        self.scale = nnx.Param(jnp.ones(dim, jnp.float32))
        self.bias = nnx.Param(jnp.zeros(dim, jnp.float32))
        self.mean = nnx.BatchStat(jnp.zeros(dim, jnp.float32))
        self.var = nnx.BatchStat(jnp.ones(dim, jnp.float32))
        self.momentum, self.eps = momentum, eps
        self.use_running_average = False

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.use_running_average:
            mean, var = self.mean[...], self.var[...]
        else:
            n = x.shape[0]
            mean = jnp.mean(x, axis=0)
            var = jnp.mean(jnp.square(x - mean), axis=0)
            m = self.momentum
            self.mean[...] = (1.0 - m) * self.mean[...] + m * mean
            self.var[...] = (1.0 - m) * self.var[...] + m * var * (n / max(n - 1, 1))
        return (x - mean) * jax.lax.rsqrt(var + self.eps) * self.scale[...] + self.bias[...]


HEAD_INITS = ("trunc_normal", "flax")


def _tac_linear(din: int, dout: int, init: str, rngs: nnx.Rngs) -> nnx.Linear:
    """``init="trunc_normal"`` (TAC's code): weights ``trunc_normal_(std=0.02)`` with torch's
    *absolute* bounds [-2, 2] (= +-100 std, so effectively N(0, 0.02^2)), biases torch's
    default ``U(-1/sqrt(din), 1/sqrt(din))``. ``"flax"``: Flax's defaults (LeCun normal, zero
    bias)."""
    if init == "flax":
        return nnx.Linear(din, dout, rngs=rngs)
    if init != "trunc_normal":
        raise ValueError(f"unknown head init {init!r}; known: {HEAD_INITS}")
    bound = 1.0 / np.sqrt(din)
    return nnx.Linear(
        din, dout, rngs=rngs,
        kernel_init=nnx.initializers.truncated_normal(0.02, lower=-2.0 / 0.02, upper=2.0 / 0.02),
        bias_init=lambda key, shape, dtype=jnp.float32: jax.random.uniform(
            key, shape, dtype, -bound, bound),
    )  # fmt: skip


def _tac_head(dim: int, k: int, hidden: int, batchnorm: bool, init: str, rngs) -> nnx.Module:
    """TAC's ``Linear(E, H) - BatchNorm1d(H) - ReLU - Linear(H, K)`` (``batchnorm=False``: no
    BatchNorm; ``hidden <= 0``: one ``Linear(E, K)``)."""
    if hidden <= 0:
        return _tac_linear(dim, k, init, rngs)
    norm = [BatchNorm1d(hidden)] if batchnorm else []
    return nnx.Sequential(
        _tac_linear(dim, hidden, init, rngs), *norm, nnx.relu, _tac_linear(hidden, k, init, rngs)
    )


class TACModel(nnx.Module):
    """TAC's two cluster heads on unit image features and text counterparts: ``(u, t) -> (u,
    logits_img, logits_txt)``. As TAC's code: ``Linear(E, H) - BatchNorm1d(H) - ReLU - Linear(H,
    K)`` each, truncated-normal(0.02) weights (``batchnorm``, ``init``: see ``_tac_head``,
    ``_tac_linear``; ``batchnorm=False, init="flax"`` is our earlier variant)."""

    def __init__(self, dim: int, k: int, *, hidden: int = 512, batchnorm: bool = True,
                 init: str = "trunc_normal", rngs: nnx.Rngs):  # fmt: skip
        self.image_head = _tac_head(dim, k, hidden, batchnorm, init, rngs)
        self.text_head = _tac_head(dim, k, hidden, batchnorm, init, rngs)

    def __call__(self, u: jax.Array, t: jax.Array):
        return u, self.image_head(u), self.text_head(t)


def _tac_build(dim, k, cfg, rngs):
    m = cfg.model
    return TACModel(dim, k, hidden=int(m.hidden), batchnorm=bool(m.get("batchnorm", True)),
                    init=str(m.get("head_init", "trunc_normal")), rngs=rngs)  # fmt: skip


def _assign_only(model, u, t, blocks, aux, m, cfg):
    return epoch_pass(model, u, t, blocks, int(cfg.num_clusters))


def tac_loss_terms(model, batch: dict, targets: dict, weights: dict, tau: dict, on):
    """``L_dis + L_con - 5 [H(mean p^T) + H(mean p^I)]`` (TAC's code): ``L_dis`` contrasts the
    assignment columns of each modality with the *other* modality's neighbours (image anchors
    with the text head on text-space neighbours, text anchors with the image head on
    image-space neighbours)."""
    _, li, lt = model(batch["u"], batch["t"])
    # One call on the neighbours, as TAC's ``model(neigh_text, neigh_image)``: with BatchNorm,
    # each head's batch statistics (and running-statistics update) come from exactly the rows
    # it sees -- image-space neighbours for the image head, text-space ones for the text head.
    _, li_nb, lt_nbt = model(batch["u_nb"], batch["t_nbt"])
    pi, pt = _probs(li), _probs(lt)
    out = dict(
        cluster=L.cluster_contrastive(pi, _probs(lt_nbt), tau["cluster"])
        + L.cluster_contrastive(pt, _probs(li_nb), tau["cluster"]),
        consistency=L.cross_modal_consistency(pi, pt),
        entropy=L.entropy_balance(pi) + L.entropy_balance(pt),
    )
    out = {k: v for k, v in out.items() if float(weights[k])}
    return _weighted(out, weights, on), out


TAC = Method(
    name="tac",
    terms=("cluster", "consistency", "entropy"),
    prepare="normalize",
    build=_tac_build,
    targets=_assign_only,
    loss_terms=tac_loss_terms,
    text_knn=True,
)

METHODS = {m.name: m for m in (MCLA, SIC, TAC)}


def init_from_centres(model, image_centres, text_centres=None, scale: float = 0.05) -> None:
    """SIC's centre initialisation of linear heads (docs/mcla.md): ``W = 2 a C^T``,
    ``b_k = -a ||C_k||^2``, so ``logits_k = a (||x||^2 - ||x - C_k||^2)`` and the head's argmax
    starts as the nearest centre. ``image_centres`` ``[K, E]`` go to ``image_head`` (or SIC's
    ``head``), ``text_centres`` to ``text_head``; ``scale`` is ``a`` (SIC: 0.05 on raw CLIP
    features, whose norms are ~10; unit-norm features need a larger one for confident starts).

    Raises:
      ValueError: a head to initialise is not a single ``nnx.Linear`` (MLP heads).
    """
    pairs = [(getattr(model, "image_head", None) or getattr(model, "head", None), image_centres)]
    if text_centres is not None:
        pairs.append((getattr(model, "text_head", None), text_centres))
    for head, c in pairs:
        if not isinstance(head, nnx.Linear):
            raise ValueError("centre initialisation needs linear heads (model.hidden = 0)")
        c = jnp.asarray(c, jnp.float32)
        if c.shape != head.kernel.value.shape[::-1]:
            raise ValueError(f"centres {c.shape} do not fit a head of {head.kernel.value.shape}")
        head.kernel.value = 2.0 * scale * c.T
        head.bias.value = -scale * jnp.sum(c * c, axis=1)


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown trained method {name!r}; known: {sorted(METHODS)}")
    return METHODS[name]


def prepare(x, how: str = "centre", mean=None) -> tuple[np.ndarray, np.ndarray | None]:
    """Features for a method: ``[N, E] -> ([N, E] float32, mean [E] or None)``.

    ``"centre"``: subtract ``mean`` (default: this array's mean -- pass the *train* mean for
    the evaluation split), then L2-normalise rows. Why: CLIP features of one dataset share a
    large common offset (and the two modalities different ones, the "modality gap"); removing
    it makes cluster differences, and cross-modal prototype comparisons, a matter of direction.
    ``"normalize"``: L2-normalise rows (TAC). ``"raw"``: unchanged (SIC).
    """
    # float32 throughout (the mean accumulated in float64): at 1.28M x 512 a float64 copy alone
    # is 5 GB.
    x = np.array(x, np.float32)
    if how == "raw":
        return x, None
    if how == "centre":
        mean = x.mean(0, dtype=np.float64) if mean is None else np.asarray(mean, np.float64)
        x -= mean.astype(np.float32)
    elif how != "normalize":
        raise ValueError(f"unknown preparation {how!r}")
    x /= np.maximum(np.sqrt(np.einsum("ne,ne->n", x, x)), 1e-12)[:, None]
    return x, (None if how == "normalize" else mean.astype(np.float32))
