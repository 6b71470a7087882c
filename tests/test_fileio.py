"""vl_jax.fileio.atomic_open: complete files only, nothing left behind on failure."""

import os

import pytest

from vl_jax.fileio import atomic_open


def test_writes_and_replaces(tmp_path):
    path = tmp_path / "sub" / "out.txt"  # the folder is created
    with atomic_open(path, "w", encoding="utf-8") as f:
        f.write("first")
    with atomic_open(path, "wb") as f:
        f.write(b"second")
    assert path.read_text() == "second"
    assert os.listdir(path.parent) == ["out.txt"]


def test_failure_keeps_the_old_file_and_leaves_no_debris(tmp_path):
    path = tmp_path / "out.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="boom"), atomic_open(path, "w") as f:
        f.write("half of the new")
        raise RuntimeError("boom")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]
