"""CLIP contrastive training (symmetric InfoNCE with a learnable temperature) and zero-shot
evaluation, on the easy-VQA shapes.

    python main.py --config configs/demo/clip.py --workdir runs/clip      # job "train_clip"

Loss (Radford et al. 2021, "Learning Transferable Visual Models From Natural Language
Supervision", Fig. 3): with L2-normalised image and text embeddings x_i, y_j and s = exp(t),
logits_ij = s <x_i, y_j>; loss = (CE(logits, diag) + CE(logits^T, diag)) / 2. The temperature t is
a parameter (`logit_scale`, initialised at log(1/0.07)), clipped so that s <= 100 as in CLIP.
Each image gets a caption drawn from `easy_vqa.CAPTIONS` / `PARTIAL_CAPTIONS` per step.

Zero-shot evaluation (`zero_shot`): (a) joint prompts "a photo of a {colour} {shape}" for the 24
classes, the argmax read as (shape, colour); (b) class-name prompts "a photo of a {shape}" and
"a photo of a {colour} shape" scored per attribute. Shape letters: B batch, L text length,
E embedding dim.
"""

from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vl_jax import parallel
from vl_jax.fileio import atomic_open
from vl_jax.models import clip
from vl_jax.models.clip_config import CLIPConfig, TextConfig, VisionConfig
from vl_jax.models.clip_tokenizer import load_tokenizer, tokenize
from vl_jax.models.transformer import EncoderConfig
from vl_jax.train import easy_vqa
from vl_jax.train.loop import Trainer, make_optimizer

MAX_LOGIT_SCALE = float(np.log(100.0))
JOINT_PROMPT = "a photo of a {color} {shape}"
SHAPE_PROMPT = "a photo of a {shape}"
COLOR_PROMPT = "a photo of a {color} shape"


def model_config(c: ml_collections.ConfigDict, vocab_size: int, eos_token_id: int) -> CLIPConfig:
    """CLIPConfig from `config.model` (widths, depths) and the tokenizer's vocabulary."""
    enc = lambda w, n, h: EncoderConfig(w, n, h, c.mlp_ratio * w, act=c.act)
    return CLIPConfig(
        vision=VisionConfig(
            enc(c.width, c.layers, c.heads), image_size=c.image_size, patch_size=c.patch_size
        ),
        text=TextConfig(
            enc(c.text_width, c.text_layers, c.text_heads),
            vocab_size=vocab_size,
            context_length=c.context_length,
            pooling="eos",
            eos_token_id=eos_token_id,
        ),
        embed_dim=c.embed_dim,
        mean=tuple(c.mean),
        std=tuple(c.std),
    )


def normalize_images(images: jax.Array, mean, std) -> jax.Array:
    """uint8 [B, H, W, 3] -> float32 CLIP input (x / 255 - mean) / std, as CLIPImageProcessor
    (without resizing: the images already have the model's size)."""
    x = images.astype(jnp.float32) / 255.0
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def infonce(img: jax.Array, txt: jax.Array, logit_scale: jax.Array) -> tuple[jax.Array, dict]:
    """Symmetric InfoNCE. img, txt: [B, E] unnormalised; logit_scale: [] (log temperature).

    Returns (loss, {"accuracy": image->text top-1 on the batch, "temperature": exp(scale)})."""
    img = img / jnp.linalg.norm(img, axis=-1, keepdims=True)
    txt = txt / jnp.linalg.norm(txt, axis=-1, keepdims=True)
    scale = jnp.exp(jnp.minimum(logit_scale, MAX_LOGIT_SCALE))
    logits = scale * img @ txt.T  # [B, B]
    labels = jnp.arange(logits.shape[0])
    loss = (
        optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
        + optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean()
    ) / 2
    acc = jnp.mean(jnp.argmax(logits, axis=1) == labels)
    return loss, {"accuracy": acc, "temperature": scale}


def loss_fn(model: clip.CLIP, batch: dict) -> tuple[jax.Array, dict]:
    """batch: images uint8 [B, H, W, 3], input_ids int32 [B, L], attention_mask int32 [B, L]."""
    cfg = model.config
    img = model.encode_image(normalize_images(batch["images"], cfg.mean, cfg.std))
    txt = model.encode_text(batch["input_ids"], batch["attention_mask"])
    return infonce(img, txt, model.logit_scale[...])


