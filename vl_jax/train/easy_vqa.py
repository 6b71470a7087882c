"""The easy-VQA shapes data as training text: captions, question/answer pairs, descriptions, and a
small BPE tokenizer trained on them.

    data = load_split("train")                     # images uint8 [N, 64, 64, 3], labels, questions
    texts = caption(data.color[i], data.shape[i], rng)   # "a photo of a red circle", ...
    tok = train_tokenizer(corpus(), vocab_size=512)      # a transformers PreTrainedTokenizerFast

Images, labels and questions come from the TFDS builder `easy_vqa_shapes` (prepared on first use,
offline, from the `easy-vqa` PyPI package); the whole split is held in memory (4,000 x 64 x 64 x 3
bytes = 49 MB for train), which keeps batches a pure function of the step number and makes resumed
runs equal uninterrupted ones without an iterator state to checkpoint.
"""

from __future__ import annotations

import dataclasses
import io
import re

import numpy as np

from vl_jax.data.builders.easy_vqa_shapes import COLORS, SHAPES

__all__ = [
    "CAPTIONS",
    "COLORS",
    "DESCRIBE_QUESTIONS",
    "SHAPES",
    "SPECIAL_TOKENS",
    "Split",
    "caption",
    "corpus",
    "describe",
    "load_split",
    "normalize_answer",
    "synthetic_split",
    "train_tokenizer",
    "without_eos",
]

# Full captions name colour and shape; partial ones name one attribute, so that class-name
# prompts ("a photo of a circle", "a red shape") are meaningful to the text tower too.
CAPTIONS = (
    "a photo of a {color} {shape}",
    "a {color} {shape}",
    "a drawing of a {color} {shape}",
    "an image of a {color} {shape}",
    "a picture of a {color} {shape}",
    "a {shape} that is {color}",
    "a {color} {shape} on a white background",
)
PARTIAL_CAPTIONS = (
    "a photo of a {shape}",
    "a {shape}",
    "a drawing of a {shape}",
    "a photo of a {color} shape",
    "a {color} shape",
    "something {color}",
)
PARTIAL_PROB = 0.25  # share of training captions that name only one attribute

# "Describe the image"-style questions; their target is `describe(color, shape)`.
DESCRIBE_QUESTIONS = (
    "describe the image.",
    "what is in the image?",
    "describe the shape.",
    "what do you see?",
)

# Ids 0-4. The end-of-text id must not be 2: HF CLIP configs with eos_token_id == 2 mean
# "pool at the largest id" (original OpenAI CLIP), which our loader honours.
PAD, UNK, BOS, EOS, IMAGE = "<pad>", "<unk>", "<|startoftext|>", "<|endoftext|>", "<image>"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS, IMAGE)


@dataclasses.dataclass(frozen=True)
class Split:
    """One split in memory. N images; Q question/answer pairs over all images."""

    images: np.ndarray  # uint8 [N, H, W, 3]
    shape: np.ndarray  # int32 [N], index into SHAPES
    color: np.ndarray  # int32 [N], index into COLORS
    qa_image: np.ndarray  # int32 [Q], the image of each pair
    questions: tuple[str, ...]  # [Q]
    answers: tuple[str, ...]  # [Q]

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, n: int) -> Split:
        """The first `n` images and their questions (a reduced evaluation set)."""
        keep = self.qa_image < n
        idx = np.flatnonzero(keep)
        return Split(
            self.images[:n],
            self.shape[:n],
            self.color[:n],
            self.qa_image[keep],
            tuple(self.questions[i] for i in idx),
            tuple(self.answers[i] for i in idx),
        )


def load_split(split: str, data_dir: str | None = None, limit: int | None = None) -> Split:
    """Decodes `easy_vqa_shapes:<split>` ("train": 4,000 images, "test": 1,000) into memory.

    Args:
      split: "train" or "test" (any TFDS split string of the builder).
      data_dir: TFDS data dir (default TFDS's); the dataset is prepared there if needed (~10 s).
      limit: keep only the first `limit` images (in image-id order) and their questions.
    """
    import PIL.Image
    import tensorflow_datasets as tfds

    from vl_jax.data import get_source

    get_source("easy_vqa_shapes", split, data_dir=data_dir)  # prepares when needed
    builder = tfds.builder("easy_vqa_shapes", data_dir=data_dir)
    records = builder.as_data_source(split=split, decoders={"image": tfds.decode.SkipDecoding()})
    n = len(records) if limit is None else min(limit, len(records))
    images, shapes, colors, qa_image, questions, answers = [], [], [], [], [], []
    for i in range(n):
        r = records[i]
        images.append(np.asarray(PIL.Image.open(io.BytesIO(r["image"])).convert("RGB")))
        shapes.append(int(r["shape"]))
        colors.append(int(r["color"]))
        for q, a in zip(r["questions"], r["answers"]):
            qa_image.append(i)
            questions.append(q.decode() if isinstance(q, bytes) else str(q))
            answers.append(a.decode() if isinstance(a, bytes) else str(a))
    return Split(
        np.stack(images),
        np.asarray(shapes, np.int32),
        np.asarray(colors, np.int32),
        np.asarray(qa_image, np.int32),
        tuple(questions),
        tuple(answers),
    )


