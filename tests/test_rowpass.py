"""The blocked per-epoch pass (mcla_jax.rowpass) equals the one-shot computation in numpy."""

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from mcla_jax.methods import MCLAModel
from mcla_jax.rowpass import Blocks, epoch_pass, mean_rows
from vl_jax.parallel import DATA, create_mesh, replicated

N, E, K, M = 203, 16, 5, 7


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    u = _unit(rng.normal(size=(N, E))).astype(np.float32)
    t = _unit(rng.normal(size=(N, E))).astype(np.float32)
    u[50] = u[10]  # two identical rows: equal logits, the tie goes to the lower row
    t[50] = t[10]
    model = MCLAModel(E, K, rngs=nnx.Rngs(1))
    li = u @ np.asarray(model.image_head.kernel.value) + np.asarray(model.image_head.bias.value)
    lt = t @ np.asarray(model.text_head.kernel.value) + np.asarray(model.text_head.bias.value)
    want = dict(
        assign=li.argmax(1),
        top=np.stack([np.argsort(-li[:, k], kind="stable")[:M] for k in range(K)]),
        proto_img=_unit(_softmax(li).T @ u),
        proto_txt=_unit(_softmax(lt).T @ t),
    )
    return model, u, t, want


def _pass(model, u, t, blocks, mesh=None):
    feats = dict(
        u=np.pad(u, ((0, blocks.rows - len(u)), (0, 0))),
        t=np.pad(t, ((0, blocks.rows - len(t)), (0, 0))),
    )
    if mesh is not None:
        feats = jax.device_put(feats, replicated(mesh))
    graphdef, params = nnx.split(model)

    @jax.jit
    def run(params, feats):
        out = epoch_pass(
            nnx.merge(graphdef, params), feats["u"], feats["t"], blocks, K, m=M, prototypes=True
        )
        out["centres"] = mean_rows(feats["t"], out["top"], chunk=2)
        return out

    return jax.device_get(run(params, feats))


@pytest.mark.parametrize("max_rows", [1000, 64, 50, 7])  # 1 block (padded); 4 overlapping; 29
def test_blocked_pass_equals_one_shot(data, max_rows):
    model, u, t, want = data
    blocks = Blocks.plan(N, max_rows, multiple=2)
    assert blocks.count * blocks.size >= N and blocks.size % 2 == 0
    got = _pass(model, u, t, blocks)
    np.testing.assert_array_equal(got["assign"], want["assign"])
    np.testing.assert_array_equal(got["top"], want["top"])
    for name in ("proto_img", "proto_txt"):
        np.testing.assert_allclose(got[name], want[name], atol=1e-5)
    np.testing.assert_allclose(got["centres"], _unit(t[want["top"]].mean(1)), atol=1e-5)


def test_blocked_pass_sharded_over_eight_devices(data):
    model, u, t, want = data
    mesh = create_mesh()
    assert mesh.shape[DATA] == 8
    blocks = Blocks.plan(N, 64, mesh.shape[DATA], NamedSharding(mesh, P(DATA, None)))
    got = _pass(model, u, t, blocks, mesh)
    np.testing.assert_array_equal(got["assign"], want["assign"])
    np.testing.assert_array_equal(got["top"], want["top"])
    np.testing.assert_allclose(got["proto_img"], want["proto_img"], atol=1e-5)


def test_plan_rejects_nonsense():
    with pytest.raises(ValueError, match="bad block plan"):
        Blocks.plan(0, 16)
    b = Blocks.plan(10, 16, multiple=8)  # smaller than one block: padded to 16 rows
    assert (b.count, b.size, b.rows) == (1, 16, 16)