class CaptionBatches:
    """step -> global batch: images of a per-epoch permutation (seed, epoch) with one random
    caption each (seed, step). All captions are tokenised once, padded to `context_length`."""

    def __init__(
        self, data: easy_vqa.Split, tokenizer, batch_size: int, context_length: int, seed: int
    ):
        if batch_size > len(data):
            raise ValueError(f"batch_size {batch_size} exceeds the {len(data)} images")
        self.data, self.batch_size, self.seed = data, batch_size, seed
        self.per_epoch = len(data) // batch_size  # drop the remainder: static shapes
        texts = sorted(
            t.format(color=c, shape=s)
            for t in easy_vqa.CAPTIONS + easy_vqa.PARTIAL_CAPTIONS
            for c in easy_vqa.COLORS
            for s in easy_vqa.SHAPES
        )
        ids, mask = tokenize(tokenizer, texts, context_length, pad_to=context_length)
        self.row = {t: i for i, t in enumerate(texts)}
        self.ids, self.mask = ids, mask

    def __call__(self, step: int) -> dict[str, np.ndarray]:
        epoch, i = divmod(step, self.per_epoch)
        perm = np.random.default_rng([self.seed, epoch]).permutation(len(self.data))
        idx = np.sort(perm[i * self.batch_size : (i + 1) * self.batch_size])
        rng = np.random.default_rng([self.seed, epoch, i, 1])
        rows = [
            self.row[easy_vqa.caption(self.data.color[j], self.data.shape[j], rng)] for j in idx
        ]
        return {
            "images": self.data.images[idx],
            "input_ids": self.ids[rows],
            "attention_mask": self.mask[rows],
        }


@jax.jit
def _image_features(model: clip.CLIP, images: jax.Array) -> jax.Array:
    # Module-level jit: every model of one config shares the compiled function.
    return model.encode_image(normalize_images(images, model.config.mean, model.config.std))


@jax.jit
def _text_features(model: clip.CLIP, ids: jax.Array, mask: jax.Array) -> jax.Array:
    return model.encode_text(ids, mask)


def encode_images(model: clip.CLIP, images: np.ndarray, batch_size: int = 200) -> np.ndarray:
    """uint8 [N, H, W, 3] -> L2-normalised image embeddings [N, E] (numpy)."""
    out = []
    for s in range(0, len(images), batch_size):
        chunk = images[s : s + batch_size]
        padded, _ = parallel.pad_batch({"x": chunk}, batch_size)  # one compiled shape
        out.append(np.asarray(_image_features(model, padded["x"]))[: len(chunk)])
    feats = np.concatenate(out) if out else np.zeros((0, model.config.embed_dim), np.float32)
    return feats / np.linalg.norm(feats, axis=1, keepdims=True)


def encode_texts(model: clip.CLIP, tokenizer, texts: list[str]) -> np.ndarray:
    """texts -> L2-normalised text embeddings [T, E] (numpy), padded to the context length."""
    length = model.config.text.context_length
    ids, mask = tokenize(tokenizer, texts, length, pad_to=length)
    feats = np.asarray(_text_features(model, ids, mask))
    return feats / np.linalg.norm(feats, axis=1, keepdims=True)


def zero_shot(model: clip.CLIP, tokenizer, data: easy_vqa.Split) -> dict[str, float]:
    """Zero-shot accuracies on `data`: shape/colour/both from the 24 joint prompts, and shape /
    colour from class-name prompts (`SHAPE_PROMPT`, `COLOR_PROMPT`)."""
    img = encode_images(model, data.images)
    pairs = [(c, s) for c in range(len(easy_vqa.COLORS)) for s in range(len(easy_vqa.SHAPES))]
    joint = encode_texts(
        model,
        tokenizer,
        [JOINT_PROMPT.format(color=easy_vqa.COLORS[c], shape=easy_vqa.SHAPES[s]) for c, s in pairs],
    )
    best = np.asarray(pairs)[np.argmax(img @ joint.T, axis=1)]  # [N, 2] (colour, shape)
    shapes = encode_texts(model, tokenizer, [SHAPE_PROMPT.format(shape=s) for s in easy_vqa.SHAPES])
    colors = encode_texts(model, tokenizer, [COLOR_PROMPT.format(color=c) for c in easy_vqa.COLORS])
    return {
        "shape_accuracy": float(np.mean(best[:, 1] == data.shape)),
        "color_accuracy": float(np.mean(best[:, 0] == data.color)),
        "joint_accuracy": float(np.mean((best[:, 1] == data.shape) & (best[:, 0] == data.color))),
        "shape_accuracy_class_prompts": float(
            np.mean(np.argmax(img @ shapes.T, axis=1) == data.shape)
        ),
        "color_accuracy_class_prompts": float(
            np.mean(np.argmax(img @ colors.T, axis=1) == data.color)
        ),
        "num_images": len(data),
    }


