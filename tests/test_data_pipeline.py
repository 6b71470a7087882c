"""vl_jax.data.pipeline on conftest's 8 fake CPU devices: eval padding covers every example once,
a simulated 2-process split, train shuffling/drop_remainder/determinism, Orbax resume, bad
examples, sharding, the transform, chosen eval steps (resume), batch rounding; and
`vl_jax.encode --data` through a fake resolver."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import skimage
from jax.sharding import PartitionSpec as P
from PIL import Image

from vl_jax.data import pipeline
from vl_jax.data.files import FileSource
from vl_jax.data.pipeline import make_pipeline, restore_state, save_state
from vl_jax.images import ImageError, load_rgb
from vl_jax.preprocess import ClipPreprocess

PRE = ClipPreprocess(size=16, crop_size=(16, 16))
SKIMAGE_DATA = os.path.join(os.path.dirname(skimage.__file__), "data")


def _arrays(n: int) -> list[dict]:
    """n small distinct RGB examples; the label is the index, so rows can be checked."""
    rng = np.random.default_rng(0)
    return [
        {"image": rng.integers(0, 256, (20 + i % 7, 24, 3), dtype=np.uint8), "label": i}
        for i in range(n)
    ]


def _run(it) -> list[dict]:
    """All batches as numpy dicts."""
    with it:
        return [{k: np.asarray(v) for k, v in b.items()} for b in it]


def test_eval_pads_last_batch_and_sees_every_example_once(mesh8):
    n, batch = 45, 16  # 45 = 2 * 16 + 13: the last batch holds 3 padding rows
    batches = _run(
        make_pipeline(_arrays(n), batch_size=batch, mesh=mesh8, transform=PRE, train=False)
    )
    assert len(batches) == 3
    index = np.concatenate([b["index"] for b in batches])
    mask = np.concatenate([b["mask"] for b in batches])
    assert mask.sum() == n and sorted(index[mask]) == list(range(n))
    assert (index[~mask] == -1).all() and not batches[-1]["image"][-3:].any()
    labels = np.concatenate([b["label"] for b in batches])
    np.testing.assert_array_equal(labels[mask], index[mask])  # rows carry their own label


def test_outputs_are_global_arrays_sharded_over_data(mesh8, mesh_4x2):
    for mesh in (mesh8, mesh_4x2):
        with make_pipeline(
            _arrays(20), batch_size=8, mesh=mesh, transform=PRE, train=True, num_epochs=1
        ) as it:
            b = next(it)
        assert b["image"].shape == (8, 16, 16, 3) and b["image"].dtype == np.float32
        assert b["image"].sharding.spec == P("data", None, None, None)
        assert b["image"].sharding.mesh.shape == mesh.shape
        for key, dtype in (("label", np.int32), ("mask", np.bool_), ("index", np.int32)):
            assert b[key].shape == (8,) and b[key].dtype == dtype
            assert b[key].sharding.spec == P("data")
        assert len(b["image"].addressable_shards) == 8


@pytest.mark.parametrize("train", [False, True])
def test_two_processes_split_every_example_exactly_once(mesh8, train):
    n, batch = 70, 32  # local batch 16 per simulated process, split over 8 data shards
    per_process = [
        _run(
            make_pipeline(
                _arrays(n),
                batch_size=batch,
                mesh=mesh8,
                transform=PRE,
                train=train,
                seed=3,
                num_epochs=1,
                process_index=p,
                process_count=2,
            )
        )
        for p in range(2)
    ]
    steps = [len(b) for b in per_process]
    assert steps[0] == steps[1] == (n // batch if train else -(-n // batch))
    seen = [np.concatenate([b["index"][b["mask"]] for b in bs]) for bs in per_process]
    assert not set(seen[0]) & set(seen[1])
    both = np.concatenate(seen)
    assert len(both) == len(set(both)) == (steps[0] * batch if train else n)
    if not train:  # global batch k = process 0's rows, then process 1's, in dataset order
        assert sorted(both) == list(range(n))
        assert list(per_process[1][0]["index"]) == list(range(16, 32))


def _train_order(mesh, seed: int, epochs: int, workers: int = 2, n: int = 45) -> np.ndarray:
    it = make_pipeline(
        _arrays(n),
        batch_size=16,
        mesh=mesh,
        transform=PRE,
        train=True,
        seed=seed,
        num_epochs=epochs,
        workers=workers,
    )
    batches = _run(it)
    assert all(b["mask"].all() for b in batches)  # full batches only: drop_remainder
    return np.stack([b["index"] for b in batches])  # [steps, B]


def test_train_shuffles_per_epoch_deterministically(mesh8):
    order = _train_order(mesh8, seed=0, epochs=2)
    assert order.shape == (4, 16)  # 45 // 16 = 2 steps per epoch, 13 dropped each epoch
    for epoch in order.reshape(2, 32):
        assert len(set(epoch)) == 32  # no repeats within an epoch
    assert not np.array_equal(order[:2], order[2:])  # re-shuffled each epoch
    np.testing.assert_array_equal(order, _train_order(mesh8, seed=0, epochs=2, workers=1))
    assert not np.array_equal(order, _train_order(mesh8, seed=1, epochs=2))
    # seed 1's first epoch is not seed 0's second one (grain's own per-epoch seed is seed+epoch)
    assert not np.array_equal(order[2:], _train_order(mesh8, seed=1, epochs=1))


def test_resume_from_orbax_checkpoint_continues_exactly(mesh8, tmp_path):
    source = _arrays(40)
    source[7] = {"image": b"not an image", "id": "bad-7"}
    make = lambda: make_pipeline(
        source, batch_size=8, mesh=mesh8, transform=PRE, train=True, seed=5, num_epochs=2
    )
    full = _run(make())
    assert len(full) == 10
    k = 4
    with make() as it:
        for _ in range(k):
            next(it)
        save_state(tmp_path / "data", step=k, it=it)
        seen_bad = list(it.skipped)
    with make() as fresh:
        assert restore_state(tmp_path / "data", fresh) == k
        assert fresh.step == k and fresh.skipped == seen_bad  # the skipped list is restored too
        rest = [{key: np.asarray(v) for key, v in b.items()} for b in fresh]
    assert len(rest) == len(full) - k
    for got, want in zip(rest, full[k:]):
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
    with pytest.raises(FileNotFoundError):
        restore_state(tmp_path / "nothing", make())


class _FlakySource:
    """A source whose record 3 cannot be read at all, like a corrupt array_record entry."""

    def __init__(self, examples):
        self.examples = examples

    def __len__(self):
        return len(self.examples)

    def __getitem__(self, i):
        if i == 3:
            raise RuntimeError("checksum mismatch")
        if i == 4:  # a source that decodes in __getitem__ (vl_jax.data.get_source)
            raise ImageError("train/4.jpg", "truncated or corrupt: OSError: broken data stream")
        return self.examples[i]


def test_bad_examples_are_recorded_not_fatal(mesh8, tmp_path):
    with open(os.path.join(SKIMAGE_DATA, "rocket.jpg"), "rb") as f:
        jpeg = f.read()
    examples = _arrays(12)
    examples[1] = {"image": jpeg[: len(jpeg) // 3], "id": "truncated.jpg", "label": 1}
    examples[5] = {"image": str(tmp_path / "missing.png"), "label": 5}
    examples[8] = {"image": np.zeros((4, 4, 3), np.float32), "id": "float-pixels"}
    examples[10] = {"image": b"", "id": "empty"}
    it = make_pipeline(_FlakySource(examples), batch_size=8, mesh=mesh8, transform=PRE, train=False)
    batches = _run(it)
    mask = np.concatenate([b["mask"] for b in batches])
    index = np.concatenate([b["index"] for b in batches])
    bad = {1, 3, 4, 5, 8, 10}
    assert set(index[~mask & (index >= 0)]) == bad and mask.sum() == 12 - len(bad)
    skipped = {s.index: s for s in it.skipped}
    assert set(skipped) == bad
    assert skipped[1].id == "truncated.jpg" and "truncated" in skipped[1].reason
    assert skipped[3].id == "3" and "checksum mismatch" in skipped[3].reason
    assert skipped[4].id == "train/4.jpg" and "corrupt" in skipped[4].reason
    assert (
        skipped[5].id == str(tmp_path / "missing.png") and "FileNotFoundError" in skipped[5].reason
    )
    assert "float32" in skipped[8].reason and "empty" in skipped[10].reason
    tsv = tmp_path / "skipped.tsv"
    pipeline.write_skipped(tsv, it.skipped)
    lines = tsv.read_text().splitlines()
    assert lines[0] == "id\treason" and len(lines) == 1 + len(bad)
    assert all(len(line.split("\t")) == 2 for line in lines)


def test_transform_is_clip_preprocess_for_arrays_bytes_and_paths(mesh8, tmp_path):
    names = ["chelsea.png", "coffee.png", "camera.png", "horse.png"]  # RGB, RGB, gray, RGBA
    paths = [os.path.join(SKIMAGE_DATA, name) for name in names]
    pre = ClipPreprocess(size=24, crop_size=(24, 24))
    want = np.stack([pre(load_rgb(p)) for p in paths])
    with open(paths[0], "rb") as f:
        png = f.read()
    gray = np.asarray(Image.open(paths[2]))  # [H, W] uint8, as a TFDS source may give
    buf = io.BytesIO()
    Image.open(paths[3]).save(buf, format="PNG")
    variants = [
        FileSource(paths),
        [{"image": png}, {"image": load_rgb(paths[1])}, {"image": gray}, {"image": buf.getvalue()}],
    ]
    for source in variants:
        (b,) = _run(make_pipeline(source, batch_size=8, mesh=mesh8, transform=pre, train=False))
        assert b["mask"].sum() == 4
        np.testing.assert_array_equal(b["image"][:4], want)


@pytest.mark.slow
def test_worker_processes_give_the_same_batches(mesh8):
    source = _arrays(16)
    kw = dict(batch_size=8, mesh=mesh8, transform=PRE, train=True, seed=2, num_epochs=1)
    threads = _run(make_pipeline(source, **kw))
    procs = _run(make_pipeline(source, processes=1, **kw))
    assert len(procs) == len(threads) == 2
    for got, want in zip(procs, threads):
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])


def test_argument_errors(mesh8):
    with pytest.raises(ValueError, match="data shards"):
        make_pipeline(_arrays(10), batch_size=4, mesh=mesh8, transform=PRE, train=False)
    with pytest.raises(ValueError, match="no full batch"):
        make_pipeline(_arrays(10), batch_size=16, mesh=mesh8, transform=PRE, train=True)
    with pytest.raises(ValueError, match="exactly once"):
        make_pipeline(
            _arrays(10), batch_size=8, mesh=mesh8, transform=PRE, train=False, num_epochs=2
        )


class _Counting(list):
    """A list source that records which examples were read."""

    def __init__(self, examples):
        super().__init__(examples)
        self.read = []

    def __getitem__(self, i):
        self.read.append(int(i))
        return super().__getitem__(i)


def test_eval_steps_run_only_the_given_batches(mesh8):
    """steps=: the chosen batches, in the order given, each equal to the full run's batch at
    that step; the other steps' examples are never read (a resumed consumer)."""
    n, batch = 45, 8  # 6 steps, the last one holds 5 examples and 3 padding rows
    full = _run(make_pipeline(_arrays(n), batch_size=batch, mesh=mesh8, transform=PRE, train=False))
    assert len(full) == 6
    source = _Counting(_arrays(n))
    it = make_pipeline(source, batch_size=batch, mesh=mesh8, transform=PRE, train=False,
                       steps=[5, 1, 3])  # fmt: skip
    assert it.num_steps == 3 and list(it.steps) == [5, 1, 3]
    got = _run(it)
    assert len(got) == 3
    for b, k in zip(got, [5, 1, 3]):
        for key in full[k]:
            np.testing.assert_array_equal(b[key], full[k][key])
    assert sorted(source.read) == [*range(8, 16), *range(24, 32), *range(40, 45)]
    # Simulated 2 processes: each reads only its own rows of the chosen step.
    for p in range(2):
        source = _Counting(_arrays(n))
        kw = dict(batch_size=16, mesh=mesh8, transform=PRE, train=False, process_count=2)
        _run(make_pipeline(source, **kw, process_index=p, steps=[1]))
        assert sorted(source.read) == list(range(16 + 8 * p, 24 + 8 * p))
    assert _run(make_pipeline(_arrays(n), batch_size=batch, mesh=mesh8, transform=PRE,
                              train=False, steps=[])) == []  # fmt: skip
    it = make_pipeline(_arrays(n), batch_size=batch, mesh=mesh8, transform=PRE, train=False)
    assert it.num_steps == 6 and list(it.steps) == list(range(6))
    with pytest.raises(ValueError, match=r"steps \[6\] not in \[0, 6\)"):
        make_pipeline(_arrays(n), batch_size=batch, mesh=mesh8, transform=PRE, train=False,
                      steps=[0, 6])  # fmt: skip
    with pytest.raises(ValueError, match="restore_state"):
        make_pipeline(_arrays(n), batch_size=batch, mesh=mesh8, transform=PRE, train=True,
                      steps=[0])  # fmt: skip


