"""Atomic file writes: readers never see a half-written output, a crash leaves no debris.

    with atomic_open(path, "w") as f:
        f.write(text)

The data goes to a unique temporary file in the destination's folder (same filesystem, so the
final `os.replace` is atomic), is flushed and fsync'ed, then renamed over `path`. If the body
raises, the temporary file is removed and `path` is left as it was.
"""

from __future__ import annotations

import contextlib
import os
import tempfile

from vl_jax import faults


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb", **kwargs):
    """`open(path, mode, **kwargs)`, but the file appears at `path` only once complete.

    Creates the parent folder. `mode` is a write mode ("w", "wb"); kwargs go to `open`
    (e.g. `encoding="utf-8"`).
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        faults.point("file.temp", os.path.basename(path))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