def evaluate_dir(path: str, data: easy_vqa.Split) -> dict[str, float]:
    """`zero_shot` of a saved HF checkpoint directory, loaded through `clip.from_pretrained`."""
    return zero_shot(clip.from_pretrained(path), load_tokenizer(path), data)


def export(model: clip.CLIP, tokenizer, path: str, dtype=None) -> None:
    """A complete HF CLIP directory: config.json, model.safetensors (`dtype`: e.g. np.float16;
    default the parameters'), tokenizer files, preprocessor_config.json."""
    clip.save_pretrained(model, path, dtype=dtype)
    # HF's CLIPTextConfig defaults its special ids to OpenAI's (49406, ...); name ours instead.
    with open(os.path.join(path, "config.json")) as f:
        hf = json.load(f)
    hf["text_config"].update(
        bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    with atomic_open(os.path.join(path, "config.json"), "w") as f:
        json.dump(hf, f, indent=2)
    tokenizer.save_pretrained(path)
    write_preprocessor_config(
        path, model.config.vision.image_size, model.config.mean, model.config.std
    )


def write_preprocessor_config(path: str, size: int, mean, std) -> None:
    """CLIPImageProcessor settings equal to `normalize_images` on images of `size` pixels."""
    pre = {
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": True,
        "size": {"shortest_edge": size},
        "resample": 3,
        "do_center_crop": True,
        "crop_size": {"height": size, "width": size},
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": list(mean),
        "image_std": list(std),
        "do_convert_rgb": True,
    }
    with atomic_open(os.path.join(path, "preprocessor_config.json"), "w") as f:
        json.dump(pre, f, indent=2)


def get_tokenizer(config: ml_collections.ConfigDict, add_eos: bool = True):
    """The tokenizer in `config.tokenizer.path`, else one trained on `easy_vqa.corpus()`."""
    if config.tokenizer.path:
        return load_tokenizer(config.tokenizer.path)
    return easy_vqa.train_tokenizer(easy_vqa.corpus(), config.tokenizer.vocab_size, add_eos)


def make_trainer(config: ml_collections.ConfigDict, tokenizer, mesh) -> Trainer:
    """The Trainer of a fresh CLIP (seed `config.seed`) sized by `config.model` and `tokenizer`."""
    cfg = model_config(config.model, len(tokenizer), tokenizer.eos_token_id)
    tx = make_optimizer(config.optim, config.num_steps)
    return Trainer(clip.init(cfg, seed=config.seed), loss_fn, tx, mesh)


def train(
    config: ml_collections.ConfigDict, workdir: str | None, mesh=None, data=None, tokenizer=None
):
    """Trains a CLIP per `config` (see configs/demo/clip.py). Returns (model, tokenizer, history).

    `data` (an `easy_vqa.Split`) and `tokenizer` default to the train split and `get_tokenizer`."""
    mesh = mesh if mesh is not None else parallel.mesh_from_config(config.mesh)
    if data is None:
        data = easy_vqa.load_split("train", config.data.data_dir, config.data.train_limit)
    tokenizer = tokenizer if tokenizer is not None else get_tokenizer(config)
    trainer = make_trainer(config, tokenizer, mesh)
    batches = CaptionBatches(
        data, tokenizer, config.batch_size, config.model.context_length, config.seed
    )
    model, history = trainer.fit(
        batches,
        config.num_steps,
        workdir,
        checkpoint_every=config.checkpoint_every,
        log_every=config.log_every,
    )
    return model, tokenizer, history


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Job "train_clip": train, export to `config.export_dir` (default workdir/model), evaluate
    the exported directory on the test split, write eval.json there. Returns the evaluation."""
    os.makedirs(workdir, exist_ok=True)
    start = time.perf_counter()
    model, tokenizer, history = train(config, workdir)
    train_seconds = time.perf_counter() - start
    out = config.export_dir or os.path.join(workdir, "model")
    export(model, tokenizer, out, dtype=np.dtype(config.export_dtype))
    test = easy_vqa.load_split("test", config.data.data_dir, config.data.test_limit)
    result = {
        **evaluate_dir(out, test),
        "split": "test",
        "train_steps": config.num_steps,
        "train_seconds": round(train_seconds, 1),
        "final_loss": history[-1]["loss"] if history else None,
        "devices": parallel.describe(parallel.mesh_from_config(config.mesh)),
    }
    with atomic_open(os.path.join(out, "eval.json"), "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2))
    return result
