"""Fault injection: a process kills itself (SIGKILL) at a named point, for kill-and-resume tests.

Long jobs call ``point(name)`` at the places where a preemption hurts most -- after a batch of
encoded features, a block of noun embeddings, an epoch, between writing a file's temporary copy
and renaming it. With ``VL_JAX_KILL_AT=<name>:<n>`` in the environment the process receives
SIGKILL (no cleanup, no ``finally``, exactly like a preempted machine) the ``n``-th time it passes
``<name>``; without it ``point`` returns at once. ``tests/test_kill_resume.py`` draws the points
and counts from a seeded generator, kills real runs there, reruns the same command and compares
the outputs with an uninterrupted run.

Named points (``NAMES``; a ``point`` call with another name raises, so the list stays true):
"""

from __future__ import annotations

import os
import signal

ENV = "VL_JAX_KILL_AT"
TRACE_ENV = "VL_JAX_FAULT_TRACE"
NAMES = {
    "encode.batch": "vl_jax.encode: after one batch of features was computed (per process)",
    "encode.saved": "vl_jax.encode: after a feature shard file was written",
    "nouns.block": "mcla_jax.noun_embeddings: after a block of noun embeddings was saved",
    "train.epoch": "mcla_jax.experiment: after an epoch, before its checkpoint",
    "checkpoint.writing": "vl_jax.checkpoints.train_state: an Orbax save was started, not finished",
    "checkpoint.saved": "vl_jax.checkpoints.train_state: after a checkpoint was committed",
    "vdc.answers": "vdc_jax.vqa: after a batch of answers was appended",
    "file.temp": "vl_jax.fileio.atomic_open: the temporary copy is complete, not yet renamed",
}
__doc__ += "".join(f"\n- ``{k}``: {v}" for k, v in NAMES.items()) + "\n"
_seen: dict[str, int] = {}


def point(name: str, detail: str = "") -> None:
    """Counts a pass through ``name``; SIGKILLs this process on the pass ``VL_JAX_KILL_AT`` names.

    ``detail`` (e.g. a file name) narrows the point: ``VL_JAX_KILL_AT=file.temp:3`` counts every
    atomic write, ``file.temp/metrics.json:1`` only those of ``metrics.json``; traces list
    ``name/detail``.
    """
    if name not in NAMES:
        raise ValueError(f"unknown fault point {name!r}; known: {sorted(NAMES)}")
    key = f"{name}/{detail}" if detail else name
    trace = os.environ.get(TRACE_ENV)
    if trace:
        with open(trace, "a", encoding="utf-8") as f:
            f.write(key + "\n")
    spec = os.environ.get(ENV)
    if not spec:
        return
    target, _, nth = spec.rpartition(":")
    if target not in (name, key):
        return
    _seen[target] = _seen.get(target, 0) + 1
    if _seen[target] == int(nth):
        os.kill(os.getpid(), signal.SIGKILL)