def caption(color: int, shape: int, rng: np.random.Generator) -> str:
    """A random training caption of one image (a full one with prob. 1 - PARTIAL_PROB)."""
    pool = PARTIAL_CAPTIONS if rng.random() < PARTIAL_PROB else CAPTIONS
    return pool[rng.integers(len(pool))].format(color=COLORS[color], shape=SHAPES[shape])


def describe(color: int, shape: int) -> str:
    """The description target of an image: "a red circle." """
    return f"a {COLORS[color]} {SHAPES[shape]}."


def normalize_answer(text: str) -> str:
    """Lower case, single spaces, no surrounding punctuation: the exact-match key."""
    return re.sub(r"\s+", " ", text.lower()).strip(" .,!?;:")


def corpus() -> list[str]:
    """Every text the models see: all captions, the package's questions and answers, the
    description questions and targets, and the chat template words."""
    import easy_vqa

    texts = [
        t.format(color=c, shape=s)
        for t in CAPTIONS + PARTIAL_CAPTIONS
        for c in COLORS
        for s in SHAPES
    ]
    for q, a, _ in (easy_vqa.get_train_questions(),):
        texts += list(q) + list(a)
    texts += list(DESCRIBE_QUESTIONS)
    texts += [describe(c, s) for c in range(len(COLORS)) for s in range(len(SHAPES))]
    texts += ["USER: ASSISTANT:"]
    return texts


def train_tokenizer(texts: list[str], vocab_size: int = 512, add_eos: bool = True):
    """A byte-level BPE tokenizer (lower-cased input) trained on `texts`, as a transformers
    `PreTrainedTokenizerFast` whose `save_pretrained` writes tokenizer.json + tokenizer_config.json.

    `add_special_tokens=True` adds <|startoftext|> in front, and with `add_eos` (CLIP: the text
    tower pools at the end-of-text token) <|endoftext|> at the end; a decoder only gets the start
    token and learns to emit the end. Deterministic for given texts (the BPE trainer is).
    """
    import tokenizers
    from tokenizers import decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = tokenizers.Tokenizer(models.BPE(unk_token=UNK))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(sorted(set(texts)), trainer=trainer)
    bos, eos = tok.token_to_id(BOS), tok.token_to_id(EOS)
    single = f"{BOS} $A {EOS}" if add_eos else f"{BOS} $A"
    tok.post_processor = processors.TemplateProcessing(
        single=single, special_tokens=[(BOS, bos), (EOS, eos)]
    )
    return _fast(tok, 128)


def without_eos(tokenizer):
    """A copy of a `train_tokenizer` tokenizer that adds only the start token (for a decoder,
    which must generate the end token itself); same vocabulary and ids."""
    import tokenizers
    from tokenizers import processors

    tok = tokenizers.Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", special_tokens=[(BOS, tok.token_to_id(BOS))]
    )
    return _fast(tok, tokenizer.model_max_length)


def _fast(tok, max_length: int):
    """A transformers fast tokenizer around a `tokenizers.Tokenizer` with our special tokens."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS,
                                   pad_token=PAD, unk_token=UNK, additional_special_tokens=[IMAGE],
                                   model_max_length=max_length)  # fmt: skip


def synthetic_split(n: int = 16, size: int = 16, seed: int = 0) -> Split:
    """A tiny stand-in for tests: n images [size, size, 3] of a palette-coloured square, disc or
    triangle on white, labelled accordingly, with one "what color is the {shape}?" question each."""
    rng = np.random.default_rng(seed)
    palette = np.asarray(
        [
            (0, 0, 0),
            (0, 0, 255),
            (165, 42, 42),
            (128, 128, 128),
            (0, 255, 0),
            (255, 0, 0),
            (0, 128, 128),
            (255, 255, 0),
        ],
        np.uint8,
    )
    shape = rng.integers(0, len(SHAPES), n).astype(np.int32)
    color = rng.integers(0, len(COLORS), n).astype(np.int32)
    yy, xx = np.mgrid[:size, :size] / size - 0.5
    masks = (  # circle, rectangle, triangle (the order of SHAPES)
        xx**2 + yy**2 < 0.09,
        np.maximum(np.abs(xx), np.abs(yy)) < 0.3,
        (yy > -0.3) & (yy < 0.3 - 2 * np.abs(xx)),
    )
    images = np.full((n, size, size, 3), 255, np.uint8)
    for i in range(n):
        images[i][masks[shape[i]]] = palette[color[i]]
    questions = tuple(f"what color is the {SHAPES[s]}?" for s in shape)
    answers = tuple(COLORS[c] for c in color)
    return Split(images, shape, color, np.arange(n, dtype=np.int32), questions, answers)
