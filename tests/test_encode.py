"""vl_jax.encode end to end: a tiny random CLIP written as a HF checkpoint, a folder of real photos
(scikit-image's bundled data) with broken files mixed in, the CLI in-process, and sharded encoding
(data-parallel, model-parallel, single device) against per-image encoding."""

from __future__ import annotations

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import skimage
from multihost_procs import run_processes

from vl_jax import encode
from vl_jax.data.files import FileSource
from vl_jax.images import load_rgb, walk_image_folder
from vl_jax.models import clip, tiny
from vl_jax.models.tiny import save_clip as write_checkpoint
from vl_jax.preprocess import ClipPreprocess

SKIMAGE_DATA = os.path.join(os.path.dirname(skimage.__file__), "data")

# class -> photos; "" is the root folder (label -1). Mixed formats and modes: RGB/gray/RGBA PNG,
# JPEG, GIF.
_PHOTOS = {
    "animal": ["chelsea.png", "horse.png"],
    "person": ["astronaut.png", "camera.png"],
    "vehicle": ["rocket.jpg", "motorcycle_left.png"],
    "texture": ["brick.png"],
    "empty_class": [],
    "": ["coffee.png", "logo.png", "no_time_for_that_tiny.gif", "coins.png"],
}
N_GOOD = sum(len(v) for v in _PHOTOS.values())  # 11
CLASSES = sorted(c for c in _PHOTOS if c)


