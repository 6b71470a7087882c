"""vl_jax.checkpoints.train_state: resume from the newest readable step, never silently restart."""

import glob

import numpy as np
import pytest

from vl_jax.checkpoints.train_state import IncompatibleCheckpointError, TrainCheckpoints


def _state(v):
    return {"p": np.full(4, v, np.float32), "epoch": np.asarray(v, np.int64)}


def _corrupt(step_dir):
    files = glob.glob(f"{step_dir}/state/**/d/*", recursive=True)
    assert files
    for f in files:
        with open(f, "wb") as fh:
            fh.write(b"junk")


def test_resume_fallback_and_refusals(tmp_path):
    with TrainCheckpoints(tmp_path, meta={"run": 1}) as ck:
        assert ck.restore_latest(_state(0)) == (None, None)
        for step in (1, 2, 3):
            ck.save(step, _state(step))
        assert ck.steps() == [2, 3]  # max_to_keep=2
    with TrainCheckpoints(tmp_path, meta={"run": 1}) as ck:
        step, got = ck.restore_latest(_state(0))
        assert step == 3 and np.all(got["p"] == 3) and int(got["epoch"]) == 3
    _corrupt(tmp_path / "3")
    with TrainCheckpoints(tmp_path, meta={"run": 1}) as ck:
        step, got = ck.restore_latest(_state(0))  # a damaged newest step costs one step
        assert step == 2 and np.all(got["p"] == 2)
    with pytest.raises(IncompatibleCheckpointError, match="another run"):
        TrainCheckpoints(tmp_path, meta={"run": 2}).restore_latest(_state(0))
    _corrupt(tmp_path / "2")
    with pytest.raises(RuntimeError, match="no readable checkpoint"):
        TrainCheckpoints(tmp_path, meta={"run": 1}).restore_latest(_state(0))
