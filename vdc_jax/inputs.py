"""Where the cleanser's samples and model come from: datasets and the tiny runlocal checkpoint.

    data = load_dataset(config.data, workdir)   # .source[i] = {"image": uint8 [H, W, 3], "label", "id"}
    data.class_names, data.paths                # paths: [N] str for files, None for TFDS

Four kinds of dataset (``config.data.kind``):

- ``tfds``: a name that `vl_jax.data.get_source` knows (ImageNet subsets, CIFAR-10, ...,
  ``image_folder:/path``), with ``split``, ``data_dir``, ``manual_dir``;
- ``folder``: an image folder with one subfolder per class (files directly in the root have no
  label and are left out, with a warning); ids are the paths relative to the folder;
- ``csv``: a CSV of ``path,label`` rows (optional header), paths relative to the CSV's folder,
  labels class names — or indices into ``data.class_names`` when given; ids are the paths as
  written. A bad row, a missing file or (when it is read) an unreadable image raises `DataError`
  naming the file and line;
- ``synthetic``: a small generated image folder (coloured circles / squares / triangles on noise)
  written into the workdir (by process 0), for runlocal.

`write_tiny_llava(path)` writes a random-weight LLaVA checkpoint (CLIP tower + Llama decoder,
word-level tokenizer, LLaVA processor) with transformers + torch, as the hub's llava-hf
checkpoints are laid out, so that runlocal loads it back through our verified loader.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import os
import tempfile
from collections.abc import Sequence

import numpy as np

from vl_jax.images import ImageError, load_rgb, walk_image_folder

log = logging.getLogger(__name__)


class DataError(ValueError):
    """A dataset the cleanser cannot read: the message names the file (and line)."""


@dataclasses.dataclass
class Dataset:
    """`source`: random access to ``{"image", "label", "id"}`` with `labels()` and `ids()`;
    `paths`: [N] absolute image paths when the samples are files, else None."""

    source: object
    class_names: list[str]
    paths: list[str] | None
    description: str


class FileSource:
    """Samples that are image files: ``self[i] = {"image": uint8 [H, W, 3], "label": int32,
    "id": str}``; `where[i]` says where sample i was listed (for error messages)."""

    def __init__(self, name, paths, labels, ids, class_names, where):
        self.name, self.split = name, None
        self.paths, self._ids, self.where = list(paths), list(ids), list(where)
        self._labels = np.asarray(labels, np.int32)
        self.class_names = list(class_names)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i) -> dict:
        i = int(i)
        try:
            image = load_rgb(self.paths[i])
        except ImageError as e:
            raise DataError(f"{self.where[i]}: unreadable image {self.paths[i]!r}: {e}") from e
        return {"image": image, "label": self._labels[i], "id": self._ids[i]}

    def labels(self) -> np.ndarray:
        return self._labels.copy()

    def ids(self) -> list[str]:
        return list(self._ids)

    def __repr__(self) -> str:
        return f"FileSource({self.name!r}, len={len(self)}, classes={self.num_classes})"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def source_ids(source) -> list[str]:
    """[N] sample ids without decoding images where the source allows it."""
    ids = getattr(source, "ids", None)
    if callable(ids):
        return list(ids())
    inner = getattr(source, "source", None)  # CorruptedSource keeps ids
    if inner is not None:
        return source_ids(inner)
    records = getattr(source, "_records", None)
    if records is not None:  # vl_jax.data.Source: read the id field; images stay encoded
        return [source._id(records[source._record_index(i)], source._record_index(i))
                for i in range(len(source))]  # fmt: skip
    return [str(source[i]["id"]) for i in range(len(source))]


# ---------------------------------------------------------------------------- loading
def load_dataset(cfg, workdir: str) -> Dataset:
    """The dataset of ``cfg`` (``config.data``); see the module docstring."""
    kind = cfg.kind
    if kind in ("folder", "csv") and not cfg.path:
        raise DataError(f"config.data.kind={kind!r} needs config.data.path")
    if kind == "tfds":
        from vl_jax.data import get_source

        if not cfg.name:
            raise DataError("config.data.kind='tfds' needs config.data.name")
        try:
            src = get_source(
                cfg.name,
                cfg.split,
                data_dir=cfg.data_dir or None,
                manual_dir=cfg.manual_dir or None,
            )
        except ValueError as e:  # unknown name or split: the message lists the known ones
            raise DataError(str(e)) from e
        return Dataset(src, list(src.class_names), None, f"tfds {cfg.name}:{cfg.split}")
    if kind == "folder":
        return folder_dataset(cfg.path)
    if kind == "csv":
        return csv_dataset(cfg.path, list(cfg.class_names) or None)
    if kind == "synthetic":
        return folder_dataset(synthetic_folder(workdir, cfg.per_class, cfg.seed))
    raise DataError(f"config.data.kind must be tfds, folder, csv or synthetic, got {kind!r}")


def folder_dataset(root: str) -> Dataset:
    """An image folder with one subfolder per class (sorted names = class indices)."""
    root = os.path.abspath(os.fspath(root))
    try:
        listing = walk_image_folder(root)
    except (OSError, ValueError) as e:
        raise DataError(str(e)) from e
    for path, reason in listing.ignored:
        log.warning("%s: skipped (%s)", path, reason)
    keep = listing.labels >= 0
    if not keep.all():
        log.warning("%s: %d files directly in the folder have no class; left out", root,
                    int((~keep).sum()))  # fmt: skip
    paths = [p for p, k in zip(listing.paths, keep) if k]
    if not paths:
        raise DataError(f"{root}: no images in class subfolders")
    ids = [os.path.relpath(p, root) for p in paths]
    src = FileSource(root, paths, listing.labels[keep], ids, listing.class_names, paths)
    return Dataset(src, listing.class_names, paths, f"folder {root}")


def csv_dataset(path: str, class_names: Sequence[str] | None = None) -> Dataset:
    """A CSV of ``path,label`` rows; see the module docstring for the rules."""
    path = os.path.abspath(os.fspath(path))
    if not os.path.isfile(path):
        raise DataError(f"CSV file not found: {path}")
    base = os.path.dirname(path)
    rows = []  # (line, relative path, label text)
    with open(path, newline="", encoding="utf-8-sig") as f:
        for line_no, row in enumerate(csv.reader(f), start=1):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != 2:
                raise DataError(f"{path}, line {line_no}: expected 2 fields path,label, got "
                                f"{len(row)}: {row!r}")  # fmt: skip
            rel, label = row[0].strip(), row[1].strip()
            if not rows and line_no == 1 and label.lower() in ("label", "class"):
                continue  # header
            if not rel or not label:
                raise DataError(f"{path}, line {line_no}: empty path or label: {row!r}")
            rows.append((line_no, rel, label))
    if not rows:
        raise DataError(f"{path}: no rows")
    names = list(class_names) if class_names else sorted({r[2] for r in rows})
    index = {n: i for i, n in enumerate(names)}
    labels, paths, where = [], [], []
    for line_no, rel, label in rows:
        at = f"{path}, line {line_no}"
        if label in index:
            labels.append(index[label])
        elif class_names and label.isdigit() and int(label) < len(names):
            labels.append(int(label))
        else:
            raise DataError(f"{at}: unknown label {label!r} (classes: {names})")
        full = os.path.normpath(os.path.join(base, rel))
        if not os.path.isfile(full):
            raise DataError(f"{at}: image not found: {full}")
        paths.append(full)
        where.append(at)
    ids = [r[1] for r in rows]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"{path}: path {dup!r} is listed twice")
    src = FileSource(path, paths, labels, ids, names, where)
    return Dataset(src, names, paths, f"csv {path}")


# ---------------------------------------------------------------------------- runlocal
SHAPES = ("circle", "square", "triangle")


def synthetic_folder(workdir: str, per_class: int, seed: int) -> str:
    """`workdir/synthetic_images`, written once: by process 0 into a temporary folder that is
    renamed into place (a killed write leaves no half dataset), the other processes waiting
    at a barrier. Every process must call it."""
    import jax

    from vl_jax.parallel import sync_processes

    root = os.path.join(workdir, "synthetic_images")
    if jax.process_index() == 0 and not os.path.isdir(root):
        os.makedirs(workdir, exist_ok=True)
        tmp = tempfile.mkdtemp(dir=workdir, prefix=".synthetic_images.")
        write_shapes_folder(tmp, per_class=per_class, seed=seed)
        os.rename(tmp, root)
    sync_processes("vdc: synthetic images written")
    return root


def write_shapes_folder(root: str, per_class: int = 8, size: int = 48, seed: int = 0) -> None:
    """`root/<shape>/<k>.png`: one coloured shape on a noisy background per image."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    for shape in SHAPES:
        os.makedirs(os.path.join(root, shape), exist_ok=True)
        for k in range(per_class):
            bg = rng.integers(150, 256, (size, size, 3), dtype=np.uint8)
            img = Image.fromarray(bg)
            draw = ImageDraw.Draw(img)
            colour = tuple(int(c) for c in rng.integers(0, 120, 3))
            lo, hi = int(rng.integers(4, 12)), int(rng.integers(size - 12, size - 4))
            if shape == "circle":
                draw.ellipse([lo, lo, hi, hi], fill=colour)
            elif shape == "square":
                draw.rectangle([lo, lo, hi, hi], fill=colour)
            else:
                draw.polygon([(lo, hi), (hi, hi), ((lo + hi) // 2, lo)], fill=colour)
            img.save(os.path.join(root, shape, f"{k:03d}.png"))


# Word-level vocabulary of the tiny model: the words of the template / general questions, the
# class names, a few answer words, so random answers decode to words ("yes dog square ...").
_WORDS = (
    "USER ASSISTANT : ? . , yes no not a an the is there in image main object show does kind of "
    "would you call this contain visible picture photo describe detail what it circle square "
    "triangle shape colour red blue green dark light background small large"
).split()


def write_tiny_llava(
    path: str,
    seed: int = 0,
    image_size: int = 30,
    patch_size: int = 6,
    vision: dict | None = None,
    text: dict | None = None,
    vocab_size: int | None = None,
) -> str:
    """Writes a random tiny LLaVA-1.5-style checkpoint with its processor to `path`.

    CLIP tower (2 layers, width 32) at the penultimate layer without the class token, Llama
    decoder (2 layers, width 32), word-level tokenizer (BOS added like Llama's), no chat
    template (prompts use the LLaVA-1.5 format). `vision` / `text` override the towers'
    transformers config fields; `vocab_size` pads the vocabulary with filler words (benchmarks:
    a realistic LM head). Deterministic in `seed`. Returns `path`."""
    import tokenizers
    import torch
    import transformers
    from tokenizers import models, pre_tokenizers, processors

    specials = ["<unk>", "<pad>", "</s>", "<s>"]
    words = [*specials, *_WORDS]
    words += [f"w{i}" for i in range(max(0, (vocab_size or 0) - 1 - len(words)))]
    vocab = {w: i for i, w in enumerate(words)}
    image_id = len(vocab)
    tok = tokenizers.Tokenizer(models.WordLevel(vocab | {"<image>": image_id}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", special_tokens=[("<s>", vocab["<s>"])]
    )
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="</s>",
        bos_token="<s>", padding_side="left",
    )  # fmt: skip
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    processor = transformers.LlavaProcessor(
        image_processor=transformers.CLIPImageProcessorPil(
            size={"shortest_edge": image_size},
            crop_size={"height": image_size, "width": image_size},
        ),
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's class token
    )
    cfg = transformers.LlavaConfig(
        vision_config=transformers.CLIPVisionConfig(**{
            **dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                   num_attention_heads=4),
            **(vision or {}), "image_size": image_size, "patch_size": patch_size,
        }),
        text_config=transformers.LlamaConfig(**{
            **dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2),
            **(text or {}), "vocab_size": image_id + 1, "bos_token_id": vocab["<s>"],
            "eos_token_id": vocab["</s>"], "pad_token_id": vocab["<pad>"],
        }),
        image_token_index=image_id,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )  # fmt: skip
    torch.manual_seed(seed)
    model = transformers.LlavaForConditionalGeneration(cfg).eval()
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