def _make_folder(root: str) -> dict[str, str]:
    """Writes the image tree; returns {relative path of every bad file: expected reason part}."""
    for cls, names in _PHOTOS.items():
        os.makedirs(os.path.join(root, cls), exist_ok=True)
        for name in names:
            shutil.copy(os.path.join(SKIMAGE_DATA, name), os.path.join(root, cls, name))
    with open(os.path.join(SKIMAGE_DATA, "rocket.jpg"), "rb") as f:
        jpeg = f.read()
    bad = {
        "animal/empty.jpg": (b"", "empty"),
        "person/notes.png": (b"this is text, not a PNG\n", "not an image"),
        "vehicle/rocket_truncated.jpg": (jpeg[: len(jpeg) // 3], "truncated"),
        "texture/readme.txt": (b"hello\n", "extension"),
        "root_notes.txt": (b"a file directly in the root\n", "extension"),
    }
    for rel, (data, _) in bad.items():
        with open(os.path.join(root, rel), "wb") as f:
            f.write(data)
    with open(os.path.join(root, "animal", ".hidden.png"), "wb") as f:  # ignored silently
        f.write(b"junk")
    return {rel: why for rel, (_, why) in bad.items()}


def _count_files(root: str) -> int:
    return sum(1 for _, _, files in os.walk(root) for name in files if not name.startswith("."))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(checkpoint dir, image dir, bad files {relpath: reason}, model loaded back from disk)."""
    cfg = tiny.clip_config(image_size=32, patch_size=8, width=32, text_width=32,
                           context_length=16, embed_dim=16)  # fmt: skip
    base = tmp_path_factory.mktemp("encode")
    ckpt, images = str(base / "tiny_clip"), str(base / "images")
    write_checkpoint(clip.init(cfg, seed=0), ckpt)
    bad = _make_folder(images)
    return ckpt, images, bad, clip.from_pretrained(ckpt)


def _direct_features(model: clip.CLIP, ckpt: str, paths: list[str]) -> np.ndarray:
    """One image at a time, straight from the file: no folder walking, batching or sharding."""
    preprocess = ClipPreprocess.from_hf_dir(ckpt)
    encode_one = jax.jit(lambda x: model.encode_image(x[None])[0])
    out = []
    for p in paths:
        pixels = preprocess(load_rgb(p))
        assert pixels.shape == (32, 32, 3) and pixels.dtype == np.float32
        out.append(np.asarray(encode_one(jnp.asarray(pixels))))
    return np.stack(out)


@pytest.mark.slow
def test_cli_end_to_end(setup, tmp_path, capsys):
    ckpt, images, bad, model = setup
    out_dir = tmp_path / "out"
    out = str(out_dir / "feats.npz")  # the directory does not exist yet
    argv = ["--model", ckpt, "--images", images, "--out", out, "--batch_size", "5"]
    assert encode.main([*argv, "--no_progress", "--workers", "3"]) == 0
    err = capsys.readouterr().err
    assert f"encoded {N_GOOD} images" in err and "skipped 5 file(s)" in err

    with np.load(out, allow_pickle=False) as z:
        assert sorted(z.files) == ["class_names", "features", "labels", "paths"]
        feats, paths, labels = z["features"], z["paths"].tolist(), z["labels"]
        class_names = z["class_names"].tolist()
    assert feats.shape == (N_GOOD, 16) and feats.dtype == np.float32
    assert np.isfinite(feats).all() and np.abs(feats).max() > 0
    assert labels.shape == (N_GOOD,) and labels.dtype == np.int32
    assert class_names == CLASSES
    assert paths == sorted(paths, key=lambda p: os.path.relpath(p, images).split(os.sep))
    expected = {
        os.path.join(images, cls, name): CLASSES.index(cls) if cls else -1
        for cls, names in _PHOTOS.items()
        for name in names
    }
    assert dict(zip(paths, labels.tolist())) == expected

    # Every bad file is listed once, with a reason; nothing is lost or counted twice.
    with open(f"{out}.skipped.tsv") as f:
        header, *lines = f.read().splitlines()
    assert header == "path\treason"
    skipped = dict(line.split("\t") for line in lines)
    assert len(skipped) == len(lines) == len(bad)
    for rel, why in bad.items():
        reason = skipped[os.path.join(images, rel)]
        assert why in reason, (rel, reason)
    assert len(paths) + len(skipped) == _count_files(images)

    np.testing.assert_allclose(feats, _direct_features(model, ckpt, paths), rtol=0, atol=1e-5)
    assert sorted(os.listdir(out_dir)) == ["feats.npz", "feats.npz.skipped.tsv"]

    # A rerun overwrites cleanly; once nothing is skipped the stale list disappears.
    clean = tmp_path / "clean"
    shutil.copytree(images, clean)
    for rel in bad:
        os.remove(clean / rel)
    os.remove(clean / "animal" / ".hidden.png")
    assert (
        encode.main(["--model", ckpt, "--images", str(clean), "--out", out, "--no_progress"]) == 0
    )
    assert "skipped" not in capsys.readouterr().err
    assert sorted(os.listdir(out_dir)) == ["feats.npz"]
    with np.load(out, allow_pickle=False) as z:
        assert z["features"].shape == (N_GOOD, 16)
        assert all(p.startswith(str(clean)) for p in z["paths"].tolist())
        np.testing.assert_allclose(z["features"], feats, rtol=0, atol=1e-5)


@pytest.mark.parametrize("batch_size", [8, 5])
@pytest.mark.slow
def test_sharded_equals_single_device(setup, tmp_path, mesh8, mesh1, mesh_4x2, batch_size):
    ckpt, images, bad, _ = setup
    results = {
        name: encode.encode_folder(
            ckpt,
            images,
            str(tmp_path / f"{name}.npz"),
            batch_size=batch_size,
            mesh=mesh,
            workers=2,
            progress=False,
        )
        for name, mesh in [("single", mesh1), ("data8", mesh8), ("data4_model2", mesh_4x2)]
    }
    # 11 readable + 3 unreadable listed files: the last batch is padded on every mesh.
    n_listed = N_GOOD + sum(not rel.endswith(".txt") for rel in bad)
    assert n_listed % 8 and n_listed % batch_size
    ref = results["single"]
    assert len(ref.paths) == N_GOOD and ref.features.shape == (N_GOOD, 16)
    for name, r in results.items():
        assert r.paths == ref.paths, name
        np.testing.assert_array_equal(r.labels, ref.labels)
        assert r.class_names == ref.class_names == CLASSES
        assert sorted(r.skipped) == sorted(ref.skipped) and len(r.skipped) == len(bad)
        np.testing.assert_allclose(r.features, ref.features, rtol=0, atol=1e-5, err_msg=name)


def test_missing_images_dir(setup, tmp_path):
    ckpt = setup[0]
    missing = str(tmp_path / "no_such_images")
    with pytest.raises(FileNotFoundError, match="no_such_images"):
        encode.encode_folder(ckpt, missing, str(tmp_path / "f.npz"), progress=False)
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("model", ["/nonexistent/tiny_clip", "no_such_model_dir"])
def test_missing_model(setup, tmp_path, model):
    images = setup[1]
    with pytest.raises(FileNotFoundError, match=model):
        encode.main(["--model", model, "--images", images, "--out", str(tmp_path / "f.npz")])
    assert not os.listdir(tmp_path)


_WORKER = """
import sys
from vl_jax import encode

pid, port, ckpt, images, out_dir = sys.argv[1:]
common = ["--model", ckpt, "--images", images, "--no_progress", "--workers", "2",
          "--coordinator_address", f"localhost:{port}", "--num_processes", "2", "--process_id", pid]
# batch 6: 3 rows per process, split over its 2 devices -> 4; 14 listed files -> 2 global batches
# of 8, the last one 6 rows (process 1 gets 2 real rows). batch 32: process 1 gets no real row.
for bs in ("6", "32"):
    encode.main([*common, "--batch_size", bs, "--out", f"{out_dir}/b{bs}.npz"])
print("DONE", pid, flush=True)
"""


@pytest.mark.slow
def test_two_processes(setup, tmp_path, mesh8):
    """Multi-host: each process decodes its share of every batch, process 0 writes the file."""
    ckpt, images, bad, _ = setup
    ref = encode.encode_folder(ckpt, images, str(tmp_path / "ref.npz"), mesh=mesh8, progress=False)
    out_dir = tmp_path / "mp"
    out_dir.mkdir()
    outs = run_processes(_WORKER, [ckpt, images, out_dir])
    assert all("DONE" in out for out in outs), outs
    assert sorted(os.listdir(out_dir)) == [
        "b32.npz",
        "b32.npz.skipped.tsv",
        "b6.npz",
        "b6.npz.skipped.tsv",
    ]
    for name in ("b6.npz", "b32.npz"):
        with np.load(out_dir / name, allow_pickle=False) as z:
            assert z["paths"].tolist() == ref.paths, name
            np.testing.assert_array_equal(z["labels"], ref.labels)
            np.testing.assert_allclose(z["features"], ref.features, rtol=0, atol=1e-5)
        with open(out_dir / f"{name}.skipped.tsv") as f:
            skipped = [line.split("\t")[0] for line in f.read().splitlines()[1:]]
        assert sorted(skipped) == sorted(os.path.join(images, rel) for rel in bad)


def test_encoder_compiles_once(setup, mesh8):
    """Static shapes: every batch, the padded last one included, reuses one executable."""
    ckpt, images, _, model = setup
    encoder = encode.make_image_encoder(model, mesh8)
    listing = walk_image_folder(images)
    source = FileSource(listing.paths, listing.labels)
    preprocess = ClipPreprocess.from_hf_dir(ckpt)
    feats, rows, ids, labels, skipped = encode.encode_source(
        encoder, source, preprocess, mesh8, batch_size=8, workers=2, progress=False
    )
    assert len(feats) == N_GOOD and len(skipped) == len(listing) - N_GOOD > 0
    assert ids == [listing.paths[r] for r in rows] and list(labels) == list(listing.labels[rows])
    assert encoder.func._cache_size() == 1
