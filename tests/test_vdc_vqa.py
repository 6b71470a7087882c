"""VDC's VQA runner (vdc_jax.vqa): prompts as the LLaVA processor builds them, batched answers
equal per-pair generation (also with the images laid out over a mesh's shards), and the
resumable answers.jsonl (torn lines, no duplicates, answers read back from disk).

The model is a tiny random LLaVA (vl_jax.models.tiny.write_llava, the Hugging Face layout)
loaded as the cleanser loads it (vdc_jax.models.load_mllm); its answers are meaningless, only their equality is
tested."""

import json
import os

import numpy as np
import pytest

from vdc_jax.inputs import write_shapes_folder
from vdc_jax.models import MLLM, stop_tokens
from vdc_jax.questions import Questions
from vdc_jax.vqa import (
    DESCRIBE,
    FALLBACK_PROMPT,
    VQA,
    YES_NO,
    AnswerStore,
    Item,
    answer_dataset,
    slot_layout,
)
from vl_jax.generate import bucket

QUESTIONS = Questions(
    general=("Describe the image in detail.",),
    specific={c: [f"Is there a {c} in the image?", "Is it dark?"] for c in ("circle", "square")},
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from vl_jax.data.files import FileSource
    from vl_jax.models import llava, tiny

    path = tiny.write_llava(str(tmp_path_factory.mktemp("tiny") / "llava"))
    root = str(tmp_path_factory.mktemp("shapes"))
    write_shapes_folder(root, per_class=2)
    data = FileSource.from_folder(root)
    images = [data[i]["image"] for i in range(3)]
    model, processor = llava.from_pretrained(path), llava.load_processor(path)
    mllm = MLLM(model, processor, path, tuple(stop_tokens(path, processor.tokenizer)))
    # Equal lengths: the per-pair check then compiles one request shape fewer (test time).
    return VQA.from_mllm(mllm, yes_no_tokens=6, describe_tokens=6), processor, images


PAIRS = [("Describe the image in detail.", DESCRIBE), ("Is it dark?", YES_NO),
         ("Is there a circle in the image?", YES_NO)]  # fmt: skip


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
    pairs = [(i, q, kind) for i in range(3) for q, kind in PAIRS]
    batched = vqa.answer(pixels, pairs)  # 2 generate calls: one per answer kind
    one_by_one = [vqa.answer(pixels[i : i + 1], [(0, q, kind)])[0] for i, q, kind in pairs]
    assert batched == one_by_one
    assert all(isinstance(a, str) for a in batched)


def test_slot_layout_spreads_images_evenly_over_shards():
    size, slot = slot_layout(11, 4)  # 3, 3, 3, 2 per shard
    assert size == 12 and slot.tolist() == list(range(11))
    size, slot = slot_layout(5, 4)  # 2, 1, 1, 1
    assert size == 8 and slot.tolist() == [0, 1, 2, 4, 6]
    size, slot = slot_layout(2, 4)  # the last batch of a run: shards 2 and 3 stay empty
    assert size == 4 and slot.tolist() == [0, 1]
    for shards in (1, 2, 3, 4, 8):
        for n in range(1, 70):
            size, slot = slot_layout(n, shards)
            assert size % shards == 0 and bucket(size, multiple=shards) == size  # no re-padding
            assert len(slot) == n and np.all(np.diff(slot) > 0) and slot[-1] < size
            counts = np.bincount(slot // (size // shards), minlength=shards)
            assert counts.max() - counts.min() <= 1 and np.all(np.diff(counts) <= 0), counts
    with pytest.raises(ValueError):
        slot_layout(0, 4)


def test_images_laid_out_over_a_mesh_give_the_same_answers(tiny):
    """load_pixels on a 4-shard mesh (3 images -> slots 0, 1, 2 of 4) answers as the compact
    pixel array without a mesh does."""
    import jax

    from vl_jax.parallel import create_mesh

    vqa, processor, images = tiny
    mesh = create_mesh(devices=jax.devices()[:4])
    sharded = VQA(vqa.model, processor, yes_no_tokens=6, describe_tokens=6, mesh=mesh)
    loaded = []
    pixels, slot = sharded.load_pixels(lambda i: loaded.append(i) or images[i], [2, 0, 1])
    assert loaded == [2, 0, 1] and pixels.shape == (4, *sharded.pixel_shape())
    assert slot.tolist() == [0, 1, 2] and not pixels[3].any()  # one process holds every row
    np.testing.assert_array_equal(pixels[:3], vqa.pixels([images[2], images[0], images[1]]))
    pairs = [(i, q, kind) for i in range(3) for q, kind in PAIRS]
    want = vqa.answer(vqa.pixels([images[2], images[0], images[1]]), pairs)
    assert sharded.answer(pixels, [(int(slot[i]), q, kind) for i, q, kind in pairs]) == want


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


def test_answer_store_without_records_reads_answers_back(tmp_path):
    """keep=False holds no records; answers() reads them from the file, first answer wins."""
    path = tmp_path / "answers.jsonl"
    recs = [_rec(0, "a?", "yes"), _rec(1, "a?", "no"), _rec(0, "b?", "maybe")]
    with open(path, "w") as f:  # (s0, a?) twice: an edited file; the first line counts
        f.writelines(json.dumps(r) + "\n" for r in [*recs, _rec(0, "a?", "later")])
    kept, lean = AnswerStore(path, write=False), AnswerStore(path, write=False, keep=False)
    assert lean.records == {} and len(lean) == len(kept) == 3
    assert ("s0", "b?") in lean and ("s1", "b?") not in lean and ("s0", "c?") not in lean
    pairs = [(0, "s0", "b?"), (1, "s1", "a?"), (0, "s0", "a?")]
    assert lean.answers(pairs) == kept.answers(pairs) == ["maybe", "no", "yes"]
    lean.append([_rec(1, "b?", "yes, a circle")])  # appended after the first read: re-indexed
    writer = AnswerStore(path, write=True, keep=False)
    writer.append([_rec(1, "b?", "yes, a circle")])
    assert lean.answers([(1, "s1", "b?")]) == ["yes, a circle"]
    with pytest.raises(KeyError, match=r"sample 2 \('s2'\)"):
        lean.answers([(2, "s2", "a?")])


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
