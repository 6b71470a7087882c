"""VQA — the MLLM answers every (image, question) pair of a dataset (VDC, Zhu et al. 2024, §3.2).

    mllm = vdc_jax.models.load_mllm(config.model, workdir, mesh)
    vqa = VQA.from_mllm(mllm, mesh=mesh)                       # transform: mllm.transform
    store = AnswerStore("runs/dogs/answers.jsonl")            # reads what a killed run wrote
    for step in answer_dataset(vqa, items, source, questions, class_names, store,
                               batch_size=16):                 # one step per batch of images
        step.skipped                                           # samples whose image was bad

Images come through the project's one input pipeline (`vl_jax.data.pipeline.make_pipeline`,
`train=False`) with the checkpoint's own preprocessing as the transform (`VQA.transform`, from
`vdc_jax.models.MLLM.transform`): global batch k holds samples ``items[k*B : (k+1)*B]`` (the
source seen through `vdc_jax.inputs.Subset`), each process decodes only its own rows of it
(the pipeline's per-process schedule), and the batch's ``image`` — a global `jax.Array`
``float32 [B, h, w, 3]`` sharded over the mesh's ``data`` axis — is ``pixel_values`` for
`vl_jax.generate.generate`. This module only decides which rows share an image: every pending
(image, question) pair of the batch becomes a generate row whose ``image_index`` is its image's
row of the batch. All pairs go in ONE generate call per answer kind: the B images are encoded
once and (LLaVA) each image's prompt prefix (chat header + its P image tokens) goes through the
decoder once, shared by the image's questions. InstructBLIP's image features depend on the
question (its Q-Former reads it: each row also carries the question in the Q-Former's
vocabulary), so there the vision tower runs once per image and the rest per row. Description
questions (`Questions.general`) get `describe_tokens` new tokens, yes/no questions
`yes_no_tokens` (short: only the leading verdict is read, see `answers.parse_yes_no`). The
decoding (beams, penalties, minimum length) and the prompt style come from ``config.vqa``
(`VQA.from_config`); docs/generation.md relates the official mode to LAVIS's InstructBLIP call.

Batch size: the pipeline needs each process's share of a batch to split over its ``data``
shards, so ``batch_size`` is rounded up to the next size that does (`pipeline.round_batch`:
16 stays 16 on 8 devices; 11 becomes 12 on 4 devices, 16 on 8). The answers do not depend on
it (rows are decoded independently, beam search included).

Bad images: an image that cannot be read (missing, truncated, not an image) is skipped, never
fatal and never silent: the pipeline masks its row, its pairs are not asked, and the batch's
`Step.skipped` names it (dataset position, id, reason — the reason gathered from the process
that decoded it), so the cleanser leaves it out of scoring and lists it in ``skipped.tsv``.

Several processes (multi-host): the prompts (token ids, small) are built identically on every
process from the batch's global ``mask`` and ``index``; the generate call is one global sharded
computation whose new tokens come back to every process (`parallel.fetch`), so every process
holds every answer and the same `AnswerStore`, but only the writer (`vl_jax.workdir.is_writer`)
writes it. No pixels cross processes.

Answers are appended to `answers.jsonl` after each batch, one JSON object per pair —
``{"index", "id", "label", "class", "question", "kind", "answer"}`` — then flushed and
fsync'd, so a killed run loses at most the batch in flight (`vl_jax.faults` point
``vdc.answers`` right after). On restart the file is read back; a torn last line (the writer
died mid-line) or an undecodable one is dropped and the file truncated to the last good line;
pairs already answered are skipped, so nothing is asked twice and nothing is duplicated.
Batches are cut from the dataset order, not from the pending work, so a resumed run asks the
remaining pairs in the same batches as an uninterrupted run would; the pipeline runs only the
batches that still have pending pairs (``make_pipeline(steps=...)``), so the images of finished
batches are not decoded again. A skipped sample has pending pairs, so a rerun tries its batch
again (a repaired file is then answered). Only the writer process writes; every process reads
the same file, which must be on a shared filesystem for multi-host runs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from array import array
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import jax
import numpy as np

from vdc_jax.inputs import Subset
from vl_jax import faults, parallel
from vl_jax import workdir as wd
from vl_jax.data import pipeline
from vl_jax.data.pipeline import Skipped
from vl_jax.errors import ConfigError
from vl_jax.generate import generate

log = logging.getLogger(__name__)

DESCRIBE, YES_NO = "describe", "yes_no"
PROMPTS = ("chat", "raw")  # config.vqa.prompt (see VQA)
# LLaVA-1.5's conversation format, used when neither the processor nor its tokenizer has a chat
# template (the hub's llava-hf checkpoints do have one, which gives the same string).
FALLBACK_PROMPT = "USER: <image>\n{question} ASSISTANT:"


class VQA:
    """Asks a LLaVA or InstructBLIP model questions about images, in batches.

    Args:
      model: the NNX LLaVA (`vl_jax.models.llava.LLaVA`) or InstructBLIP
        (`vl_jax.models.instructblip.InstructBLIP`, told apart by its `query_features`);
        processor: its transformers processor (`load_processor` of the model's module): the
        tokenizer, the chat template and (InstructBLIP) the Q-Former tokenizer come from it.
      transform: the image preprocessing the input pipeline applies, uint8 [H, W, 3] -> float32
        [h, w, 3] (`vdc_jax.models.MLLM.transform`); default the processor's image processor
        itself (`vl_jax.preprocess.HFImageProcessor`).
      yes_no_tokens / describe_tokens: max new tokens per answer kind (greedy unless `num_beams`).
      min_new_tokens: stop tokens are banned before this many new tokens (LAVIS's min_length).
      num_beams, repetition_penalty, length_penalty: the decoding (HF semantics).
      prompt: "chat" = the family's usual prompt around the question (LLaVA: its chat template;
        InstructBLIP: the processor's default, the question itself unless the tokenizer has a
        chat template); "raw" = the question string itself, as LAVIS's InstructBLIP takes it
        (LLaVA: "<image>\n" + question, no conversation turns).
      penalize_prompt: whether the repetition penalty counts the prompt's tokens (HF
        `generate` with input_ids) or only the new ones (LAVIS, which passes inputs_embeds
        only); default: only the new ones with the "raw" prompt, the prompt too with "chat".
      yes_no_instruction: appended to every yes/no question in its prompt (e.g. "Answer Yes or
        No first, then give a short reason.", as VDC 2.0 asks); "" = the question alone.
      eos_token_id: stop token(s); default the tokenizer's (`vdc_jax.models.stop_tokens` adds
        the checkpoint's generation_config ones, e.g. Qwen's "<|im_end|>").
      mesh: optional `parallel.create_mesh()` mesh (images and rows are sharded over `data`;
        `answer_dataset` uses one device without it).
    """

    def __init__(
        self,
        model,
        processor,
        *,
        transform=None,
        yes_no_tokens: int = 8,
        describe_tokens: int = 64,
        min_new_tokens: int = 0,
        num_beams: int = 1,
        repetition_penalty: float = 1.0,
        length_penalty: float = 1.0,
        prompt: str = "chat",
        penalize_prompt: bool | None = None,
        eos_token_id: int | Sequence[int] | None = None,
        yes_no_instruction: str = "",
        mesh=None,
    ):
        self.model, self.processor, self.mesh = model, processor, mesh
        if transform is None:
            from vl_jax.preprocess import HFImageProcessor

            transform = HFImageProcessor(processor.image_processor)
        self.transform = transform
        self.tokenizer = getattr(processor, "tokenizer", processor)
        # InstructBLIP: its Q-Former reads the question too (per-row image features).
        self.query = hasattr(model, "query_features")
        self.qformer_tokenizer = getattr(processor, "qformer_tokenizer", None)
        if self.query and self.qformer_tokenizer is None:
            raise ValueError("an InstructBLIP model needs its processor's qformer_tokenizer")
        if prompt not in PROMPTS:
            raise ConfigError(f"config.vqa.prompt must be one of {PROMPTS}, got {prompt!r}")
        self.prompt_style = prompt
        if penalize_prompt is None:
            penalize_prompt = prompt != "raw"
        self.decoding = dict(
            num_beams=int(num_beams),
            repetition_penalty=float(repetition_penalty),
            length_penalty=float(length_penalty),
            min_new_tokens=int(min_new_tokens),
            penalize_prompt=bool(penalize_prompt),
        )
        self.max_new = {YES_NO: int(yes_no_tokens), DESCRIBE: int(describe_tokens)}
        self.image_token = getattr(processor, "image_token", None) or "<image>"
        if not isinstance(self.image_token, str):  # InstructBLIP's processor: an AddedToken
            self.image_token = self.image_token.content
        # None: each image has its own count (dynamic resolution, Qwen2-VL: `image_layout`).
        self.num_image_tokens = getattr(model.config, "num_image_tokens", None)
        self.yes_no_instruction = yes_no_instruction
        eos = self.tokenizer.eos_token_id if eos_token_id is None else eos_token_id
        pad = self.tokenizer.pad_token_id
        self.eos = eos
        self.pad = int(
            pad if pad is not None else (np.atleast_1d(eos)[0] if eos is not None else 0)
        )
        self._ids: dict[tuple, np.ndarray] = {}  # (question, P) -> prompt ids (they repeat a lot)
        self._qids: dict[str, np.ndarray] = {}  # question -> Q-Former instruction ids

    @classmethod
    def from_mllm(cls, mllm, **kwargs) -> VQA:
        """The engine of a loaded `vdc_jax.models.MLLM` (its model, processor, image transform
        and stop tokens); `kwargs` as for the constructor."""
        return cls(mllm.model, mllm.processor, transform=mllm.transform,
                   eos_token_id=list(mllm.stop_tokens) or None, **kwargs)  # fmt: skip

    @classmethod
    def from_config(cls, mllm, cfg, *, mesh=None) -> VQA:
        """`from_mllm` with the settings of ``config.vqa`` (`cfg`; fields a config lacks take
        the constructor's defaults; ``batch_size`` is `answer_dataset`'s)."""
        get = cfg.get if hasattr(cfg, "get") else lambda k, d=None: getattr(cfg, k, d)
        names = ("yes_no_tokens", "describe_tokens", "min_new_tokens", "num_beams",
                 "repetition_penalty", "length_penalty", "prompt", "penalize_prompt",
                 "yes_no_instruction")  # fmt: skip
        kwargs = {k: get(k) for k in names if get(k) is not None}
        return cls.from_mllm(mllm, mesh=mesh, **kwargs)

    # ---------------------------------------------------------------- prompts
    def prompt(self, question: str) -> str:
        """The prompt text for one question. LLaVA: with one `<image>` placeholder (not
        expanded); InstructBLIP: without (its image tokens precede the text, see
        `prompt_ids`)."""
        if self.prompt_style == "raw":
            return question if self.query else f"{self.image_token}\n{question}"
        if self.query:  # the processor's default: the question, unless a template exists
            if getattr(self.tokenizer, "chat_template", None):
                return self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": question}], add_generation_prompt=True,
                    tokenize=False,
                )  # fmt: skip
            return question
        for owner in (self.processor, self.tokenizer):
            if getattr(owner, "chat_template", None):
                conversation = [
                    {
                        "role": "user",
                        "content": [{"type": "image"}, {"type": "text", "text": question}],
                    }
                ]
                return owner.apply_chat_template(
                    conversation, add_generation_prompt=True, tokenize=False
                )
        return FALLBACK_PROMPT.format(question=question)

    def prompt_ids(self, question: str, num_image_tokens: int | None = None) -> np.ndarray:
        """int32 [T]: the prompt's token ids with P image tokens, exactly as the family's
        processor tokenizes it (cached per question and P): LLaVA's (and Qwen2-VL's) image
        token expanded in place; InstructBLIP's P image tokens before the tokenized text (BOS
        included), as `InstructBlipProcessor` and LAVIS (query outputs, then the prompt) lay
        them out. P is the model's, or `num_image_tokens` (dynamic resolution: the image's)."""
        count = num_image_tokens or self.num_image_tokens
        ids = self._ids.get((question, count))
        if ids is None:
            text = self.prompt(question)
            if self.query:
                p = [self.model.config.image_token_id] * count
                ids = np.asarray(p + list(self.tokenizer(text)["input_ids"]), np.int32)
            else:
                if text.count(self.image_token) != 1:
                    raise ValueError(f"prompt must hold one {self.image_token!r}: {text!r}")
                text = text.replace(self.image_token, self.image_token * count)
                ids = np.asarray(self.tokenizer(text)["input_ids"], np.int32)
            n = int(np.sum(ids == self.model.config.image_token_id))
            if n != count:
                raise ValueError(
                    f"tokenizer gives {n} image tokens for {count} "
                    f"{self.image_token!r} (image_token_id {self.model.config.image_token_id})"
                )
            self._ids[question, count] = ids
        return ids

    def qformer_ids(self, question: str) -> np.ndarray:
        """InstructBLIP: int32 [Qt], the question in the Q-Former's vocabulary, as the
        processor (and LAVIS) tokenize the instruction: the question itself in either prompt
        style."""
        ids = self._qids.get(question)
        if ids is None:
            ids = np.asarray(self.qformer_tokenizer(question)["input_ids"], np.int32)
            self._qids[question] = ids
        return ids

    # ---------------------------------------------------------------- answering
    def answer(self, pixels, pairs: Sequence[tuple[int, str, str]]) -> list[str]:
        """Answers `pairs` = [(row of `pixels`, question, kind)], in order.

        `pixels`: float32 [S, h, w, 3], preprocessed by `transform` — the input pipeline's
        batch (a global `jax.Array` sharded over `data`) or a numpy array. It goes to generate
        whole, each image encoded once however many pairs use it (rows no pair uses — padding,
        bad images, answered samples — are encoded too: at most one batch's worth). One
        generate call per kind present. Returns one stripped string per pair."""
        out = [""] * len(pairs)
        counts = None
        if hasattr(self.model, "image_layout"):  # dynamic resolution: a token count per image
            pixels = self.model.image_layout(pixels)
            counts = self.model.image_token_counts(pixels)
        for kind in (DESCRIBE, YES_NO):
            rows = [r for r, p in enumerate(pairs) if p[2] == kind]
            if not rows:
                continue
            extra = (
                f" {self.yes_no_instruction}" if kind == YES_NO and self.yes_no_instruction else ""
            )
            prompts = [
                self.prompt_ids(
                    pairs[r][1] + extra, None if counts is None else counts[pairs[r][0]]
                )
                for r in rows
            ]
            ids, mask = _pad(prompts, self.pad, "left")
            instruction = {}
            if self.query:
                q_ids, q_mask = _pad([self.qformer_ids(pairs[r][1]) for r in rows], 0, "right")
                instruction = dict(qformer_input_ids=q_ids, qformer_attention_mask=q_mask)
            new = generate(
                self.model,
                ids,
                mask,
                pixel_values=pixels,
                image_index=np.asarray([pairs[r][0] for r in rows], np.int32),
                max_new_tokens=self.max_new[kind],
                eos_token_id=self.eos,
                pad_token_id=self.pad,
                mesh=self.mesh,
                **instruction,
                **self.decoding,
            )
            texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
            for r, text in zip(rows, texts, strict=True):
                out[r] = text.strip()
        return out


def _pad(rows: Sequence[np.ndarray], pad: int, side: str) -> tuple[np.ndarray, np.ndarray]:
    """Token rows -> (ids, mask [len(rows), longest] int32), padded on `side`: prompts on the
    left (as HF generate expects), Q-Former instructions on the right (as its tokenizer)."""
    t = max(map(len, rows))
    ids = np.full((len(rows), t), pad, np.int32)
    mask = np.zeros((len(rows), t), np.int32)
    for i, r in enumerate(rows):
        at = slice(t - len(r), t) if side == "left" else slice(0, len(r))
        ids[i, at], mask[i, at] = r, 1
    return ids, mask


# ------------------------------------------------------------------------- answers.jsonl
class AnswerStore:
    """`answers.jsonl`: which (id, question) pairs are answered; appends are durable.

    Opening repairs a file left by a killed writer: everything after the last complete, valid
    line is cut off (on process 0; the others only read). Duplicate keys (impossible unless the
    file was edited) keep the first answer.

    Memory: with `keep=True` (the default) every record stays in `records` as well — handy for
    small runs and tests. `keep=False` (the cleanser) keeps only a bitmask of answered
    questions per sample id (~100 bytes per sample), so a long run's memory does not grow with
    its answers; `answers()` then reads them back from the file, one block of samples at a
    time."""

    FIELDS = ("index", "id", "label", "class", "question", "kind", "answer")

    def __init__(self, path: str | os.PathLike, *, write: bool | None = None, keep: bool = True):
        self.path = os.fspath(path)
        self.write = wd.is_writer() if write is None else write
        self.keep = keep
        self.records: dict[tuple[str, str], dict] = {}  # with keep only
        self._qnum: dict[str, int] = {}  # question -> its bit in `_done` (few distinct questions)
        self._done: dict[str, int] = {}  # sample id -> bitmask of its answered questions
        self._count = 0
        self._lines = None  # (index [L], byte offset [L]) of the file's lines, for answers()
        self.dropped = 0  # bytes cut off a torn tail
        if os.path.exists(self.path):
            self._load()

    def _load(self) -> None:
        good = 0  # byte offset after the last good line
        with open(self.path, "rb") as f:
            for line in f:  # line by line: a long run's file need not fit in memory twice
                if not line.endswith(b"\n"):
                    break
                try:
                    rec = json.loads(line)
                    key = (rec["id"], rec["question"])
                except (ValueError, KeyError, TypeError):
                    break  # a torn write can also leave garbage that happens to end in \n
                self._add(key, rec)
                good += len(line)
            size = f.seek(0, os.SEEK_END)
        self.dropped = size - good
        if self.dropped:
            log.warning(
                "%s: dropped a torn tail of %d bytes (a killed run); kept %d answers",
                self.path,
                self.dropped,
                len(self),
            )
            if self.write:
                with open(self.path, "r+b") as f:
                    f.truncate(good)
                    f.flush()
                    os.fsync(f.fileno())

    def _bit(self, question: str) -> int:
        return self._qnum.setdefault(question, len(self._qnum))

    def _add(self, key: tuple[str, str], rec: dict) -> bool:
        """Marks `key` answered; False when it already was (the first answer stays)."""
        if key in self:
            return False
        self._done[key[0]] = self._done.get(key[0], 0) | (1 << self._bit(key[1]))
        self._count += 1
        if self.keep:
            self.records[key] = rec
        return True

    def __contains__(self, key: tuple[str, str]) -> bool:
        bit = self._qnum.get(key[1])
        return bit is not None and bool(self._done.get(key[0], 0) >> bit & 1)

    def __len__(self) -> int:
        return self._count

    def append(self, records: Sequence[dict]) -> None:
        """Adds `records` (new keys only), then flush + fsync (process 0 writes; all remember)."""
        fresh = [r for r in records if self._add((r["id"], r["question"]), r)]
        if fresh:
            self._lines = None
        if self.write and fresh:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            with open(self.path, "ab") as f:
                f.write(b"".join(_line(r) for r in fresh))
                f.flush()
                os.fsync(f.fileno())

    def answers(self, pairs: Sequence[tuple[int, str, str]]) -> list[str]:
        """The stored answer of each (dataset index, id, question) in `pairs`, in order.

        With `keep=False` the answers are read from the file: on the first call one pass
        notes every line's sample index and byte offset (12 bytes per answer), then each call
        reads just the lines of its samples. The file must be complete: on several processes
        call this after a barrier that follows process 0's last append. KeyError names a pair
        that has no answer."""
        if self.keep:
            keys = {(id_, q) for _, id_, q in pairs}
            found = {k: self.records[k]["answer"] for k in keys if k in self.records}
        else:
            found = self._read({p[0] for p in pairs})
        out = []
        for index, id_, q in pairs:
            if (id_, q) not in found:
                raise KeyError(f"{self.path}: no answer for sample {index} ({id_!r}), {q!r}")
            out.append(found[(id_, q)])
        return out

    def _read(self, indices: set[int]) -> dict[tuple[str, str], str]:
        """{(id, question): answer} of the file's lines whose sample index is in `indices`."""
        if self._lines is None:
            index, offset, pos = array("q"), array("q"), 0
            with open(self.path, "rb") as f:
                for line in f:
                    if not line.endswith(b"\n"):
                        break
                    index.append(int(json.loads(line)["index"]))
                    offset.append(pos)
                    pos += len(line)
            self._lines = np.asarray(index, np.int64), np.asarray(offset, np.int64)
        index, offset = self._lines
        want = np.isin(index, np.fromiter(indices, np.int64, len(indices)))
        found: dict[tuple[str, str], str] = {}
        with open(self.path, "rb") as f:
            for at in np.sort(offset[want]):  # file order: the first of duplicates wins
                f.seek(int(at))
                rec = json.loads(f.readline())
                found.setdefault((rec["id"], rec["question"]), rec["answer"])
        return found


def _line(rec: dict) -> bytes:
    return (json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8")


# ------------------------------------------------------------------------- the dataset loop
@dataclasses.dataclass(frozen=True)
class Item:
    """One sample of the run: its dataset position, id and (possibly corrupted) label."""

    index: int
    id: str
    label: int


def pairs_of(item: Item, questions, class_names: Sequence[str]) -> list[tuple[str, str]]:
    """[(question, kind)] asked of one sample: the general description questions, then its
    class's yes/no questions."""
    name = class_names[item.label]
    return [(q, DESCRIBE) for q in questions.general] + [
        (q, YES_NO) for q in questions.specific[name]
    ]


class Step(NamedTuple):
    """What `answer_dataset` did with one batch.

    Attributes:
      size: samples in the batch.
      asked: whether any pair was asked (False: all answered already, or only bad images).
      skipped: the batch's samples with pending pairs whose image could not be read (index =
        dataset position, id = the sample's id, reason), in batch order.
    """

    size: int
    asked: bool
    skipped: tuple[Skipped, ...] = ()


def answer_dataset(
    vqa: VQA,
    items: Sequence[Item],
    source,
    questions,
    class_names: Sequence[str],
    store: AnswerStore,
    *,
    batch_size: int = 16,
    workers: int | None = None,
) -> Iterator[Step]:
    """Answers every pending pair of `items`, batch by batch; yields a `Step` per batch.

    `source`: the dataset `items` index into (`items[k].index` is a position in it; a
    `RandomAccessSource` whose `[i]["image"]` is the possibly triggered image). The input
    pipeline reads `Subset(source, [item.index ...])` with `vqa.transform` on `vqa.mesh`;
    batch k holds `items[k * B : (k + 1) * B]`, B = `pipeline.round_batch(batch_size, mesh)`,
    so its composition does not depend on what was already answered, and only batches with
    pending pairs are decoded. `workers`: the pipeline's decoding threads (default one per core).

    The engine is anything with `mesh`, `transform` and `answer(pixels, pairs)` (`VQA`; tests'
    fakes; the benchmark's per-pair baseline, which reads `np.asarray(pixels)`). Every process
    must call this with the same arguments: the batches' generate calls are collectives.
    """
    mesh = vqa.mesh
    if mesh is None:
        mesh = parallel.create_mesh(devices=jax.devices()[:1])
    b = pipeline.round_batch(batch_size, mesh)
    if b != batch_size:
        log.info("VQA batch of %d rounded up to %d (an equal share per data shard)", batch_size, b)
    batches = [items[k : k + b] for k in range(0, len(items), b)]
    pending = lambda item: [
        (q, kind) for q, kind in pairs_of(item, questions, class_names) if (item.id, q) not in store
    ]
    steps = [k for k, batch in enumerate(batches) if any(pending(item) for item in batch)]
    todo = set(steps)
    view = Subset(source, [item.index for item in items])
    with pipeline.make_pipeline(view, batch_size=b, mesh=mesh, transform=vqa.transform,
                                train=False, steps=steps, workers=workers) as it:  # fmt: skip
        for k, batch in enumerate(batches):
            if k in todo:  # the pipeline's next batch is batch k
                yield _answer_batch(vqa, it, k * b, batch, pending, class_names, store)
            else:  # answered in an earlier run: nothing decoded
                yield Step(len(batch), False)


def _answer_batch(vqa, it, start: int, batch, pending, class_names, store) -> Step:
    """One batch of `answer_dataset`: the pipeline's next batch -> answers appended."""
    images = next(it)
    ok, index = parallel.fetch((images["mask"], images["index"]))  # global [B], every process
    if not np.array_equal(index[: len(batch)], np.arange(start, start + len(batch))):
        raise RuntimeError(f"pipeline batch at {start} holds rows {index[: len(batch)]}")
    todo = [(r, item, q, kind) for r, item in enumerate(batch) if ok[r]
            for q, kind in pending(item)]  # fmt: skip
    skipped = ()
    bad = [r for r, item in enumerate(batch) if not ok[r] and pending(item)]
    if bad:  # the pipeline has logged each one
        reasons = _gather_reasons(it, index[bad])
        skipped = tuple(Skipped(batch[r].index, batch[r].id, w) for r, w in zip(bad, reasons))
    if todo:
        answers = vqa.answer(images["image"], [(r, q, kind) for r, _, q, kind in todo])
        store.append(
            [
                {
                    "index": item.index,
                    "id": item.id,
                    "label": item.label,
                    "class": class_names[item.label],
                    "question": q,
                    "kind": kind,
                    "answer": a,
                }
                for (_, item, q, kind), a in zip(todo, answers, strict=True)
            ]
        )
        faults.point("vdc.answers")  # kill-and-resume tests: the batch is on disk
    return Step(len(batch), bool(todo), skipped)


def _gather_reasons(it, rows: np.ndarray) -> list[str]:
    """Why each bad row (pipeline index `rows`) failed. Only the process that decoded a row
    knows; each process offers the reasons it has ("" elsewhere) and all gather them. Every
    process calls this for the same rows: the bad rows come from the global mask."""
    mine = {s.index: s.reason for s in it.skipped}
    offered = pipeline.gather_strings([mine.get(int(i), "") for i in rows])
    per_process = np.asarray(offered, dtype=object).reshape(-1, len(rows))
    return [next((w for w in per_process[:, j] if w), "unreadable") for j in range(len(rows))]
