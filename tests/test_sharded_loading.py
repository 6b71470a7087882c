"""Parameters read straight into their shardings, and hot loops free of implicit transfers.

Transfer probe: every host-to-device copy JAX makes (``jax.device_put``, ``jnp.asarray``,
``jax.make_array_from_callback``) ends in ``pxla.batched_device_put`` with one host buffer per
target device; the probe records their shapes. Loaded "straight into its sharding" then means:
every transfer goes to all devices of the mesh at once, each device receives exactly the shard
it keeps, and the bytes moved equal the bytes the sharded model holds. A loader that first
made a full copy on one device (or a replicated copy of a split parameter, then resharded it)
fails all three; ``test_probe_catches_a_full_copy`` shows that it does.

Transfer guard: ``jax.transfer_guard("disallow")`` around the hot loops (image encoding, an
MCLA training epoch, the decode loop of each model family) turns any implicit host <-> device
transfer into an error; every transfer there is an explicit ``device_put`` / ``device_get``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
import transformers
from flax import nnx
from jax._src.interpreters import pxla

from vl_jax import parallel
from vl_jax.checkpoints import mapping
from vl_jax.models import clip, instructblip, llava, llm, tiny
from vl_jax.models.loaded import ClipCheckpoint

# Tiny checkpoints whose split dims (heads, MLP widths) divide by model = 2.
_LLAMA = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)  # fmt: skip


@pytest.fixture
def transfers(monkeypatch):
    """The host-to-device transfers made while the test runs: [(global shape, per-device
    buffer shapes, itemsize)]."""
    log = []
    real = pxla.batched_device_put

    def probe(aval, sharding, xs, devices, *args, **kwargs):
        log.append((tuple(aval.shape), [np.shape(x) for x in xs], aval.dtype.itemsize))
        return real(aval, sharding, xs, devices, *args, **kwargs)

    monkeypatch.setattr(pxla, "batched_device_put", probe)
    return log


def check_loaded_in_place(model, log, mesh):
    """Asserts `model`'s parameters went host -> their shards directly (see module doc), and
    that the `model` axis really splits some of them."""
    arrays = [a for a in jax.tree.leaves(nnx.state(model)) if isinstance(a, jax.Array)]
    assert arrays and log
    held = sum(s.data.nbytes for a in arrays for s in a.addressable_shards)
    moved = sum(int(np.prod(s)) * size for _, shapes, size in log for s in shapes)
    assert moved == held, f"moved {moved} bytes host -> device for {held} held"
    for shape, shapes, _ in log:
        assert len(shapes) == mesh.size, f"a {shape} transfer to {len(shapes)} device(s)"
    for a in arrays:
        want = a.sharding.shard_shape(a.shape)
        assert all(s.data.shape == want for s in a.addressable_shards)
    assert any(a.sharding.shard_shape(a.shape) != a.shape for a in arrays)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    torch.manual_seed(0)
    lm = transformers.LlamaForCausalLM(transformers.LlamaConfig(**_LLAMA))
    lm.save_pretrained(root / "llm")
    return {
        # numpy-drawn weights: tiny.write_clip's clip.init compiles ~40 programs
        "clip": tiny.save_clip(tiny.random_clip(tiny.clip_config()), str(root / "clip")),
        "llava": tiny.write_llava(str(root / "llava")),
        "instructblip": tiny.write_instructblip(str(root / "instructblip")),
        "llm": str(root / "llm"),
    }


MODULES = {"clip": clip, "llava": llava, "instructblip": instructblip, "llm": llm}


@pytest.mark.parametrize("family", sorted(MODULES))
def test_from_pretrained_places_each_parameter_in_its_shards(family, checkpoints, transfers,
                                                             mesh_4x2):  # fmt: skip
    shardings = lambda s: parallel.param_shardings(s, mesh_4x2)
    model = MODULES[family].from_pretrained(
        checkpoints[family], dtype=jnp.bfloat16, shardings=shardings
    )
    check_loaded_in_place(model, transfers, mesh_4x2)


def test_driver_loaders_place_in_shards(checkpoints, transfers, mesh_4x2, tmp_path):
    """What the drivers call: the clustering run's ClipCheckpoint and VDC's load_mllm."""
    from vdc_jax.models import load_mllm

    model = ClipCheckpoint(checkpoints["clip"], mesh=mesh_4x2, dtype="bfloat16").model
    check_loaded_in_place(model, transfers, mesh_4x2)
    for name in ("tiny-random", "tiny-instructblip"):
        cfg = ml_collections.ConfigDict(dict(name=name, seed=0, dtype="bfloat16"))
        tiny_written = load_mllm(cfg, str(tmp_path), mesh_4x2)  # writes, then loads
        transfers.clear()
        mllm = load_mllm(cfg, str(tmp_path), mesh_4x2)
        assert type(mllm.model) is type(tiny_written.model)
        check_loaded_in_place(mllm.model, transfers, mesh_4x2)


def test_probe_catches_a_full_copy(checkpoints, transfers, mesh_4x2, monkeypatch):
    """The naive placement (whole array onto the default device, then resharded) fails it."""
    naive = lambda value, sharding, dtype: jax.device_put(jnp.asarray(value, dtype), sharding)
    monkeypatch.setattr(mapping, "place", naive)
    model = llm.from_pretrained(
        checkpoints["llm"], shardings=lambda s: parallel.param_shardings(s, mesh_4x2)
    )
    with pytest.raises(AssertionError, match=r"moved|device"):
        check_loaded_in_place(model, transfers, mesh_4x2)


# ---- transfer guard on the hot loops -----------------------------------------------------------


class _Images:
    """A RandomAccessSource of random uint8 images."""

    name, split, class_names = "random", None, ["a", "b"]

    def __init__(self, n: int, size: int):
        self._x = np.random.RandomState(0).randint(0, 256, (n, size, size, 3), dtype=np.uint8)

    def __len__(self):
        return len(self._x)

    def __getitem__(self, i):
        return {"image": self._x[i], "label": int(i % 2), "id": f"img{i}"}

    def labels(self):
        return np.arange(len(self)) % 2

    def ids(self):
        return [f"img{i}" for i in range(len(self))]


def test_encoding_loop_has_no_implicit_transfers(checkpoints, mesh8):
    from vl_jax import encode

    ck = ClipCheckpoint(checkpoints["clip"], mesh=mesh8)
    encoder = encode.make_image_encoder(ck.model, mesh8)
    source = _Images(20, 64)
    run = lambda: encode.encode_source(
        encoder, source, ck.preprocess, mesh8, batch_size=8, workers=1, progress=False
    )
    want = run()[0]  # compiles
    with jax.transfer_guard("disallow"):
        got = run()[0]
    np.testing.assert_array_equal(got, want)


@pytest.mark.slow
def test_training_epoch_has_no_implicit_transfers(mesh8):
    from configs.mcla.synthetic import get_config
    from mcla_jax import train
    from vl_jax.cluster import knn

    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 16)).astype(np.float32)
    t = (x + 0.1 * rng.normal(size=x.shape)).astype(np.float32)
    idx, _ = knn(x, 5, mesh=mesh8)
    cfg = get_config()
    cfg.warmup_epochs = 1  # the second epoch switches the target-reading terms on
    trainer = train.Trainer(train.prepare(x), train.prepare(t), idx, cfg, mesh8)
    trainer.epoch()  # compiles
    with jax.transfer_guard("disallow"):
        rec = trainer.epoch()
    assert rec["epoch"] == 1 and np.isfinite(rec["loss"])


@pytest.mark.parametrize(
    "family", ["llm", *(pytest.param(f, marks=pytest.mark.slow) for f in ("llava", "instructblip"))]
)
def test_decode_loop_has_no_implicit_transfers(family, checkpoints, mesh_4x2):
    from vl_jax.generate import Generator

    model = MODULES[family].from_pretrained(
        checkpoints[family], dtype=jnp.bfloat16,
        shardings=lambda s: parallel.param_shardings(s, mesh_4x2),
    )  # fmt: skip
    gen = Generator(model, mesh_4x2)
    rng = np.random.RandomState(0)
    kw = dict(max_new_tokens=5, eos_token_id=2)
    if family == "llm":
        args = (rng.randint(3, 60, (6, 7)).astype(np.int32),)
    else:
        cfg = model.config
        n = tiny_image_tokens(family, cfg)
        ids = np.concatenate([np.full((6, n), cfg.image_token_id), rng.randint(4, 40, (6, 5))], 1)
        size = 30 if family == "llava" else 32
        kw["pixel_values"] = rng.randn(6, size, size, 3).astype(np.float32)
        if family == "instructblip":
            kw["qformer_input_ids"] = rng.randint(5, 30, (6, 4)).astype(np.int32)
        args = (ids.astype(np.int32),)
    want = gen(*args, **kw)  # compiles
    with jax.transfer_guard("disallow"):
        got = gen(*args, **kw)
    np.testing.assert_array_equal(got, want)


def tiny_image_tokens(family: str, cfg) -> int:
    """Image placeholder tokens per prompt of the tiny checkpoints."""
    if family == "llava":
        return (30 // 6) ** 2  # penultimate layer, class token dropped
    return cfg.num_query_tokens
