"""MCLA training on frozen features: cluster heads trained with the multi-level losses.

    from mcla_jax import train as mcla
    cfg = configs.mcla.common.train_config()     # or configs/mcla/synthetic.py
    cfg.num_clusters = 15
    idx, _ = knn(features, 20)                   # vl_jax.cluster.knn, [N, k]
    assign, history = mcla.train(features, idx, texts, config=cfg)   # texts: [N, E] counterparts
    assign, history = mcla.train(features, idx, nouns=space_emb, config=cfg)  # built here (TAC)

Learnable parts (``MCLAModel``, NNX): an image head and a text head (``E -> K``, linear or a
one-hidden-layer MLP) and an optional residual image adapter ``n(r A(u) + (1 - r) u)``. CLIP stays
frozen; its features are inputs. Each epoch: (1) a jitted, sharded pass over all rows gives the
image/text prototypes and the semantic centres (``make_epoch_targets``, in row blocks:
``mcla_jax.rowpass``); (2) a jitted ``lax.scan`` of
Adam steps over the epoch's shuffled batches (``make_epoch``); batches are split over the mesh's
``data`` axis, parameters replicated, so every batch mean (entropy balance, prototypes, cluster
contrast) is global -- XLA inserts the all-reduces. Shuffling and neighbour sampling use a numpy
generator seeded by ``(seed, epoch)``, so a run is a function of the seed: 1 and 8 devices give
the same assignments (same maths, float sums reduced in a different order). Losses:
``mcla_jax.losses``; equations and defaults: docs/mcla.md.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from mcla_jax import losses as L
from mcla_jax import methods
from mcla_jax.methods import MCLAModel, Method, mcla_loss_terms
from mcla_jax.prompts import PromptText
from mcla_jax.rowpass import Blocks
from vl_jax.errors import ConfigError
from vl_jax.metrics import clustering_metrics
from vl_jax.parallel import DATA, create_mesh, fetch, replicated

# MCLA's loss weights and what each multiplies (docs/mcla.md). 0 disables a term.
LOSS_TERMS = methods.MCLA.terms
__all__ = ["MCLAModel", "Trainer", "prepare", "train"]


def prepare(x) -> np.ndarray:
    """Centre by this array's mean, then L2-normalise rows: ``[N, E] -> [N, E]`` float32
    (``methods.prepare(x, "centre")``; see there for the why)."""
    return methods.prepare(x, "centre")[0]


def build_text_counterparts(features, nouns, tau: float = 0.005, block: int = 4096) -> np.ndarray:
    """TAC text counterparts ``[N, E]`` of raw image features from noun embeddings ``[M, E]``,
    in row blocks of ``block`` (memory ``[block, M]``); see ``losses.text_counterpart``."""
    fn = jax.jit(functools.partial(L.text_counterpart, tau=tau))
    nouns = jnp.asarray(nouns, jnp.float32)
    x = np.asarray(features, np.float32)
    return np.concatenate(
        [np.asarray(fn(x[i : i + block], nouns)) for i in range(0, len(x), block)]
    )


# --------------------------------------------------------------------------- jitted programs


def make_optimizer(cfg) -> optax.GradientTransformation:
    """Adam with ``cfg.lr``, ``cfg.b1``, ``cfg.b2`` and weight decay ``cfg.weight_decay`` in one
    of two forms (``cfg.weight_decay_mode``):

    * ``"l2"``: torch ``Adam(weight_decay=wd)``, SIC's: the decay is an L2 term added to the
      gradient *before* the moments, ``g <- g + wd p`` (``add_decayed_weights`` before
      ``scale_by_adam``), so it is rescaled by Adam like any gradient;
    * ``"decoupled"`` (default): AdamW, ``p <- p - lr (adam(g) + wd p)``.

    Both equal torch's Adam / AdamW step for step (``eps`` 1e-8 outside the square root).
    ``cfg.embed_lr`` > 0 gives MCLA's trainable embeddings (the ``adapter`` and the prompt
    ``context``) their own learning rate (two torch parameter groups); 0: ``cfg.lr`` for all.
    """
    lr, embed_lr = float(cfg.lr), float(cfg.get("embed_lr", 0.0) or 0.0)
    if embed_lr <= 0 or embed_lr == lr:
        return _adam(cfg, lr)

    def groups(params):  # the top-level attribute of each leaf's path: adapter, context, heads
        def label(path, _):
            return "embed" if getattr(path[0], "key", None) in EMBEDDINGS else "rest"

        return jax.tree_util.tree_map_with_path(label, params)

    return optax.multi_transform({"rest": _adam(cfg, lr), "embed": _adam(cfg, embed_lr)}, groups)


EMBEDDINGS = ("adapter", "context")  # MCLAModel's trainable image / text embedding parts


def _adam(cfg, lr: float) -> optax.GradientTransformation:
    wd = float(cfg.weight_decay)
    mode = str(cfg.get("weight_decay_mode", "decoupled"))
    if mode == "l2":
        return optax.chain(
            optax.add_decayed_weights(wd),
            optax.scale_by_adam(b1=float(cfg.b1), b2=float(cfg.b2), eps=1e-8),
            optax.scale_by_learning_rate(lr),
        )
    if mode != "decoupled":
        raise ConfigError(
            f"config.train.weight_decay_mode must be 'l2' or 'decoupled', got {mode!r}"
        )
    return optax.adamw(lr, b1=float(cfg.b1), b2=float(cfg.b2), weight_decay=wd)


def make_epoch_targets(graphdef, method: Method, blocks: Blocks, cfg,
                       text: PromptText | None = None) -> Callable:  # fmt: skip
    """Jitted ``(params, feats, aux) -> targets dict``: the method's per-epoch targets
    (``Method.targets``) and ``assign`` ``[N]``, from one pass over ``feats`` (``u``, ``t``:
    ``[blocks.rows, E]``) in row ``blocks`` split over ``data`` (``mcla_jax.rowpass``); ``aux``
    the method's replicated extras (e.g. nouns).

    With the prompt text path ``text``, ``t`` is recomputed from the current context first
    (``feats["r"]``: raw image features, ``feats["frozen"]``: ``PromptText.arrays()``), and the
    targets also hold the noun ``bank`` ``[M, E]`` and the counterparts' train mean ``tmean``."""
    k = int(cfg.num_clusters)
    m = max(1, math.floor(float(cfg.confident_frac) * (blocks.n // k)))

    @jax.jit
    def targets(params, feats, aux):
        model = nnx.merge(graphdef, params)
        model.eval()  # BatchNorm heads (TAC) use their running statistics and do not update them
        t, extra = feats["t"], {}
        if text is not None:
            bank = text.bank(feats["frozen"], model.context[...])
            t, mean = text.all_counterparts(feats["r"], bank, blocks)
            extra = dict(bank=bank, tmean=mean)
        return {**method.targets(model, feats["u"], t, blocks, aux, m, cfg), **extra}

    return targets


def text_batch(text: PromptText, model, batch: dict, targets: dict, frozen: dict) -> dict:
    """``batch`` with its text counterparts (``t``, ``t_nb``, ``t_nbt``) recomputed from the
    context: the nouns ``batch["w"]`` are re-embedded (gradient flows to ``model.context`` only)
    and spliced into the epoch's noun bank -- or, without ``w``, every noun is -- and each row's
    counterpart is taken over that bank from its raw image feature (``r``, ``r_nb``, ...)."""
    if "w" in batch:
        fresh = text.embed_subset(frozen, model.context[...], batch["w"])
        bank = targets["bank"].at[batch["w"]].set(fresh)
    else:  # every noun at every step (nouns_per_step = 0): the whole bank is fresh
        bank = text.all_rows(frozen, model.context[...])
    out = dict(batch)
    for sfx in ("", "_nb", "_nbt"):
        if "r" + sfx in batch:
            out["t" + sfx] = text.counterparts(batch["r" + sfx], bank, targets["tmean"])
    return out


def make_train_step(graphdef, tx, weights: dict, tau: dict, loss_terms=mcla_loss_terms,
                    text: PromptText | None = None) -> Callable:  # fmt: skip
    """Pure ``(params, opt_state, batch, targets, on, frozen=None) -> (params, opt_state,
    metrics)``: one Adam step on a global batch (dict of ``[B, E]``: ``u, t, u_nb, t_nb``).
    ``jax.jit`` it with the batch under ``batch_sharding(mesh, 2)`` and everything else
    replicated, or scan it (``make_epoch``). ``metrics`` holds ``loss`` and the unweighted terms.
    With the prompt text path ``text``, the batch also holds ``r*`` (raw image features) and
    ``w`` (noun rows), ``frozen`` is ``PromptText.arrays()``, and the counterparts are computed
    inside the differentiated function (``text_batch``)."""

    def train_step(params, opt_state, batch, targets, on, frozen=None):
        # Only nnx.Param leaves are trained; the rest (BatchNorm running statistics) is state the
        # forward pass updates, returned through `aux` (empty for heads without BatchNorm).
        params, stats = nnx.split_state(params, nnx.Param, ...)

        def loss_fn(p):
            model = nnx.merge(graphdef, p, stats, copy=True)
            b = batch if text is None else text_batch(text, model, batch, targets, frozen)
            total, terms = loss_terms(model, b, targets, weights, tau, on)
            return total, (terms, nnx.state(model, nnx.Not(nnx.Param)))

        (loss, (terms, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        params = nnx.merge_state(optax.apply_updates(params, updates), stats)
        return params, opt_state, dict(terms, loss=loss)

    return train_step


def make_epoch(graphdef, tx, weights: dict, tau: dict, loss_terms=mcla_loss_terms,
               text: PromptText | None = None) -> Callable:  # fmt: skip
    """Jitted ``(params, opt_state, index, feats, targets, on) -> (params, opt_state, metrics)``.

    ``index``: dict of ``[S, B]`` int32 rows, ``a`` (anchors) and ``nb`` (one kNN neighbour of
    each), split over ``data`` on dim 1 (``_batches``); ``feats``: dict ``u``, ``t`` of ``[N, E]``
    features, replicated. Each step gathers its batch on the device -- only indices cross from
    the host each epoch, not ``4 x S x B x E`` floats. One ``make_train_step`` step per ``s``
    (``lax.scan``: one dispatch and one compile per epoch shape, instead of ``S`` host round
    trips). ``metrics``: epoch means of the terms. With ``text`` (prompt learning), ``index``
    also holds ``w`` ``[S, s]`` (the nouns re-embedded per step) and ``feats`` ``r`` (raw image
    features) and ``frozen`` (``PromptText.arrays()``).
    """
    train_step = make_train_step(graphdef, tx, weights, tau, loss_terms, text)

    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def epoch(params, opt_state, index, feats, targets, on):
        def body(carry, rows):
            batch = {"w": rows["w"]} if "w" in rows else {}
            for key, r in rows.items():  # a -> u, t; nb -> u_nb, t_nb; nbt -> u_nbt, t_nbt
                if key == "w":
                    continue
                sfx = "" if key == "a" else f"_{key}"
                for name in ("u", "t", "r"):  # r: raw image features (prompt learning only)
                    if name in feats:
                        batch[name + sfx] = feats[name][r]
            p, o, metrics = train_step(*carry, batch, targets, on, feats.get("frozen"))
            return (p, o), metrics

        (params, opt_state), metrics = jax.lax.scan(body, (params, opt_state), index)
        return params, opt_state, jax.tree.map(jnp.mean, metrics)

    return epoch


# --------------------------------------------------------------------------- driver


def _batches(rng, n: int, knn_idx: np.ndarray, batch: int, knn_txt=None) -> dict:
    """One epoch of shuffled batch rows (drop remainder) with one random kNN neighbour per
    anchor: ``{"a", "nb"}`` (and ``"nbt"`` from ``knn_txt``), int32 ``[S, B]`` (the features
    are gathered on the device)."""
    steps = n // batch
    a = rng.permutation(n)[: steps * batch]
    out = dict(a=a, nb=knn_idx[a, rng.integers(0, knn_idx.shape[1], size=a.shape)])
    if knn_txt is not None:
        out["nbt"] = knn_txt[a, rng.integers(0, knn_txt.shape[1], size=a.shape)]
    return {k: v.reshape(steps, batch).astype(np.int32) for k, v in out.items()}


def train(features, knn_indices, texts=None, *, nouns=None, config=None, mesh: Mesh | None = None,
          labels=None) -> tuple[np.ndarray, list[dict]]:  # fmt: skip
    """Train MCLA's heads on frozen features and return the image-head clustering.

    Args:
      features: ``[N, E]`` frozen image features (raw CLIP outputs are fine: ``prepare``).
      knn_indices: ``[N, k]`` neighbour rows of each image (``vl_jax.cluster.knn``).
      texts: ``[N, E]`` text counterparts; or None with ``nouns`` ``[M, E]`` (unit-norm noun
        embeddings of the semantic space) to build them (``build_text_counterparts``).
      config: the training block of a clustering config (``configs/mcla/common.py``
        ``train_config()``; schema in docs/mcla.md) (``num_clusters`` etc.; ``batch_size`` is the
        global batch, capped at N rounded down to the data axis, and must divide by it).
      mesh: ``("data", "model")`` mesh; default: all devices on ``data``.
      labels: optional ``[N]`` classes, used only to *report* ACC/NMI/ARI per epoch in the history
        (never for selection: the last epoch is returned).

    Returns:
      ``(assignments [N] int32, history)``; history has one dict per epoch with the epoch means
      of ``loss`` and each active term (and ``acc``/``nmi``/``ari`` with ``labels``).
    """
    if config is None:
        raise TypeError("train() needs a config (configs/mcla/common.py: train_config())")
    cfg = config
    if texts is None:
        if nouns is None:
            raise ValueError("give text counterparts `texts` or noun embeddings `nouns`")
        texts = build_text_counterparts(features, nouns, cfg.tau.text)
    run = Trainer(prepare(features), prepare(texts), knn_indices, cfg, mesh)
    history = []
    for _ in range(int(cfg.epochs)):
        rec = run.epoch()
        if labels is not None:  # reported only; the last epoch is returned regardless
            rec.update(clustering_metrics(np.asarray(labels), run.assign))
        history.append(rec)
    return run.assign, history


class Trainer:
    """One run of a trained method (``config.method``: MCLA, SIC, TAC) on the mesh.

    Args:
      u, t: prepared (``methods.prepare``) image features and text counterparts ``[N, E]``.
      knn_idx: ``[N, k]`` image-space neighbours; knn_txt: ``[N, k']`` text-space neighbours
        (methods with ``text_knn``).
      cfg: the training block of a clustering config; mesh: default all devices on ``data``.
      aux: the method's extra arrays (SIC: ``{"nouns": [M, E]}``), replicated.
      centres: optional ``(image [K, E], text [K, E] | None)`` cluster centres (e.g. k-means on
        ``u``) that initialise the linear heads so that the first assignment is the nearest
        centre (``methods.init_from_centres``).
      text: the prompt-learning text path (``mcla_jax.prompts.PromptText``, MCLA only): the
        model gets a learnable context ``[n_ctx, D]`` and the counterparts ``t`` are recomputed
        from it (``t`` given here is then only their initial value); needs ``raw`` ``[N, E]``,
        the raw image features the counterparts are taken from.

    After construction and after every ``epoch()``, ``assign`` holds the image head's clustering
    ``[N]`` (the epoch targets' assignments). ``state()`` / ``load_state()`` give the pytree a
    checkpoint stores; ``predict`` clusters other (prepared) features. ``train`` and
    ``mcla_jax.experiment`` drive it; the ``mcla_epoch`` benchmark times it.
    """

    def __init__(self, u, t, knn_idx, cfg, mesh: Mesh | None = None, *, knn_txt=None, aux=None,
                 centres=None, text: PromptText | None = None, raw=None):  # fmt: skip
        self.method = methods.get_method(str(cfg.get("method", "mcla")))
        knn_idx = np.asarray(knn_idx, np.int64)
        n, e = u.shape
        k = int(cfg.num_clusters)
        if t.shape != u.shape or knn_idx.ndim != 2 or knn_idx.shape[0] != n:
            raise ValueError(
                f"shapes differ: features {u.shape}, texts {t.shape}, knn {knn_idx.shape}"
            )
        if self.method.text_knn and (knn_txt is None or np.shape(knn_txt)[0] != n):
            raise ValueError(
                f"method {self.method.name} needs text-space neighbours knn_txt [N, k]"
            )
        unknown = set(self.method.terms) - set(cfg.weights)
        if unknown:
            raise ValueError(f"config.weights lacks {sorted(unknown)} for {self.method.name}")
        if text is not None and (self.method.name != "mcla" or np.shape(raw) != u.shape):
            raise ValueError("prompt learning needs method mcla and raw image features [N, E]")
        if mesh is None:
            mesh = create_mesh()
        d = mesh.shape[DATA]
        bsz = min(int(cfg.batch_size), n // d * d)
        if bsz % d or bsz == 0:
            raise ValueError(f"batch_size {cfg.batch_size} must be a positive multiple of data={d}")

        model = self.method.build(e, k, cfg, nnx.Rngs(int(cfg.seed)))
        if centres is not None:  # SIC's optional centre initialisation of the linear heads
            methods.init_from_centres(model, *centres, scale=float(cfg.get("init_scale", 0.05)))
        if text is not None:  # the learnable prompt context, from the init prompt's embeddings
            model.context = nnx.Param(jnp.asarray(text.init_context()))
        # `params`: every variable of the model (BatchNorm statistics too: checkpointed with it);
        # the optimiser sees only the nnx.Param part (make_train_step).
        self.graphdef, params = nnx.split(model)
        tx = make_optimizer(cfg)
        rep = replicated(mesh)
        self.params = jax.device_put(params, rep)
        self.opt_state = jax.device_put(tx.init(nnx.split_state(params, nnx.Param, ...)[0]), rep)

        # ONE replicated copy of the features serves both the batch gathers of training and the
        # per-epoch targets pass (which splits each of its row blocks over `data` inside the
        # jit: slicing a replicated array moves nothing). Only inputs smaller than one block
        # are padded. At 1.28M x 512 each extra copy would be 2.6 GB per modality.
        rows = int(cfg.get("target_block_rows", 0)) or max(4096, 2**24 // k)
        self.blocks = blocks = Blocks.plan(n, rows, d, NamedSharding(mesh, P(DATA, None)))
        pad = ((0, blocks.rows - n), (0, 0))
        tables = (("u", u), ("t", t)) + ((("r", np.asarray(raw, np.float32)),) if text else ())
        self._feats = jax.device_put(
            {name: np.pad(x, pad) if blocks.rows > n else x for name, x in tables}, rep
        )
        if text is not None:  # the frozen tower and prompt tokens: jit arguments, no gradient
            self._feats["frozen"] = text.arrays()
        if text is not None:  # the nouns re-embedded per step (mcla_jax.prompts.subset_groups)
            text = text.with_subset(int(cfg.prompt.nouns_per_step))
        self.text = text
        self._aux = jax.device_put(
            {k: np.asarray(v, np.float32) for k, v in (aux or {}).items()}, rep
        )
        self._targets_fn = make_epoch_targets(self.graphdef, self.method, blocks, cfg, text)
        self._epoch_fn = make_epoch(self.graphdef, tx, dict(cfg.weights), dict(cfg.tau),
                                    self.method.loss_terms, text)  # fmt: skip
        self._steps_sharding = NamedSharding(mesh, P(None, DATA))
        self._knn_txt = None if knn_txt is None else np.asarray(knn_txt, np.int64)
        self._n, self._bsz, self._knn, self._cfg, self.mesh = n, bsz, knn_idx, cfg, mesh
        self.epochs_done = 0
        self._update_targets()

    def _update_targets(self):
        tg = self._targets_fn(self.params, self._feats, self._aux)
        self.assign = fetch(tg.pop("assign")).astype(np.int32)  # all rows, on every host
        self._targets = tg

    def epoch(self) -> dict:
        """Trains one epoch; returns ``{"epoch", "loss", <term>: epoch mean}``."""
        ep, cfg = self.epochs_done, self._cfg
        rng = np.random.default_rng([int(cfg.seed), ep])
        rows = _batches(rng, self._n, self._knn, self._bsz, self._knn_txt)
        if self.text is not None:  # after the batch draws: the same batches as without prompts
            if self.text.subset is not None:  # else every noun, in length buckets (text_batch)
                rows["w"] = self.text.noun_rows(rng, rows["a"].shape[0])
        index = jax.device_put(rows, self._steps_sharding)
        # The semantic CE may start later than the other target-reading terms (MCLA only).
        sem = max(int(cfg.warmup_epochs), int(cfg.get("semantic_warmup_epochs", 0)))
        # explicit transfers: an epoch passes jax.transfer_guard("disallow")
        on, sem_on = jax.device_put(
            (np.float32(ep >= int(cfg.warmup_epochs)), np.float32(ep >= sem)), replicated(self.mesh)
        )
        targets = dict(self._targets, semantic_on=sem_on)
        self.params, self.opt_state, metrics = self._epoch_fn(
            self.params, self.opt_state, index, self._feats, targets, on
        )
        rec = {"epoch": ep, **{name: float(v) for name, v in jax.device_get(metrics).items()}}
        if not np.isfinite(rec["loss"]):
            raise FloatingPointError(f"non-finite loss at epoch {ep}: {rec}")
        self._update_targets()  # next epoch's targets, this epoch's result
        self.epochs_done += 1
        return rec

    def state(self) -> dict:
        """The checkpointed state: ``{"params", "opt_state", "epoch"}`` (everything else -- the
        shuffles, the neighbours drawn -- is a function of ``(seed, epoch)``)."""
        return dict(
            params=self.params,
            opt_state=self.opt_state,
            epoch=np.asarray(self.epochs_done, np.int64),
        )

    def load_state(self, state: dict) -> None:
        """Continues from ``state()`` of an earlier run with the same config and data."""
        rep = replicated(self.mesh)
        self.params = jax.device_put(state["params"], rep)
        self.opt_state = jax.device_put(state["opt_state"], rep)
        self.epochs_done = int(state["epoch"])
        self._update_targets()

    def predict(self, u, t=None) -> np.ndarray:
        """Image-head clusters ``[M]`` int32 of other prepared features ``u`` ``[M, E]`` (``t``:
        their text counterparts, only read by heads that need them; default ``u``)."""
        model = nnx.merge(self.graphdef, jax.device_get(self.params))
        model.eval()  # BatchNorm heads: running statistics
        t = u if t is None else t
        out = [
            np.asarray(
                jnp.argmax(model(jnp.asarray(u[i : i + 8192]), jnp.asarray(t[i : i + 8192]))[1], -1)
            )
            for i in range(0, len(u), 8192)
        ]
        return np.concatenate(out).astype(np.int32) if out else np.zeros(0, np.int32)
