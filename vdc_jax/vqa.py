"""VQA — the MLLM answers every (image, question) pair of a dataset (VDC, Zhu et al. 2024, §3.2).

    vqa = VQA.from_mllm(vdc_jax.models.load_mllm(config.model, workdir, mesh), mesh=mesh)
    store = AnswerStore("runs/dogs/answers.jsonl")            # reads what a killed run wrote
    for _ in answer_dataset(vqa, items, load_image, questions, class_names, store,
                            batch_size=16):                    # one step per batch of images
        pass

Per batch of B images, every pending (image, question) pair is answered in ONE
`vl_jax.generate.generate` call per answer kind: the B images are encoded once
(`pixel_values [S, H, W, 3]`, S >= B slots, `image_index` = each row's slot) and each image's
prompt prefix (chat header + its P image tokens) goes through the decoder once, shared by the
image's questions. Description questions (`Questions.general`) get `describe_tokens` new
tokens, yes/no questions `yes_no_tokens` (short: only the leading verdict is read, see
`answers.parse_yes_no`).

Several processes (multi-host): the batch's images are spread evenly over the mesh's `data`
shards (`slot_layout`), and each process decodes and preprocesses only the images whose slots
its own devices hold (`VQA.load_pixels`); the other slots of its host array stay zero and are
never read, since `generate` builds the global pixel array with `make_array_from_callback`,
which reads each process's own shards only. No pixels cross processes. The prompts (token
ids, small) are built identically on every process; the generate call is one global sharded
computation whose new tokens come back to every process (`parallel.fetch`), so every process
holds every answer and the same `AnswerStore`, but only the writer (`vl_jax.workdir.is_writer`) writes it.

Answers are appended to `answers.jsonl` after each batch, one JSON object per pair —
``{"index", "id", "label", "class", "question", "kind", "answer"}`` — then flushed and
fsync'd, so a killed run loses at most the batch in flight (`vl_jax.faults` point
``vdc.answers`` right after). On restart the file is read back; a torn last line (the writer
died mid-line) or an undecodable one is dropped and the file truncated to the last good line;
pairs already answered are skipped, so nothing is asked twice and nothing is duplicated.
Batches are cut from the dataset order, not from the pending work, so a resumed run asks the
remaining pairs in the same batches as an uninterrupted run would. Only the writer process
(`vl_jax.workdir.is_writer`) writes; every process reads the same file, which must be on a shared
filesystem for multi-host runs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from array import array
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from vl_jax import faults, parallel
from vl_jax import workdir as wd
from vl_jax.generate import bucket, generate

log = logging.getLogger(__name__)

DESCRIBE, YES_NO = "describe", "yes_no"
# LLaVA-1.5's conversation format, used when neither the processor nor its tokenizer has a chat
# template (the hub's llava-hf checkpoints do have one, which gives the same string).
FALLBACK_PROMPT = "USER: <image>\n{question} ASSISTANT:"


def slot_layout(n: int, shards: int) -> tuple[int, np.ndarray]:
    """Where a batch's `n` images go in the pixel array given to `generate`, for a mesh whose
    `data` axis has `shards` positions.

    Returns (S, slot int64 [n]): the array has S = shards x R rows (row block s lives on data
    shard s); the images are split over the shards in order and balanced (the first n % shards
    shards get one more), image k at row `slot[k]`; the other rows are empty (zeros). S is a
    fixed point of generate's batch bucketing (`bucket(S, multiple=shards) == S`), so generate
    pads nothing and the row blocks stay where this layout puts them.
    """
    if n < 1 or shards < 1:
        raise ValueError(f"slot_layout needs n >= 1 and shards >= 1, got {n}, {shards}")
    per = -(-n // shards)
    while bucket(per * shards, multiple=shards) != per * shards:
        per = bucket(per * shards, multiple=shards) // shards
    base, extra = divmod(n, shards)
    counts = base + (np.arange(shards) < extra)
    slot = np.concatenate([s * per + np.arange(c) for s, c in enumerate(counts)])
    return per * shards, slot.astype(np.int64)


class VQA:
    """Asks a LLaVA model (`vl_jax.models.llava.LLaVA`) questions about images, in batches.

    Args:
      model: the NNX LLaVA; processor: its transformers `LlavaProcessor` (`llava.load_processor`):
        the tokenizer, the chat template and the image processor are taken from it.
      yes_no_tokens / describe_tokens: max new tokens per answer kind (greedy unless `num_beams`).
      eos_token_id: stop token(s); default the tokenizer's (`vdc_jax.models.stop_tokens` adds
        the checkpoint's generation_config ones, e.g. Qwen's "<|im_end|>").
      mesh: optional `parallel.create_mesh()` mesh (rows and images are sharded over `data`;
        with several processes each decodes only its devices' images, see `load_pixels`).
    """

    def __init__(
        self,
        model,
        processor,
        *,
        yes_no_tokens: int = 8,
        describe_tokens: int = 64,
        num_beams: int = 1,
        repetition_penalty: float = 1.0,
        eos_token_id: int | Sequence[int] | None = None,
        mesh=None,
    ):
        self.model, self.processor, self.mesh = model, processor, mesh
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.max_new = {YES_NO: int(yes_no_tokens), DESCRIBE: int(describe_tokens)}
        self.num_beams, self.repetition_penalty = int(num_beams), float(repetition_penalty)
        self.image_token = getattr(processor, "image_token", None) or "<image>"
        self.num_image_tokens = model.config.num_image_tokens
        eos = self.tokenizer.eos_token_id if eos_token_id is None else eos_token_id
        pad = self.tokenizer.pad_token_id
        self.eos = eos
        self.pad = int(
            pad if pad is not None else (np.atleast_1d(eos)[0] if eos is not None else 0)
        )
        self._ids: dict[str, np.ndarray] = {}  # question -> prompt ids (questions repeat a lot)
        self._pixel_shape: tuple[int, ...] | None = None

    @classmethod
    def from_mllm(cls, mllm, **kwargs) -> VQA:
        """The engine of a loaded `vdc_jax.models.MLLM` (its model, processor and stop tokens);
        `kwargs` as for the constructor."""
        return cls(mllm.model, mllm.processor, eos_token_id=list(mllm.stop_tokens) or None,
                   **kwargs)  # fmt: skip

    # ---------------------------------------------------------------- prompts and pixels
    def prompt(self, question: str) -> str:
        """The chat prompt for one question, with one `<image>` placeholder (not expanded)."""
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

    def prompt_ids(self, question: str) -> np.ndarray:
        """int32 [T]: the prompt's token ids with `<image>` expanded to P image tokens, exactly
        as `LlavaProcessor(images=..., text=...)` tokenizes it (cached per question)."""
        ids = self._ids.get(question)
        if ids is None:
            text = self.prompt(question)
            if text.count(self.image_token) != 1:
                raise ValueError(f"prompt must hold one {self.image_token!r}: {text!r}")
            text = text.replace(self.image_token, self.image_token * self.num_image_tokens)
            ids = np.asarray(self.tokenizer(text)["input_ids"], np.int32)
            n = int(np.sum(ids == self.model.config.image_token_id))
            if n != self.num_image_tokens:
                raise ValueError(
                    f"tokenizer gives {n} image tokens for {self.num_image_tokens} "
                    f"{self.image_token!r} (image_token_id {self.model.config.image_token_id})"
                )
            self._ids[question] = ids
        return ids

    def pixels(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """float32 [N, H, W, 3]: uint8 [h, w, 3] images through the processor's image processor
        (resize, crop, normalise as the checkpoint expects), NCHW -> NHWC."""
        from PIL import Image

        pil = [Image.fromarray(np.asarray(x, np.uint8)) for x in images]
        px = self.processor.image_processor(images=pil, return_tensors="np")["pixel_values"]
        return np.ascontiguousarray(np.asarray(px, np.float32).transpose(0, 2, 3, 1))

    def pixel_shape(self) -> tuple[int, ...]:
        """(H, W, 3) of `pixels`' rows: the image processor's output size (resize + crop give
        every image the same), found once on a blank image. A process that holds none of a
        batch's images still needs it to build its (all zero) part of the pixel array."""
        if self._pixel_shape is None:
            self._pixel_shape = self.pixels([np.zeros((8, 8, 3), np.uint8)]).shape[1:]
        return self._pixel_shape

    def load_pixels(
        self, load_image: Callable[[int], np.ndarray], indices: Sequence[int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """The pixel array of one batch: (float32 [S, H, W, 3], slot int64 [n]) for the n
        samples `indices` (dataset positions), sample k at row `slot[k]` (`slot_layout` over
        the mesh's data shards).

        Only the rows this process's devices hold are filled: `load_image(index) -> uint8
        [h, w, 3]` (the decode) and the image processor run for those samples only; the other
        rows stay zero — generate reads them from the processes that hold them."""
        shards = 1 if self.mesh is None else self.mesh.shape[parallel.DATA]
        size, slot = slot_layout(len(indices), shards)
        if self.mesh is None:
            held = np.ones(size, bool)
        else:
            held = parallel.addressable_rows(size, self.mesh)
        mine = np.flatnonzero(held[slot])
        if len(mine):
            local = self.pixels([load_image(indices[k]) for k in mine])
            self._pixel_shape = local.shape[1:]
        else:
            local = np.zeros((0, *self.pixel_shape()), np.float32)
        out = np.zeros((size, *local.shape[1:]), np.float32)
        out[slot[mine]] = local
        return out, slot

    # ---------------------------------------------------------------- answering
    def answer(self, pixels: np.ndarray, pairs: Sequence[tuple[int, str, str]]) -> list[str]:
        """Answers `pairs` = [(row of `pixels`, question, kind)], in order.

        `pixels`: float32 [S, H, W, 3] (`pixels` or `load_pixels`); it goes to generate whole,
        so that each row stays on the devices `load_pixels` laid it out for (rows no pair uses
        are encoded too: at most the empty slots of a batch). One generate call per kind
        present. Returns one stripped string per pair."""
        out = [""] * len(pairs)
        for kind in (DESCRIBE, YES_NO):
            rows = [r for r, p in enumerate(pairs) if p[2] == kind]
            if not rows:
                continue
            prompts = [self.prompt_ids(pairs[r][1]) for r in rows]
            t = max(map(len, prompts))
            ids = np.full((len(rows), t), self.pad, np.int32)
            mask = np.zeros((len(rows), t), np.int32)
            for i, p in enumerate(prompts):  # left padding, as HF generate expects
                ids[i, t - len(p) :], mask[i, t - len(p) :] = p, 1
            new = generate(
                self.model,
                ids,
                mask,
                pixel_values=pixels,
                image_index=np.asarray([pairs[r][0] for r in rows], np.int32),
                max_new_tokens=self.max_new[kind],
                num_beams=self.num_beams,
                repetition_penalty=self.repetition_penalty,
                eos_token_id=self.eos,
                pad_token_id=self.pad,
                mesh=self.mesh,
            )
            texts = self.tokenizer.batch_decode(new, skip_special_tokens=True)
            for r, text in zip(rows, texts, strict=True):
                out[r] = text.strip()
        return out


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


def answer_dataset(
    vqa: VQA,
    items: Sequence[Item],
    load_image: Callable[[int], np.ndarray],
    questions,
    class_names: Sequence[str],
    store: AnswerStore,
    *,
    batch_size: int = 16,
) -> Iterator[tuple[int, bool]]:
    """Answers every pending pair of `items`, batch by batch; yields (images in the batch,
    whether anything was asked) per batch.

    `load_image(index) -> uint8 [H, W, 3]` reads a sample's (possibly triggered) image; it is
    only called for samples with pending pairs and, with a `VQA` on a mesh spanning several
    processes, only by the process whose devices get that image (`VQA.load_pixels`). Other
    engines (tests' fakes, the benchmark's per-pair baseline) get every image through their
    `pixels(images)`. Batches are `items[k * batch_size : ...]`, so their composition does not
    depend on what was already answered. Every process must call this with the same arguments:
    the batches' generate calls are collectives.
    """
    for start in range(0, len(items), batch_size):
        batch = items[start : start + batch_size]
        todo = [
            (item, q, kind)
            for item in batch
            for q, kind in pairs_of(item, questions, class_names)
            if (item.id, q) not in store
        ]
        if todo:
            order = list(dict.fromkeys(t[0].index for t in todo))  # images with pending pairs
            if hasattr(vqa, "load_pixels"):
                pixels, slots = vqa.load_pixels(load_image, order)
            else:
                pixels = vqa.pixels([load_image(index) for index in order])
                slots = np.arange(len(order))
            slot = dict(zip(order, slots.tolist()))
            answers = vqa.answer(pixels, [(slot[it.index], q, kind) for it, q, kind in todo])
            store.append(
                [
                    {
                        "index": it.index,
                        "id": it.id,
                        "label": it.label,
                        "class": class_names[it.label],
                        "question": q,
                        "kind": kind,
                        "answer": a,
                    }
                    for (it, q, kind), a in zip(todo, answers, strict=True)
                ]
            )
            faults.point("vdc.answers")  # kill-and-resume tests: the batch is on disk
        yield len(batch), bool(todo)
