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


def write_folder_once(path: str | os.PathLike, marker: str, write) -> str:
    """``write(tmp)`` fills a temporary folder beside ``path`` that is then renamed to
    ``path``, so a killed write leaves no half folder; skipped when ``path/marker`` (the file
    a complete folder has) exists. A half folder left by an older writer is replaced.
    Returns ``path``."""
    import shutil

    path = os.fspath(path)
    if os.path.exists(os.path.join(path, marker)):
        return path
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{os.path.basename(path)}.")
    try:
        write(tmp)
        shutil.rmtree(path, ignore_errors=True)
        os.rename(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path
