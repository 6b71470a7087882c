"""Training checkpoints with Orbax: save every epoch, resume from the newest *good* one.

    ckpt = TrainCheckpoints(os.path.join(workdir, "checkpoints"), meta={"config": fingerprint})
    step, state = ckpt.restore_latest(trainer.state())   # (None, None) on a fresh workdir
    ...
    ckpt.save(epoch + 1, trainer.state())                # after each epoch
    ckpt.close()

Orbax writes each step into a temporary folder and renames it when complete, so a run killed
mid-save leaves no step that looks finished. A step that is finished but unreadable (a disk
error, a file truncated or deleted by hand) is reported and skipped: the next older step is
tried, so a damaged newest checkpoint costs one epoch, not the run. `meta` (JSON) is stored
with every step; restoring a step whose meta differs (another config, other data) raises
instead of silently continuing a different experiment.
"""

from __future__ import annotations

import logging
import os

import jax
import orbax.checkpoint as ocp

from vl_jax import faults
from vl_jax.errors import IncompatibleWorkdirError

log = logging.getLogger(__name__)


class IncompatibleCheckpointError(IncompatibleWorkdirError):
    """The workdir holds checkpoints of a different run (config or data changed)."""


class TrainCheckpoints:
    """Orbax `CheckpointManager` over `directory`, keeping the newest `max_to_keep` steps."""

    def __init__(
        self, directory: str | os.PathLike, *, meta: dict | None = None, max_to_keep: int = 2
    ):
        self.directory = os.path.abspath(os.fspath(directory))
        self.meta = dict(meta or {})
        self._mngr = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        )

    def steps(self) -> list[int]:
        return sorted(self._mngr.all_steps())

    def save(self, step: int, state) -> None:
        """Saves `state` (a pytree of arrays) as `step` and waits until it is on disk."""
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(self.meta)
        )
        self._mngr.save(int(step), args=args, force=True)
        faults.point("checkpoint.writing")
        self._mngr.wait_until_finished()
        faults.point("checkpoint.saved")

    def restore_latest(self, like) -> tuple[int | None, object]:
        """The newest readable step restored into the structure/sharding of `like`.

        Returns:
          `(step, state)`, or `(None, None)` when there is no checkpoint.

        Raises:
          IncompatibleCheckpointError: the newest readable step was saved with other `meta`.
          RuntimeError: steps exist but none can be read (so a restore bug never silently
            restarts a long run from scratch).
        """
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        errors = []

        def read(step, **items):
            try:
                return self._mngr.restore(step, args=ocp.args.Composite(**items))
            except Exception as exc:  # any unreadable step is skipped, loudly
                errors.append(f"step {step}: {exc}")
                log.warning("checkpoint %d in %s is unreadable (%s); trying an older one",
                            step, self.directory, exc)  # fmt: skip
                return None

        for step in reversed(self.steps()):
            got = read(step, meta=ocp.args.JsonRestore())
            if got is None:
                continue
            meta = got["meta"]
            if meta != self.meta:
                diff = sorted(
                    k for k in set(meta) | set(self.meta) if meta.get(k) != self.meta.get(k)
                )
                raise IncompatibleCheckpointError(
                    f"{self.directory} holds checkpoints of another run (differs in {diff}); "
                    "use a new --workdir, or delete that folder to start over"
                )
            got = read(step, state=ocp.args.StandardRestore(abstract))
            if got is not None:
                return step, got["state"]
        if errors:
            raise RuntimeError(f"no readable checkpoint in {self.directory}: " + "; ".join(errors))
        return None, None

    def close(self) -> None:
        self._mngr.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
