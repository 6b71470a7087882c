"""VQA — the MLLM answers every (image, question) pair of a dataset (VDC, Zhu et al. 2024, §3.2).

    vqa = VQA(llava.from_pretrained(path), llava.load_processor(path))
    store = AnswerStore("runs/dogs/answers.jsonl")            # reads what a killed run wrote
    for _ in answer_dataset(vqa, samples, questions, class_names, store, batch_size=16):
        pass                                                   # one step per batch of images

Per batch of B images, every pending (image, question) pair is answered in ONE
`vl_jax.generate.generate` call per answer kind: the B images are encoded once
(`pixel_values [B, H, W, 3]`, `image_index` = each row's image) and each image's prompt prefix
(chat header + its P image tokens) goes through the decoder once, shared by the image's
questions. Description questions (`Questions.general`) get `describe_tokens` new tokens, yes/no
questions `yes_no_tokens` (short: only the leading verdict is read, see `answers.parse_yes_no`).

Answers are appended to `answers.jsonl` after each batch, one JSON object per pair —
``{"index", "id", "label", "class", "question", "kind", "answer"}`` — then flushed and
fsync'd, so a killed run loses at most the batch in flight. On restart the file is read back; a
torn last line (the writer died mid-line) or an undecodable one is dropped and the file
truncated to the last good line; pairs already answered are skipped, so nothing is asked twice
and nothing is duplicated. Batches are cut from the dataset order, not from the pending work, so
a resumed run asks the remaining pairs in the same batches as an uninterrupted run would.
Only process 0 writes (`jax.process_index() == 0`); every process runs the same generate calls
(they are sharded over the mesh) and reads the same file, which must be on a shared filesystem
for multi-host runs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable, Iterator, Sequence

import jax
import numpy as np

from vl_jax.generate import generate

log = logging.getLogger(__name__)

DESCRIBE, YES_NO = "describe", "yes_no"
# LLaVA-1.5's conversation format, used when neither the processor nor its tokenizer has a chat
# template (the hub's llava-hf checkpoints do have one, which gives the same string).
FALLBACK_PROMPT = "USER: <image>\n{question} ASSISTANT:"
# Test hook: exit hard (os._exit, no cleanup) after this many written batches, to simulate a kill.
EXIT_AFTER_ENV = "VDC_TEST_EXIT_AFTER_BATCHES"


class VQA:
    """Asks a LLaVA model (`vl_jax.models.llava.LLaVA`) questions about images, in batches.

    Args:
      model: the NNX LLaVA; processor: its transformers `LlavaProcessor` (`llava.load_processor`):
        the tokenizer, the chat template and the image processor are taken from it.
      yes_no_tokens / describe_tokens: max new tokens per answer kind (greedy unless `num_beams`).
      eos_token_id: stop token(s); default the tokenizer's (`stop_tokens` adds the checkpoint's
        generation_config ones, e.g. Qwen's "<|im_end|>").
      mesh: optional `parallel.create_mesh()` mesh (rows are sharded over `data`).
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

    # ---------------------------------------------------------------- answering
    def answer(self, pixels: np.ndarray, pairs: Sequence[tuple[int, str, str]]) -> list[str]:
        """Answers `pairs` = [(image index into `pixels`, question, kind)], in order.

        One generate call per kind present: all rows of that kind, every image encoded once.
        Returns one stripped string per pair."""
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
            used = sorted({pairs[r][0] for r in rows})
            where = {img: k for k, img in enumerate(used)}
            new = generate(
                self.model,
                ids,
                mask,
                pixel_values=pixels[used],
                image_index=np.asarray([where[pairs[r][0]] for r in rows], np.int32),
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


def stop_tokens(path: str, tokenizer) -> list[int]:
    """The tokenizer's EOS plus `generation_config.json`'s `eos_token_id`(s) in `path`."""
    ids = [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]
    cfg = os.path.join(path, "generation_config.json")
    if os.path.exists(cfg):
        with open(cfg, encoding="utf-8") as f:
            extra = json.load(f).get("eos_token_id")
        ids += [int(i) for i in np.atleast_1d(extra if extra is not None else [])]
    return list(dict.fromkeys(ids))


# ------------------------------------------------------------------------- answers.jsonl
class AnswerStore:
    """`answers.jsonl`: the answers so far, keyed by (id, question); appends are durable.

    Opening repairs a file left by a killed writer: everything after the last complete, valid
    line is cut off (on process 0; the others only read). Duplicate keys (impossible unless the
    file was edited) keep the first answer."""

    FIELDS = ("index", "id", "label", "class", "question", "kind", "answer")

    def __init__(self, path: str | os.PathLike, *, write: bool | None = None):
        self.path = os.fspath(path)
        self.write = jax.process_index() == 0 if write is None else write
        self.records: dict[tuple[str, str], dict] = {}
        self.dropped = 0  # bytes cut off a torn tail
        if os.path.exists(self.path):
            self._load()

    def _load(self) -> None:
        good = 0  # byte offset after the last good line
        with open(self.path, "rb") as f:
            data = f.read()
        for line in data.splitlines(keepends=True):
            if not line.endswith(b"\n"):
                break
            try:
                rec = json.loads(line)
                key = (rec["id"], rec["question"])
            except (ValueError, KeyError, TypeError):
                break  # a torn write can also leave garbage that happens to end in \n
            self.records.setdefault(key, rec)
            good += len(line)
        self.dropped = len(data) - good
        if self.dropped:
            log.warning(
                "%s: dropped a torn tail of %d bytes (a killed run); kept %d answers",
                self.path,
                self.dropped,
                len(self.records),
            )
            if self.write:
                with open(self.path, "r+b") as f:
                    f.truncate(good)
                    f.flush()
                    os.fsync(f.fileno())

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self.records

    def __len__(self) -> int:
        return len(self.records)

    def append(self, records: Sequence[dict]) -> None:
        """Adds `records` (new keys only), then flush + fsync (process 0 writes; all remember)."""
        fresh = [r for r in records if (r["id"], r["question"]) not in self.records]
        for r in fresh:
            self.records[(r["id"], r["question"])] = r
        if self.write and fresh:
            os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
            with open(self.path, "ab") as f:
                f.write(b"".join(_line(r) for r in fresh))
                f.flush()
                os.fsync(f.fileno())


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
    only called for samples with pending pairs. Batches are `items[k * batch_size : ...]`, so
    their composition does not depend on what was already answered.
    """
    exit_after = int(os.environ.get(EXIT_AFTER_ENV, "0") or 0)
    written = 0
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
            slot = {index: k for k, index in enumerate(order)}
            pixels = vqa.pixels([load_image(index) for index in order])
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
            written += 1
            if exit_after and written >= exit_after:
                os._exit(17)  # simulated kill: no cleanup, no atexit, buffers as the OS has them
        yield len(batch), bool(todo)