def test_round_batch_gives_a_batch_make_pipeline_accepts(mesh8, mesh_4x2, mesh1):
    assert pipeline.round_batch(11, mesh1) == 11
    assert pipeline.round_batch(11, mesh_4x2) == 12  # 4 data shards
    assert pipeline.round_batch(11, mesh8) == pipeline.round_batch(16, mesh8) == 16
    # 2 (simulated) processes, each with 4 local shards: 6 per process -> 8 -> 16 in all.
    assert pipeline.round_batch(11, mesh_4x2, process_count=2) == 16
    for mesh in (mesh1, mesh_4x2, mesh8):
        for size in range(1, 20):
            b = pipeline.round_batch(size, mesh)
            assert b >= size and pipeline.round_batch(b, mesh) == b
            make_pipeline(_arrays(3), batch_size=b, mesh=mesh, transform=PRE, train=False).close()
    with pytest.raises(ValueError):
        pipeline.round_batch(0, mesh8)
    assert pipeline.gather_strings(["a", "bc"]) == ["a", "bc"]  # one process: as given


def test_encode_cli_with_data_through_the_resolver(monkeypatch, tmp_path, capsys):
    import vl_jax.data
    from vl_jax import encode
    from vl_jax.models import clip
    from vl_jax.models.clip_config import CLIPConfig, TextConfig, VisionConfig
    from vl_jax.models.tiny import save_clip as write_checkpoint
    from vl_jax.models.transformer import EncoderConfig

    enc = EncoderConfig(32, 2, 4, 128, act="quick_gelu")
    cfg = CLIPConfig(
        vision=VisionConfig(enc, image_size=32, patch_size=8),
        text=TextConfig(enc, context_length=16),
        embed_dim=16,
    )
    ckpt = str(tmp_path / "tiny_clip")
    write_checkpoint(clip.init(cfg, seed=0), ckpt)
    names = ["chelsea.png", "coffee.png", "rocket.jpg", "camera.png", "astronaut.png"]
    folder = tmp_path / "images" / "all"
    folder.mkdir(parents=True)
    for name in names:
        (folder / name).write_bytes(open(os.path.join(SKIMAGE_DATA, name), "rb").read())
    examples = [
        {"image": (folder / n).read_bytes(), "label": i % 2, "id": f"train/{n}"}
        for i, n in enumerate(names)
    ]
    examples.insert(2, {"image": b"GIF89a broken", "label": 0, "id": "train/broken.gif"})

    class FakeSource(list):
        class_names = ("cat", "not cat")

    calls = []

    def fake_get_source(name, split, data_dir=None, manual_dir=None):
        calls.append((name, split, data_dir, manual_dir))
        return FakeSource(examples)

    monkeypatch.setattr(vl_jax.data, "get_source", fake_get_source, raising=False)
    out = str(tmp_path / "out" / "feats.npz")
    argv = ["--model", ckpt, "--out", out, "--batch_size", "5", "--no_progress"]
    assert encode.main([*argv, "--data", "fake_ds:test", "--data_dir", "/dd"]) == 0
    assert calls == [("fake_ds", "test", "/dd", None)]
    assert "encoded 5 images" in capsys.readouterr().err
    with np.load(out, allow_pickle=False) as z:
        got = {k: z[k] for k in z.files}
    assert got["paths"].tolist() == [f"train/{n}" for n in names]
    assert got["labels"].tolist() == [i % 2 for i in range(5)] and got["labels"].dtype == np.int32
    assert got["class_names"].tolist() == ["cat", "not cat"]
    lines = open(f"{out}.skipped.tsv").read().splitlines()
    assert len(lines) == 2 and lines[1].startswith("train/broken.gif\t")

    folder_out = str(tmp_path / "folder.npz")
    encode.main([*argv[:2], "--out", folder_out, "--images", str(folder.parent), "--no_progress"])
    with np.load(folder_out, allow_pickle=False) as z:
        by_name = dict(zip([os.path.basename(p) for p in z["paths"]], z["features"]))
    want = np.stack([by_name[n] for n in names])
    np.testing.assert_allclose(got["features"], want, atol=1e-5)


def test_input_pipeline_benchmark_tiny():
    from benchmarks import common, input_pipeline, run

    assert run.load()["input_pipeline"] is input_pipeline.input_pipeline
    (fig,) = input_pipeline.input_pipeline(
        True, count=16, batch=8, iters=1, image_size=32, max_attempts=1
    )
    assert tuple(fig) == common.FIELDS and fig["metric"] == "images_per_second"
    assert fig["ours"] > 0 and fig["baseline"] > 0 and fig["higher_is_better"] is True
    assert fig["params"]["files"] == 16 and fig["params"]["batch"] == 8
