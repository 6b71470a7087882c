"""The workdir: one rule for what may be reused, and one writer per file.

    if workdir.is_writer():                        # process 0 of a multi-host run
        write(...)
    workdir.written("features")                    # everyone waits until it is on disk

    stage = workdir.Stage(path, fingerprint(model=..., data=...))
    cached = stage.load(np.load)                   # None: absent, or made with other settings
    ...compute...; stage.save(write_fn)            # output first, then its fingerprint

    workdir.require_same(path, fingerprint(...))   # append-only results: refuse, don't mix

**Fingerprint rule.** Every reusable result in a workdir (features, noun embeddings, answers,
training checkpoints) is keyed by a *fingerprint*: a JSON object of exactly the settings that
decide its content, normalised by :func:`fingerprint` (tuples -> lists, sorted keys, numpy
scalars -> Python). The fingerprint is stored next to the result (``<result>.json``) and written
*after* it, so its presence marks a complete result. Two policies follow from what the result is:

- a *derived* result that can be recomputed (encoded features, noun embeddings) is recomputed
  when the stored fingerprint differs (:class:`Stage`);
- an *accumulated* result that a rerun continues (VQA answers, training checkpoints) is never
  mixed with one made under other settings: the run stops with an
  :class:`~vl_jax.errors.IncompatibleWorkdirError` naming each difference
  (:func:`require_same`).

**One writer.** On several processes every process runs the same code over a shared
filesystem; only :func:`is_writer` (process 0) writes shared files, and :func:`written` is the
barrier after which the others may read them.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import jax
import numpy as np

from vl_jax.errors import IncompatibleWorkdirError
from vl_jax.fileio import atomic_open

T = TypeVar("T")


def is_writer() -> bool:
    """True on the one process that writes shared files (process 0)."""
    return jax.process_index() == 0


def written(name: str) -> None:
    """Barrier: every process waits here until the writer has finished ``name``. A no-op on
    one process. Every process must call it the same number of times, in the same order."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def makedirs(path: str | os.PathLike) -> None:
    """Creates ``path`` on the writer (others only read what it writes)."""
    if is_writer():
        os.makedirs(path, exist_ok=True)


def _plain(x: Any) -> Any:
    """ConfigDicts, numpy/jax scalars and arrays -> JSON-ready Python values (NaN/inf as
    strings, which JSON lacks)."""
    if hasattr(x, "to_dict"):  # ml_collections.ConfigDict
        x = x.to_dict()
    if isinstance(x, Mapping):
        return {str(k): _plain(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_plain(v) for v in x]
    if isinstance(x, np.ndarray | jax.Array):
        return _plain(np.asarray(x).tolist())
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    return x


def fingerprint(**parts: Any) -> dict:
    """The normalised JSON object of ``parts`` (ConfigDicts, dicts, lists, scalars)."""
    return json.loads(json.dumps(_plain(parts), sort_keys=True))


def differences(old: Mapping, new: Mapping, prefix: str = "") -> list[str]:
    """``"key.sub: old -> new"`` for every leaf that differs between two fingerprints."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def read_json(path: str | os.PathLike) -> Any | None:
    """The JSON content of ``path``, or None when it is absent or unreadable (torn)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_json(path: str | os.PathLike, obj: Any, *, all_processes: bool = False) -> None:
    """Writes ``obj`` as indented JSON, atomically; on the writer only unless
    ``all_processes``."""
    if not (all_processes or is_writer()):
        return
    with atomic_open(path, "w", encoding="utf-8") as f:
        json.dump(_plain(obj), f, indent=2)
        f.write("\n")


class Stage:
    """A derived result at ``path`` with its fingerprint at ``path + ".json"``.

    ``load(read)`` returns ``read(path)`` when both files exist and the stored fingerprint
    equals this one, else None (absent, torn, or made with other settings: recompute).
    ``save(write)`` calls ``write(path)`` on the writer, then records the fingerprint;
    ``record()`` records it for a result its producer wrote itself."""

    def __init__(self, path: str | os.PathLike, fp: Mapping):
        self.path = os.fspath(path)
        self.fingerprint = fingerprint(**fp)

    def load(self, read: Callable[[str], T]) -> T | None:
        if not os.path.exists(self.path) or read_json(self.path + ".json") != self.fingerprint:
            return None
        return read(self.path)

    def save(self, write: Callable[[str], None]) -> None:
        if is_writer():
            write(self.path)
        self.record()

    def record(self) -> None:
        """Records the fingerprint of a result already at ``path`` (written by the stage's own
        code, e.g. ``vl_jax.encode``); the writer only."""
        write_json(self.path + ".json", self.fingerprint)


def require_same(path: str | os.PathLike, fp: Mapping, *, what: str = "results") -> None:
    """Records ``fp`` at ``path``, or raises ``IncompatibleWorkdirError`` when ``path`` holds a
    different fingerprint (an accumulated result made with other settings)."""
    new = fingerprint(**fp)
    old = read_json(path)
    if old is not None and old != new:
        folder = os.path.dirname(os.path.abspath(path))
        raise IncompatibleWorkdirError(
            f"{folder} holds {what} made with other settings ({'; '.join(differences(old, new))}); "
            f"use another --workdir, or delete {os.path.basename(path)} and the {what} to start over"
        )
    write_json(path, new)
