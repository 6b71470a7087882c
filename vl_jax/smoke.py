"""Smoke run of the whole encoding path, offline, in about a minute on a laptop CPU.

It is a SMOKE RUN, not an experiment: the CLIP model is built in place with random weights, so its
features and zero-shot guesses carry no meaning. What it does exercise for real: writing a Hugging
Face-format CLIP checkpoint (config.json, model.safetensors, tokenizer, preprocessor config),
loading it back through `clip.from_pretrained` with full key/shape verification, decoding the real
photos that scikit-image ships (JPEG, PNG, GIF, TIFF; RGB, grayscale, RGBA, bilevel) plus a
deliberately corrupt file, CLIP preprocessing, sharded batched encoding, the text tower through the
real CLIP tokenizer, and the atomic output files.
"""

from __future__ import annotations

import json
import os
import shutil
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vl_jax import parallel
from vl_jax.encode import encode_folder
from vl_jax.fileio import atomic_open
from vl_jax.models import clip, tiny
from vl_jax.models.clip_tokenizer import load_tokenizer, tokenize

# scikit-image's bundled photos, grouped into classes for the folder layout; the rest go in the
# root folder (label -1).
_CLASSES = {
    "animal": ["chelsea.png"],
    "person": ["astronaut.png", "camera.png"],
    "vehicle": ["rocket.jpg", "motorcycle_left.png"],
    "food": ["coffee.png"],
    "texture": ["brick.png", "grass.png", "gravel.png"],
    "microscopy": ["ihc.png", "cell.png", "microaneurysms.png", "retina.jpg"],
}
_UNLABELLED = [
    "hubble_deep_field.jpg",
    "logo.png",
    "horse.png",
    "no_time_for_that_tiny.gif",
    "multipage_rgb.tif",
    "coins.png",
    "page.png",
    "text.png",
]


def make_image_folder(root: str) -> int:
    """Copies the photos scikit-image ships into `root/<class>/...`, plus a truncated JPEG and a
    text file that must be skipped. Returns the number of files written."""
    import skimage

    src = os.path.join(os.path.dirname(skimage.__file__), "data")
    n = 0
    for cls, names in [*_CLASSES.items(), ("", _UNLABELLED)]:
        os.makedirs(os.path.join(root, cls), exist_ok=True)
        for name in names:
            if os.path.exists(os.path.join(src, name)):
                shutil.copy(os.path.join(src, name), os.path.join(root, cls, name))
                n += 1
    with open(os.path.join(src, "rocket.jpg"), "rb") as f:
        data = f.read()
    with open(os.path.join(root, "vehicle", "rocket_truncated.jpg"), "wb") as f:
        f.write(data[: len(data) // 3])
    with open(os.path.join(root, "README.txt"), "w") as f:
        f.write("Photos from scikit-image's bundled data (see its license).\n")
    return n + 2


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Builds the tiny checkpoint and image folder in `workdir`, encodes, writes summary.json."""
    print(
        "SMOKE RUN: a tiny CLIP with RANDOM weights; the numbers below test the pipeline, "
        "they mean nothing about images.",
        file=sys.stderr,
    )
    os.makedirs(workdir, exist_ok=True)
    mesh = parallel.mesh_from_config(config.mesh)
    print(parallel.describe(mesh), file=sys.stderr)

    ckpt = os.path.join(workdir, "tiny_clip")
    shutil.rmtree(ckpt, ignore_errors=True)  # built anew: the config's sizes may have changed
    tiny.write_clip(ckpt, seed=config.seed, **config.model.to_dict())

    images = os.path.join(workdir, "images")
    shutil.rmtree(images, ignore_errors=True)
    n_files = make_image_folder(images)
    out = os.path.join(workdir, "features.npz")
    r = encode_folder(
        ckpt,
        images,
        out,
        batch_size=config.encode.batch_size,
        dtype=config.encode.dtype,
        mesh=mesh,
        progress=False,
    )

    # Zero-shot over the class names through the real tokenizer and text tower.
    loaded = clip.from_pretrained(ckpt, dtype=jnp.dtype(config.encode.dtype))
    tok = load_tokenizer(ckpt)
    prompts = [config.prompt.format(c) for c in r.class_names]
    ids, mask = tokenize(tok, prompts, loaded.config.text.context_length)
    text = np.asarray(jax.jit(lambda i, m: loaded.encode_text(i, m))(ids, mask))
    img = r.features / np.linalg.norm(r.features, axis=1, keepdims=True)
    text = text / np.linalg.norm(text, axis=1, keepdims=True)
    pred = np.argmax(img @ text.T, axis=1)
    labelled = r.labels >= 0
    summary = {
        "smoke_run": True,
        "note": "random weights: features and zero-shot accuracy are meaningless (chance level)",
        "files": n_files,
        "encoded": len(r.paths),
        "skipped": [{"path": os.path.relpath(p, images), "reason": why} for p, why in r.skipped],
        "feature_shape": list(r.features.shape),
        "images_per_second": len(r.paths) / max(r.seconds, 1e-9),
        "zero_shot_accuracy_random_weights": float(np.mean(pred[labelled] == r.labels[labelled])),
        "chance": 1.0 / len(r.class_names),
        "mesh": parallel.describe(mesh),
        "outputs": {"features": out, "checkpoint": ckpt},
    }
    with atomic_open(os.path.join(workdir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps(summary, indent=2))
    return summary
