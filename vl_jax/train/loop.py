"""One training loop for every model: jitted pure step, optax, batch sharded over `data`, Orbax
checkpoints with resume.

    trainer = Trainer(model, loss_fn, make_optimizer(cfg.optim, cfg.num_steps), mesh,
                      trainable=nnx.Param)
    model, history = trainer.fit(batch_at, cfg.num_steps, workdir, checkpoint_every=500)

The model is split once (`nnx.split`) into a graph definition, the trainable parameters and the
rest (frozen parameters); the step is a pure function `(params, opt_state, rest, batch) ->
(params, opt_state, metrics)` under `jax.jit` with the parameters and optimizer state donated.
`loss_fn(model, batch) -> (loss, metrics dict)` sees a merged NNX model, so model code stays
ordinary NNX. Parameters are placed by `vl_jax.parallel.shard_state` (replicated, or split over
`model` where annotated); each global batch is split over `data`, so means inside the loss are
global means and XLA inserts the all-reduces -- 1 and 8 devices compute the same step.

Resume order (written down once, here): the latest checkpoint in `workdir/checkpoints` that
restores > the previous ones (a damaged latest is skipped with a warning) > the model as given
(scratch or pretrained). Batches are a pure function of the step (`batch_at(step)`), so there is
no input iterator state: a resumed run equals an uninterrupted one.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from vl_jax import parallel
from vl_jax.checkpoints.train_state import TrainCheckpoints

_log = logging.getLogger(__name__)

Batch = dict[str, np.ndarray]


def make_optimizer(cfg: ml_collections.ConfigDict, num_steps: int) -> optax.GradientTransformation:
    """AdamW with linear warm-up then cosine decay to `lr * final_lr_ratio`, global-norm clipping,
    and weight decay on matrices only (norm scales, biases and the temperature are not decayed).

    cfg keys: lr, warmup_steps, weight_decay, grad_clip, b1, b2, final_lr_ratio.
    """
    schedule = optax.warmup_cosine_decay_schedule(
        0.0,
        cfg.lr,
        cfg.warmup_steps,
        max(num_steps, cfg.warmup_steps + 1),
        end_value=cfg.lr * cfg.final_lr_ratio,
    )
    decay_mask = lambda params: jax.tree.map(lambda x: jnp.ndim(x) >= 2, params)
    return optax.chain(
        optax.clip_by_global_norm(cfg.grad_clip),
        optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, weight_decay=cfg.weight_decay, mask=decay_mask),
    )


def optimizer_config(**overrides) -> ml_collections.ConfigDict:
    """Defaults for `make_optimizer`."""
    c = ml_collections.ConfigDict(
        dict(
            lr=1e-3,
            warmup_steps=100,
            weight_decay=0.05,
            grad_clip=1.0,
            b1=0.9,
            b2=0.98,
            final_lr_ratio=0.02,
        )
    )
    c.update(overrides)
    return c


class Trainer:
    """Holds the split model, the jitted step and the optimizer state.

    Args:
      model: any NNX module; it is split once and not modified (see `model()` for the result).
      loss_fn: `(model, batch) -> (scalar loss, {name: scalar})`, traceable.
      tx: the optax transformation for the trainable parameters.
      mesh: a `parallel.create_mesh` mesh; the global batch size must divide over `data`.
      trainable: NNX filter of the trained parameters; the rest of the state is frozen (passed to
        the step, never differentiated).
    """

    def __init__(
        self,
        model: nnx.Module,
        loss_fn: Callable,
        tx: optax.GradientTransformation,
        mesh: Mesh,
        trainable=nnx.Param,
    ):
        self.mesh, self.tx = mesh, tx
        self.graphdef, params, rest = nnx.split(model, trainable, ...)
        self.params = parallel.shard_state(params, mesh)
        self.rest = parallel.shard_state(rest, mesh)
        # Under jit the moments inherit the parameters' shardings.
        self.opt_state = jax.jit(tx.init)(self.params)
        self.step = 0
        graphdef = self.graphdef

        def train_step(params, opt_state, rest, batch):
            def objective(p):
                return loss_fn(nnx.merge(graphdef, p, rest), batch)

            (loss, metrics), grads = jax.value_and_grad(objective, has_aux=True)(params)
            updates, opt_state = tx.update(grads, opt_state, params)
            params = optax.apply_updates(params, updates)
            return (
                params,
                opt_state,
                {**metrics, "loss": loss, "grad_norm": optax.global_norm(grads)},
            )

        # Donation: params and moments are updated in place (no second copy in device memory).
        self.train_step = jax.jit(train_step, donate_argnums=(0, 1))

    def model(self) -> nnx.Module:
        """The current model (trainable + frozen state merged)."""
        return nnx.merge(self.graphdef, self.params, self.rest)

    def put_batch(self, batch: Batch) -> dict[str, jax.Array]:
        """A global batch (numpy, identical on every process) -> arrays split over `data`.

        Each process contributes only its own rows (`process_slice`), so a multi-host run needs no
        all-gather of the inputs."""
        n = len(next(iter(batch.values())))
        rows = parallel.process_slice(n)
        return parallel.host_local_to_global({k: v[rows] for k, v in batch.items()}, self.mesh)

    def run_step(self, batch: Batch) -> dict[str, jax.Array]:
        """One optimizer step on a global batch; returns device metrics (not fetched)."""
        self.params, self.opt_state, metrics = self.train_step(
            self.params, self.opt_state, self.rest, self.put_batch(batch)
        )
        self.step += 1
        return metrics

    # ---- checkpoints ----------------------------------------------------------------------

    def _target(self):
        return {"params": self.params, "opt_state": self.opt_state}

    def save(self, checkpoints) -> None:
        """Saves step `self.step` to a `vl_jax.checkpoints.train_state.TrainCheckpoints`."""
        checkpoints.save(self.step, self._target())

    def restore_latest(self, checkpoints) -> int:
        """Restores the newest checkpoint that loads (older ones if the newest is damaged).
        Returns the restored step, or 0 when there is none (the state is left as it is)."""
        step, got = checkpoints.restore_latest(self._target())
        if step is None:
            return 0
        self.params, self.opt_state, self.step = got["params"], got["opt_state"], int(step)
        return self.step

    def fit(
        self,
        batch_at: Callable[[int], Batch],
        num_steps: int,
        workdir: str | None = None,
        *,
        checkpoint_every: int = 0,
        log_every: int = 50,
        max_to_keep: int = 2,
        stop_at: int | None = None,
    ) -> tuple[nnx.Module, list[dict]]:
        """Trains up to step `num_steps` (resuming from `workdir/checkpoints` when there is one).

        Args:
          batch_at: step -> global batch (numpy dict, leading dim = global batch size).
          num_steps: total steps of the run (the schedule's length).
          workdir: where `checkpoints/` live; None = no checkpoints.
          checkpoint_every: save every N steps (and at the end); 0 = only at the end.
          log_every: fetch metrics to the host every N steps (and at the last step).
          stop_at: stop early after this step (tests: simulate an interrupted run).
        Returns:
          (the trained model, [{"step", "seconds", metric: float, ...} per logged step]).
        Raises:
          FloatingPointError: a non-finite loss at a logged step.
        """
        manager = None
        if workdir is not None:
            manager = TrainCheckpoints(
                os.path.join(workdir, "checkpoints"), max_to_keep=max_to_keep
            )
            if self.restore_latest(manager):
                _log.info("resumed from step %d", self.step)
        end = num_steps if stop_at is None else min(stop_at, num_steps)
        history: list[dict] = []
        start = time.perf_counter()
        try:
            while self.step < end:
                metrics = self.run_step(batch_at(self.step))
                if self.step % log_every == 0 or self.step == end:
                    row = {k: float(v) for k, v in jax.device_get(metrics).items()}
                    if not np.isfinite(row["loss"]):
                        raise FloatingPointError(f"loss is {row['loss']} at step {self.step}")
                    row.update(step=self.step, seconds=time.perf_counter() - start)
                    history.append(row)
                    _log.info("step %d %s", self.step, row)
                if manager is not None and (
                    (checkpoint_every and self.step % checkpoint_every == 0) or self.step == end
                ):
                    self.save(manager)
        finally:
            if manager is not None:
                manager.close()
        return self.model(), history
