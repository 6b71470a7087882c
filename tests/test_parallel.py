"""Tests for vl_jax.parallel on 8 fake CPU devices (see conftest.py)."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P
from multihost_procs import run_processes

from vl_jax import parallel as par

REPO = Path(__file__).resolve().parents[1]


def _annotated_linear():
    # Eager sharding (flax 0.12 default) would need a mesh context at construction;
    # build plain arrays and let shard_state place them.
    with nnx.use_eager_sharding(False):
        return nnx.Linear(
            4,
            6,
            kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), (None, "model")),
            rngs=nnx.Rngs(0),
        )


def test_eight_devices_visible():
    assert jax.device_count() == 8
    assert jax.default_backend() == "cpu"


def test_mesh_shapes(mesh8, mesh_4x2, mesh1):
    assert dict(mesh8.shape) == {"data": 8, "model": 1}
    assert dict(mesh_4x2.shape) == {"data": 4, "model": 2}
    assert mesh1.size == 1
    assert dict(par.create_mesh(model=2).shape) == {"data": 4, "model": 2}
    assert dict(par.create_mesh(data=2, model=-1).shape) == {"data": 2, "model": 4}
    assert dict(par.mesh_from_config(ml_collections.ConfigDict({"model": 4})).shape) == {
        "data": 2,
        "model": 4,
    }
    assert dict(par.mesh_from_config({}).shape) == {"data": 8, "model": 1}
    assert "mesh=(data=4 x model=2)" in par.describe(mesh_4x2)
    assert par.global_batch_size(16, mesh_4x2) == 64


@pytest.mark.parametrize("data,model", [(3, 2), (-1, 3), (4, 4), (-1, -1), (0, 1)], ids=str)
def test_bad_mesh_shape_message(data, model):
    with pytest.raises(ValueError, match=r"\(data=.*, model=.*\) from 8 cpu device"):
        par.create_mesh(data=data, model=model)


def test_batch_sharding_and_jit_match(mesh8):
    x = np.arange(16 * 3, dtype=np.float32).reshape(16, 3)
    xs = jax.device_put(x, par.batch_sharding(mesh8))
    assert len(xs.addressable_shards) == 8
    assert {s.data.shape for s in xs.addressable_shards} == {(2, 3)}
    assert len({s.device for s in xs.addressable_shards}) == 8
    assert par.batch_sharding(mesh8, ndim=3).spec == P("data", None, None)
    assert par.batch_sharding(mesh8, ndim=0).spec == P()

    f = jax.jit(lambda a: jnp.tanh(a @ a.T).sum(axis=1) + a.mean())
    np.testing.assert_allclose(np.asarray(f(xs)), np.asarray(f(x)), rtol=1e-6)


def test_param_shardings_and_shard_state(mesh_4x2, mesh1):
    state = nnx.state(_annotated_linear())
    sh = par.param_shardings(state, mesh_4x2)
    assert sh["kernel"].get_value().spec == P(None, "model")
    assert sh["bias"].get_value().spec == P()

    placed = par.shard_state(state, mesh_4x2)
    kernel = placed["kernel"].get_value()
    assert kernel.sharding.spec == P(None, "model")
    assert {s.data.shape for s in kernel.addressable_shards} == {(4, 3)}
    assert len({s.index[1].start for s in kernel.addressable_shards}) == 2  # 2 halves, x4 copies
    assert placed["bias"].get_value().sharding.is_fully_replicated
    np.testing.assert_array_equal(np.asarray(kernel), np.asarray(state["kernel"].get_value()))

    # Axis names missing from the mesh are dropped; size-1 axes are kept (harmless).
    only_data = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    assert par.param_shardings(state, only_data)["kernel"].get_value().spec == P(None, None)
    assert par.param_shardings(state, mesh1)["kernel"].get_value().spec == P(None, "model")

    # A model built eagerly sharded under a mesh context re-places without change.
    with jax.set_mesh(mesh_4x2):
        eager = nnx.Linear(
            4,
            6,
            kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), (None, "model")),
            rngs=nnx.Rngs(0),
        )
    again = par.shard_state(nnx.state(eager), mesh_4x2)
    assert again["kernel"].get_value().sharding.spec == P(None, "model")

    # Plain pytrees of arrays: replicated.
    plain = par.param_shardings({"w": np.ones((2, 2))}, mesh_4x2)
    assert plain["w"].spec == P()


def test_param_shardings_uneven_dim_replicated(mesh_4x2):
    with nnx.use_eager_sharding(False):
        lin = nnx.Linear(
            2,
            5,  # 5 does not split over model=2
            kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), (None, "model")),
            rngs=nnx.Rngs(0),
        )
    sh = par.param_shardings(nnx.state(lin), mesh_4x2)
    assert sh["kernel"].get_value().spec == P(None, None)


def test_host_local_to_global_roundtrip(mesh8, mesh_4x2):
    batch = {
        "x": np.arange(8 * 2 * 3, dtype=np.float32).reshape(8, 2, 3),
        "y": np.arange(8, dtype=np.int32),
        "t": np.float32(0.5),
    }
    for mesh in (mesh8, mesh_4x2):
        g = par.host_local_to_global(batch, mesh)
        assert g["x"].shape == (8, 2, 3)
        assert g["x"].sharding.spec == P("data", None, None)
        assert g["t"].sharding.is_fully_replicated
        back = par.global_to_host_local(g)
        full = par.fetch(g)
        for k in batch:
            np.testing.assert_array_equal(back[k], batch[k])
            np.testing.assert_array_equal(full[k], batch[k])
            assert isinstance(full[k], np.ndarray)
    with pytest.raises(ValueError, match="pad_batch"):
        par.host_local_to_global({"x": np.zeros((5, 2))}, mesh8)


def test_pad_batch():
    arrays = {"a": np.ones((5, 2), np.float32), "b": np.arange(5)}
    padded, mask = par.pad_batch(arrays, 8)
    assert padded["a"].shape == (8, 2) and padded["b"].shape == (8,)
    assert mask.dtype == bool and mask.tolist() == [True] * 5 + [False] * 3
    assert padded["a"][5:].sum() == 0 and padded["b"].dtype == arrays["b"].dtype
    same, mask = par.pad_batch(arrays, 5)
    assert same["a"].shape == (5, 2) and mask.all()
    empty, mask = par.pad_batch({"a": np.zeros((0, 3))}, 4)
    assert empty["a"].shape == (0, 3) and mask.shape == (0,)
    with pytest.raises(ValueError, match="leading dims differ"):
        par.pad_batch({"a": np.zeros(3), "b": np.zeros(4)}, 2)


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 100])
@pytest.mark.parametrize("count", [1, 3, 4])
def test_process_slice_partitions(n, count):
    slices = [par.process_slice(n, i, count) for i in range(count)]
    covered = [j for s in slices for j in range(n)[s]]
    assert covered == list(range(n))
    sizes = [len(range(n)[s]) for s in slices]
    assert max(sizes) - min(sizes) <= 1 and max(sizes) == -(-n // count)
    assert par.process_slice(n) == slice(0, n)  # single process: everything


def test_shard_map_psum(mesh8):
    x = jax.device_put(np.arange(8, dtype=np.float32), par.batch_sharding(mesh8))

    @jax.jit
    def total(a):
        return jax.shard_map(
            lambda s: jax.lax.psum(s.sum(), "data"), mesh=mesh8, in_specs=P("data"), out_specs=P()
        )(a)

    assert float(total(x)) == 28.0


def test_initialize_distributed_noop(monkeypatch):
    monkeypatch.delenv("JAX_COORDINATOR_ADDRESS", raising=False)
    assert par.initialize_distributed() is False
    assert par.initialize_distributed() is False
    assert not jax.distributed.is_initialized()


@pytest.mark.slow
def test_initialize_distributed_auto_without_cluster():
    # Subprocess: if auto-detection did find a cluster it must not touch this process.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "OMPI_", "PMI"))}
    env.pop("JAX_COORDINATOR_ADDRESS", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    code = "from vl_jax import parallel as p; print(p.initialize_distributed(auto=True))"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "False"


# --------------------------------------------------------------------------- 2 processes

_WORKER = textwrap.dedent(
    """
    import json, sys
    import jax, numpy as np
    from flax import nnx
    from vl_jax import parallel as par

    pid, port = int(sys.argv[1]), sys.argv[2]
    assert par.initialize_distributed(f"127.0.0.1:{port}", num_processes=2, process_id=pid)
    assert par.initialize_distributed()  # idempotent
    mesh = par.create_mesh(data=2, model=2)  # 4 devices, 2 per process
    rows = par.process_slice(6)  # 3 rows each; pad to 4 so each local device gets 2
    local, mask = par.pad_batch({"x": np.arange(6, dtype=np.float32)[rows]}, 4)
    g = par.host_local_to_global({"x": local["x"], "m": mask}, mesh)
    total = jax.jit(lambda b: (b["x"] * b["m"]).sum())(g)
    with nnx.use_eager_sharding(False):
        lin = nnx.Linear(2, 4, rngs=nnx.Rngs(0), kernel_init=nnx.with_partitioning(
            nnx.initializers.ones, (None, "model")))
    st = par.shard_state(nnx.state(lin), mesh)
    print("RESULT", json.dumps({
        "pid": jax.process_index(),
        "total": float(par.fetch(total)),
        "global_shape": list(g["x"].shape),
        "local": par.global_to_host_local(g)["x"].tolist(),
        "full": par.fetch(g)["x"].tolist(),
        "kernel_sum": float(jax.jit(lambda k: k.sum())(st["kernel"].get_value())),
        "describe": par.describe(mesh),
    }), flush=True)
    """
)


@pytest.mark.slow
def test_two_processes():
    outs = run_processes(_WORKER, [], timeout=90)
    res = [json.loads(o.split("RESULT ", 1)[1].splitlines()[0]) for o in outs]
    assert sorted(r["pid"] for r in res) == [0, 1]
    for r in res:
        assert r["total"] == 15.0  # 0+1+...+5, padded rows masked out
        assert r["global_shape"] == [8]
        assert r["full"] == [0, 1, 2, 0, 3, 4, 5, 0]
        assert r["kernel_sum"] == 8.0
        assert "process=" in r["describe"] and "global=4" in r["describe"]
    by_pid = {r["pid"]: r["local"] for r in res}
    assert by_pid == {0: [0, 1, 2, 0], 1: [3, 4, 5, 0]}
