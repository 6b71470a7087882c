"""VDC's VQA runner (vdc_jax.vqa): prompts as the LLaVA processor builds them, batched answers
equal per-pair generation, and the resumable answers.jsonl (torn lines, no duplicates).

The model is a tiny random LLaVA written with transformers (vdc_jax.inputs.write_tiny_llava)
and loaded through our verified loader; its answers are meaningless, only their equality is
tested."""

import json
import os

import numpy as np
import pytest

from vdc_jax.inputs import folder_dataset, write_shapes_folder, write_tiny_llava
from vdc_jax.questions import Questions
from vdc_jax.vqa import DESCRIBE, FALLBACK_PROMPT, VQA, YES_NO, AnswerStore, Item, answer_dataset

QUESTIONS = Questions(
    general=("Describe the image in detail.",),
    specific={c: [f"Is there a {c} in the image?", "Is it dark?"] for c in ("circle", "square")},
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from vl_jax.models import llava

    path = write_tiny_llava(str(tmp_path_factory.mktemp("tiny_llava")))
    root = str(tmp_path_factory.mktemp("shapes"))
    write_shapes_folder(root, per_class=2)
    data = folder_dataset(root)
    images = [data.source[i]["image"] for i in range(3)]
    model, processor = llava.from_pretrained(path), llava.load_processor(path)
    # Equal lengths: the per-pair check then compiles one request shape fewer (test time).
    return VQA(model, processor, yes_no_tokens=6, describe_tokens=6), processor, images


def test_prompts_and_pixels_equal_the_processor(tiny):
    from PIL import Image

    vqa, processor, images = tiny
    q = "Is there a circle in the image?"
    assert vqa.prompt(q) == FALLBACK_PROMPT.format(question=q)  # no chat template: LLaVA-1.5's
    want = processor(images=[Image.fromarray(images[0])], text=[vqa.prompt(q)], return_tensors="np")
    np.testing.assert_array_equal(vqa.prompt_ids(q), want["input_ids"][0])
    np.testing.assert_array_equal(
        vqa.pixels(images[:1]), want["pixel_values"].transpose(0, 2, 3, 1)
    )
    # With a chat template (as on the hub's llava-hf processors), the template builds the prompt.
    template = (
        "{% for m in messages %}USER: {% for c in m['content'] %}{% if c['type'] == 'image' %}"
        "<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endfor %}"
        "{% if add_generation_prompt %} ASSISTANT:{% endif %}"
    )
    processor.chat_template = template
    try:
        assert vqa.prompt(q) == FALLBACK_PROMPT.format(question=q)
    finally:
        processor.chat_template = None


def test_batched_answers_equal_per_pair_generation(tiny):
    vqa, _, images = tiny
    pixels = vqa.pixels(images)
    pairs = [(i, q, kind) for i in range(3) for q, kind in
             [("Describe the image in detail.", DESCRIBE), ("Is it dark?", YES_NO),
              ("Is there a circle in the image?", YES_NO)]]  # fmt: skip
    batched = vqa.answer(pixels, pairs)  # 2 generate calls: one per answer kind
    one_by_one = [vqa.answer(pixels[i : i + 1], [(0, q, kind)])[0] for i, q, kind in pairs]
    assert batched == one_by_one
    assert all(isinstance(a, str) for a in batched)


def _rec(i, q, answer="yes"):
    return {"index": i, "id": f"s{i}", "label": 0, "class": "circle", "question": q,
            "kind": YES_NO, "answer": answer}  # fmt: skip


def test_answer_store_drops_a_torn_tail_and_never_duplicates(tmp_path):
    path = tmp_path / "answers.jsonl"
    store = AnswerStore(path, write=True)
    store.append([_rec(0, "a?"), _rec(0, "b?"), _rec(1, "a?")])
    good = path.read_bytes()
    with open(path, "ab") as f:  # a kill mid-write: half a line, then garbage ending in \n
        f.write(b'{"index": 1, "id": "s1", "question": "b?", "ans')
    again = AnswerStore(path, write=True)
    assert len(again) == 3 and again.dropped > 0 and path.read_bytes() == good
    with open(path, "ab") as f:
        f.write(b"not json\n")
    again = AnswerStore(path, write=True)
    assert len(again) == 3 and path.read_bytes() == good
    again.append([_rec(0, "a?", "no"), _rec(1, "b?")])  # (s0, a?) is done: not re-added
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [(r["id"], r["question"]) for r in lines] == [
        ("s0", "a?"), ("s0", "b?"), ("s1", "a?"), ("s1", "b?")
    ]  # fmt: skip
    assert lines[0]["answer"] == "yes"
    reader = AnswerStore(path, write=False)  # other processes only read
    assert len(reader) == 4


class FakeVQA:
    """Records what it is asked; answers "<id-index>:<question>"."""

    def __init__(self):
        self.calls = []

    def pixels(self, images):
        return np.stack(images)

    def answer(self, pixels, pairs):
        self.calls.append([(int(pixels[i, 0, 0, 0]), q) for i, q, _ in pairs])
        return [f"{int(pixels[i, 0, 0, 0])}:{q}" for i, q, _ in pairs]


def test_answer_dataset_resumes_in_the_same_batches(tmp_path):
    items = [Item(i, f"s{i}", i % 2) for i in range(5)]
    load = lambda i: np.full((2, 2, 3), i, np.uint8)
    names = ["circle", "square"]
    full, fake = AnswerStore(tmp_path / "full.jsonl", write=True), FakeVQA()
    steps = list(answer_dataset(fake, items, load, QUESTIONS, names, full, batch_size=2))
    assert steps == [(2, True), (2, True), (1, True)] and len(full) == 15
    assert [len(c) for c in fake.calls] == [6, 6, 3]  # 3 questions per sample, 2 per batch

    # A run killed after batch 1 plus part of batch 2: only the rest is asked, batch 2 alone.
    path = tmp_path / "part.jsonl"
    with open(path, "w") as f:
        for rec in list(full.records.values())[:8]:
            f.write(json.dumps(rec) + "\n")
    part, fake2 = AnswerStore(path, write=True), FakeVQA()
    steps = list(answer_dataset(fake2, items, load, QUESTIONS, names, part, batch_size=2))
    assert steps == [(2, False), (2, True), (1, True)]
    assert fake2.calls == [fake.calls[1][2:], fake.calls[2]]
    assert part.records == full.records
    lines = path.read_text().splitlines()
    assert len(lines) == len({(json.loads(x)["id"], json.loads(x)["question"]) for x in lines})
    assert os.path.getsize(path) == os.path.getsize(tmp_path / "full.jsonl")
