"""Run logging shared by every job: JSON outputs, per-step scalars, progress bars.

    write_json(os.path.join(workdir, "metrics.json"), {"acc": 0.9})   # atomic
    with MetricWriter(workdir) as w:
        w.scalars(epoch, {"loss": 0.3, "loss/instance": 0.1})       # TensorBoard + JSONL
    for batch in progress(batches, total=n, desc="answering"):      # tqdm with ETA
        ...

Only process 0 writes or draws (multi-host runs log once); the other processes get no-ops.
Scalars go to TensorBoard event files under `workdir/tensorboard/` (tensorboardX, no TensorFlow
needed; open with `tensorboard --logdir workdir`) and, one JSON object per line, to
`workdir/log.jsonl`, which is what tests and scripts read.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping

from vl_jax.workdir import _plain as _plain  # JSON-ready values (NaN as a string)
from vl_jax.workdir import is_writer, write_json

__all__ = ["MetricWriter", "is_main_process", "progress", "read_jsonl", "write_json"]


# The one "process 0 writes" rule and JSON writer live in vl_jax.workdir; re-exported here.
is_main_process = is_writer


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The complete lines of a JSONL file (a torn last line from a killed writer is skipped)."""
    if not os.path.exists(path):
        return []
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break  # torn write: the writer died mid-line
            out.append(json.loads(line))
    return out


class MetricWriter:
    """Scalars per step to TensorBoard (`workdir/tensorboard`) and `workdir/log.jsonl`.

    Restarting a run appends: a resumed run's steps continue the same files (rows of steps that
    are logged again after a resume are superseded by the later rows when read)."""

    def __init__(self, workdir: str | os.PathLike, *, enabled: bool | None = None):
        self.enabled = is_main_process() if enabled is None else enabled
        self._tb = None
        self._jsonl = None
        if self.enabled:
            os.makedirs(workdir, exist_ok=True)
            from tensorboardX import SummaryWriter  # imported lazily: protobuf is slow to load

            self._tb = SummaryWriter(os.path.join(os.fspath(workdir), "tensorboard"))
            self._jsonl = open(os.path.join(workdir, "log.jsonl"), "a", encoding="utf-8")

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        values = {k: float(v) for k, v in values.items()}
        for k, v in values.items():
            self._tb.add_scalar(k, v, int(step))
        self._jsonl.write(json.dumps(_plain({"step": int(step), **values})) + "\n")
        self._jsonl.flush()

    def close(self) -> None:
        if self.enabled and self._tb is not None:
            self._tb.close()
            self._jsonl.close()
            self._tb = self._jsonl = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def progress(iterable: Iterable | None = None, total: int | None = None, desc: str = "", **kw):
    """A tqdm progress bar with rate and ETA on process 0; silent elsewhere."""
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=not is_main_process(), **kw)
