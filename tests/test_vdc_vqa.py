"""VDC's VQA runner (vdc_jax.vqa): prompts as the LLaVA processor builds them, the pipeline
transform equal to the processor's pixels, batched answers equal per-pair generation (also with
the images coming through the input pipeline onto a mesh), the resumable answers.jsonl (torn
lines, no duplicates, answers read back from disk), resumed runs that decode only unfinished
batches, and bad images skipped and recorded.

The model is a tiny random LLaVA (vl_jax.models.tiny.write_llava, the Hugging Face layout)
loaded as the cleanser loads it (vdc_jax.models.load_mllm); its answers are meaningless, only their equality is
tested. InstructBLIP: the tiny "tiny-instructblip" through load_mllm (family from config.json),
prompts, Q-Former instructions and pixels as its processor makes them, batched answers equal to
transformers' generate per (image, question)."""

import json
import os

import numpy as np
import pytest

from vdc_jax.inputs import write_shapes_folder
from vdc_jax.models import MLLM, stop_tokens
from vdc_jax.protocol import OFFICIAL_GENERAL
from vdc_jax.questions import Questions
from vdc_jax.vqa import (
    DESCRIBE,
    FALLBACK_PROMPT,
    VQA,
    YES_NO,
    AnswerStore,
    Item,
    answer_dataset,
    pairs_of,
)
from vl_jax.images import ImageError
from vl_jax.preprocess import ClipPreprocess, HFImageProcessor

NAMES = ["circle", "square"]
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
    vqa = VQA.from_mllm(mllm, yes_no_tokens=6, describe_tokens=6)
    return vqa, processor, images, data


PAIRS = [("Describe the image in detail.", DESCRIBE), ("Is it dark?", YES_NO),
         ("Is there a circle in the image?", YES_NO)]  # fmt: skip


def test_prompts_and_transform_equal_the_processor(tiny):
    from PIL import Image

    vqa, processor, images, _ = tiny
    q = "Is there a circle in the image?"
    assert vqa.prompt(q) == FALLBACK_PROMPT.format(question=q)  # no chat template: LLaVA-1.5's
    want = processor(images=[Image.fromarray(images[0])], text=[vqa.prompt(q)], return_tensors="np")
    np.testing.assert_array_equal(vqa.prompt_ids(q), want["input_ids"][0])
    # The pipeline transform of a CLIP-processor checkpoint is the numpy ClipPreprocess (read
    # from processor_config.json, transformers 5's layout), equal to the processor's pixels;
    # the generic adapter (any fixed-size processor) is too.
    assert isinstance(vqa.transform, ClipPreprocess) and vqa.transform.output_hw == (30, 30)
    adapter = HFImageProcessor(processor.image_processor)
    assert adapter.output_hw == (30, 30)
    rng = np.random.default_rng(0)
    odd = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in [(37, 61, 3), (90, 20, 3)]]
    for image in [*images, *odd]:
        px = processor.image_processor(images=[Image.fromarray(image)], return_tensors="np")
        want = px["pixel_values"][0].transpose(1, 2, 0)
        np.testing.assert_array_equal(vqa.transform(image), want)
        np.testing.assert_array_equal(adapter(image), want)
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


def test_image_transform_falls_back_to_the_processor(tiny, tmp_path):
    """Not a CLIP image processor (SigLIP here), or no processor settings: the processor itself
    behind the generic adapter."""
    from vdc_jax.models import image_transform

    _, processor, _, _ = tiny
    assert isinstance(image_transform(str(tmp_path), processor), HFImageProcessor)
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps({"image_processor_type": "SiglipImageProcessor", "size": {"height": 30}})
    )
    assert isinstance(image_transform(str(tmp_path), processor), HFImageProcessor)


def test_a_processor_whose_size_varies_is_refused():
    class Dynamic:  # Qwen-VL style: the output follows the input's size
        def __call__(self, images, return_tensors):
            h, w = np.asarray(images[0]).shape[:2]
            return {"pixel_values": np.zeros((1, 3, h, w), np.float32)}

    with pytest.raises(ValueError, match="output size varies"):
        HFImageProcessor(Dynamic())


@pytest.mark.slow
def test_batched_answers_equal_per_pair_generation(tiny):
    vqa, _, images, _ = tiny
    pixels = np.stack([vqa.transform(x) for x in images])
    pairs = [(i, q, kind) for i in range(3) for q, kind in PAIRS]
    batched = vqa.answer(pixels, pairs)  # 2 generate calls: one per answer kind
    one_by_one = [vqa.answer(pixels[i : i + 1], [(0, q, kind)])[0] for i, q, kind in pairs]
    assert batched == one_by_one
    assert all(isinstance(a, str) for a in batched)


@pytest.mark.slow
def test_pipeline_batches_on_a_mesh_give_the_same_answers(tiny, tmp_path):
    """answer_dataset on a 4-shard mesh (3 samples, batch 3 rounded up to 4: one padding row),
    the pixels a global jax.Array from the input pipeline, answers as the compact numpy pixel
    array without a mesh does."""
    import jax

    from vl_jax.parallel import create_mesh

    vqa, processor, images, data = tiny
    mesh = create_mesh(devices=jax.devices()[:4])
    sharded = VQA(vqa.model, processor, transform=vqa.transform, yes_no_tokens=6,
                  describe_tokens=6, mesh=mesh)  # fmt: skip
    items = [Item(i, data.ids()[i], 0) for i in (2, 0, 1)]
    store = AnswerStore(tmp_path / "answers.jsonl", write=True)
    steps = list(answer_dataset(sharded, items, data, QUESTIONS, NAMES, store, batch_size=3))
    assert [(s.size, s.asked, s.skipped) for s in steps] == [(3, True, ())]
    pixels = np.stack([vqa.transform(images[i]) for i in (2, 0, 1)])
    pairs = [(r, q, kind) for r in range(3) for q, kind in pairs_of(items[r], QUESTIONS, NAMES)]
    want = vqa.answer(pixels, pairs)
    got = store.answers([(items[r].index, items[r].id, q) for r, q, _ in pairs])
    assert got == want


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


class ArraySource:
    """A RandomAccessSource of tiny images whose pixels all equal the sample's position (so a
    fake engine can tell which image a row holds); records what it decodes. `bad`: positions
    whose image cannot be read ({position: "raise"} -> ImageError, "float" -> an unusable array)."""

    name, split, class_names = "arrays", None, NAMES

    def __init__(self, n, bad=None):
        self.n, self.bad, self.decoded = n, dict(bad or {}), []

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        self.decoded.append(int(i))
        if self.bad.get(i) == "raise":
            raise ImageError(f"/data/{i}.png", "truncated or corrupt: broken data stream")
        image = np.full((2, 2, 3), i, np.float32 if self.bad.get(i) == "float" else np.uint8)
        return {"image": image, "label": i % 2, "id": f"s{i}"}

    def labels(self):
        return np.arange(self.n) % 2

    def ids(self):
        return [f"s{i}" for i in range(self.n)]


def fill(image):
    """Pipeline transform of the fakes: [2, 2, 3] float32 holding the image's value."""
    return np.full((2, 2, 3), image[0, 0, 0], np.float32)


class FakeVQA:
    """Records what it is asked; answers "<image value>:<question>" (the value = the dataset
    position of the image, see ArraySource). Reads the batch as the per-pair baseline does."""

    transform = staticmethod(fill)

    def __init__(self, mesh):
        self.mesh, self.calls = mesh, []

    def answer(self, pixels, pairs):
        pixels = np.asarray(pixels)
        self.calls.append([(int(pixels[i, 0, 0, 0]), q) for i, q, _ in pairs])
        return [f"{int(pixels[i, 0, 0, 0])}:{q}" for i, q, _ in pairs]


def test_answer_dataset_resumes_in_the_same_batches(tmp_path, mesh1):
    items = [Item(i, f"s{i}", i % 2) for i in range(5)]
    full, fake, source = (
        AnswerStore(tmp_path / "full.jsonl", write=True),
        FakeVQA(mesh1),
        ArraySource(5),
    )
    steps = list(answer_dataset(fake, items, source, QUESTIONS, NAMES, full, batch_size=2))
    assert [(s.size, s.asked) for s in steps] == [(2, True), (2, True), (1, True)]
    assert len(full) == 15 and not any(s.skipped for s in steps)
    assert [len(c) for c in fake.calls] == [6, 6, 3]  # 3 questions per sample, 2 per batch
    assert sorted(source.decoded) == list(range(5))

    # A run killed after batch 1 plus part of batch 2: only the rest is asked, batch 2 alone,
    # and batch 1's images are not decoded again.
    path = tmp_path / "part.jsonl"
    with open(path, "w") as f:
        for rec in list(full.records.values())[:8]:
            f.write(json.dumps(rec) + "\n")
    part, fake2, source2 = AnswerStore(path, write=True), FakeVQA(mesh1), ArraySource(5)
    steps = list(answer_dataset(fake2, items, source2, QUESTIONS, NAMES, part, batch_size=2))
    assert [(s.size, s.asked) for s in steps] == [(2, False), (2, True), (1, True)]
    assert fake2.calls == [fake.calls[1][2:], fake.calls[2]]
    assert sorted(source2.decoded) == [2, 3, 4]
    assert part.records == full.records
    lines = path.read_text().splitlines()
    assert len(lines) == len({(json.loads(x)["id"], json.loads(x)["question"]) for x in lines})
    assert os.path.getsize(path) == os.path.getsize(tmp_path / "full.jsonl")

    # Everything answered: nothing decoded, nothing asked.
    source3, fake3 = ArraySource(5), FakeVQA(mesh1)
    steps = list(answer_dataset(fake3, items, source3, QUESTIONS, NAMES, part, batch_size=2))
    assert [(s.size, s.asked) for s in steps] == [(2, False), (2, False), (1, False)]
    assert source3.decoded == [] and fake3.calls == []


def test_bad_images_are_skipped_and_recorded(tmp_path, mesh_4x2):
    """Samples 3 (unreadable) and 6 (an unusable array) of positions 1..7 (0 is not checked):
    their pairs are not asked, the others are; each Step names them with its reason. The batch
    of 3 is rounded up to 4 on a 4-shard mesh. A rerun tries the bad images again."""
    source = ArraySource(8, bad={3: "raise", 6: "float"})
    items = [Item(i, f"s{i}", i % 2) for i in range(1, 8)]
    store, fake = AnswerStore(tmp_path / "answers.jsonl", write=True), FakeVQA(mesh_4x2)
    steps = list(answer_dataset(fake, items, source, QUESTIONS, NAMES, store, batch_size=3))
    assert [(s.size, s.asked) for s in steps] == [(4, True), (3, True)]  # items 1-4, 5-7
    skipped = [s for step in steps for s in step.skipped]
    assert [(s.index, s.id) for s in skipped] == [(3, "s3"), (6, "s6")]
    assert "broken data stream" in skipped[0].reason and "float32" in skipped[1].reason
    asked = {v for call in fake.calls for v, _ in call}
    assert asked == {1, 2, 4, 5, 7} and len(store) == 5 * 3
    assert ("s3", QUESTIONS.general[0]) not in store

    source.decoded.clear()
    again = list(answer_dataset(FakeVQA(mesh_4x2), items, source, QUESTIONS, NAMES, store,
                                batch_size=3))  # fmt: skip
    assert [s for step in again for s in step.skipped] == skipped
    assert not any(step.asked for step in again) and sorted(source.decoded) == list(range(1, 8))


# ---- InstructBLIP ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory):
    """The cleanser's "tiny-instructblip" (vl_jax.models.tiny.write_instructblip) loaded by
    load_mllm into a workdir, and three shape images."""
    import jax
    import ml_collections

    from vdc_jax.models import TINY_INSTRUCTBLIP, load_mllm
    from vl_jax.data.files import FileSource
    from vl_jax.parallel import create_mesh

    workdir = str(tmp_path_factory.mktemp("blip_run"))
    cfg = ml_collections.ConfigDict(dict(name=TINY_INSTRUCTBLIP, dtype="float32", seed=0))
    mllm = load_mllm(cfg, workdir, create_mesh(devices=jax.devices()[:1]))
    root = str(tmp_path_factory.mktemp("blip_shapes"))
    write_shapes_folder(root, per_class=2)
    data = FileSource.from_folder(root)
    return mllm, [data[i]["image"] for i in range(3)]


@pytest.mark.slow
def test_instructblip_prompts_equal_the_processor(tiny_blip):
    """LLM prompt (P image tokens, then BOS + the question), Q-Former instruction and pixels as
    InstructBlipProcessor makes them; "raw" (LAVIS) and "chat" are the same prompt here (no chat
    template), but "raw" penalises repetitions of new tokens only."""
    from PIL import Image

    mllm, images = tiny_blip
    assert mllm.family == "instructblip" and mllm.qformer_tokenizer is not None
    raw = VQA.from_config(mllm, {"prompt": "raw", "num_beams": 5, "min_new_tokens": 1})
    chat = VQA.from_mllm(mllm)
    q = "Is there a circle in the image?"
    want = mllm.processor(images=[Image.fromarray(images[0])], text=[q], return_tensors="np")
    for vqa in (raw, chat):
        assert vqa.prompt(q) == q
        np.testing.assert_array_equal(vqa.prompt_ids(q), want["input_ids"][0])
        np.testing.assert_array_equal(vqa.qformer_ids(q), want["qformer_input_ids"][0])
    assert raw.decoding == dict(num_beams=5, repetition_penalty=1.0, length_penalty=1.0,
                                min_new_tokens=1, penalize_prompt=False)  # fmt: skip
    assert chat.decoding["penalize_prompt"] and chat.decoding["min_new_tokens"] == 0
    assert isinstance(raw.transform, HFImageProcessor)  # BLIP's processor, run per image
    px = want["pixel_values"][0].transpose(1, 2, 0)
    np.testing.assert_allclose(raw.transform(images[0]), px, rtol=0, atol=1e-6)


def test_llava_raw_prompt_is_the_question_after_the_image(tiny):
    vqa, processor, _, _ = tiny
    raw = VQA(vqa.model, processor, transform=vqa.transform, prompt="raw")
    assert raw.prompt("Is it dark?") == "<image>\nIs it dark?"
    assert len(raw.prompt_ids("Is it dark?")) < len(vqa.prompt_ids("Is it dark?"))
    from vl_jax.errors import ConfigError

    with pytest.raises(ConfigError, match="must be one of"):
        VQA(vqa.model, processor, transform=vqa.transform, prompt="vicuna")


def test_mllm_family_from_config_json(tmp_path):
    from vdc_jax.models import mllm_family
    from vl_jax.errors import ConfigError

    def family(**config):
        (tmp_path / "config.json").write_text(json.dumps(config))
        return mllm_family(str(tmp_path))

    assert family(architectures=["LlavaForConditionalGeneration"]) == "llava"
    assert family(architectures=["InstructBlipForConditionalGeneration"],
                  text_config={"model_type": "llama"}) == "instructblip"  # fmt: skip
    with pytest.raises(ConfigError, match="Flan-T5"):
        family(architectures=["InstructBlipForConditionalGeneration"],
               text_config={"model_type": "t5"})  # fmt: skip
    with pytest.raises(ConfigError, match="Blip2ForConditionalGeneration"):
        family(architectures=["Blip2ForConditionalGeneration"])


@pytest.mark.slow
def test_instructblip_answers_equal_hf_generate_per_pair(tiny_blip):
    """The paper's call pattern in transformers (one generate per (image, question), 5 beams,
    repetition penalty 1.5) gives the same answers as our batched VQA (chat prompt: the
    penalty counts the prompt as HF's does)."""
    import torch
    import transformers
    from PIL import Image

    mllm, images = tiny_blip
    vqa = VQA.from_config(mllm, {"num_beams": 5, "repetition_penalty": 1.5, "yes_no_tokens": 6,
                                 "describe_tokens": 6})  # fmt: skip
    hf = transformers.InstructBlipForConditionalGeneration.from_pretrained(mllm.path).eval()
    pixels = np.stack([vqa.transform(x) for x in images])
    pairs = [(i, q, kind) for i in range(3) for q, kind in PAIRS]
    got = vqa.answer(pixels, pairs)
    for (i, q, _), answer in zip(pairs, got, strict=True):
        enc = mllm.processor(images=[Image.fromarray(images[i])], text=[q], return_tensors="pt")
        with torch.no_grad():
            out = hf.generate(**enc, max_new_tokens=6, num_beams=5, repetition_penalty=1.5,
                              eos_token_id=list(mllm.stop_tokens), do_sample=False)  # fmt: skip
        new = out[0, enc["input_ids"].shape[1] :]
        assert answer == mllm.tokenizer.decode(new, skip_special_tokens=True).strip()
    assert len(set(got)) > 1


@pytest.mark.slow
def test_runlocal_instructblip_end_to_end(tmp_path):
    """`python -m vdc_jax.main --config configs/vdc/runlocal.py:instructblip`: the paper path
    in miniature. The tiny InstructBLIP written into the workdir, VQG and judge by its Vicuna
    decoder, VQA with the LAVIS decoding (raw prompt, 5 beams, repetition penalty 1.5), the
    official protocol (its rules and general questions, recorded in metrics.json), every pair
    answered, the report written."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    workdir = tmp_path / "blip"
    cmd = [sys.executable, "-m", "vdc_jax.main",
           "--config=configs/vdc/runlocal.py:instructblip", f"--workdir={workdir}"]  # fmt: skip
    p = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert (workdir / "tiny_instructblip" / "config.json").exists()
    run = json.loads((workdir / "run_config.json").read_text())
    assert run["model"]["name"] == "tiny-instructblip" and run["vqa"]["prompt"] == "raw"
    assert (run["vqa"]["num_beams"], run["vqa"]["repetition_penalty"]) == (5, 1.5)
    assert run["protocol"] == "official"
    answers = [json.loads(line) for line in open(workdir / "answers.jsonl")]
    questions = json.loads((workdir / "questions.json").read_text())
    assert len(answers) == 24 * (len(questions["general"]) + 4)  # 24 images, 4 per class
    metrics = json.loads((workdir / "metrics.json").read_text())
    assert metrics["counts"]["dataset"] == 24 and metrics["counts"]["dirty"] == 4
    assert metrics["protocol"]["name"] == "official"
    assert set(OFFICIAL_GENERAL) <= {a["question"] for a in answers}
    assert (workdir / "scores.csv").exists()


@pytest.mark.slow
def test_paper_config_without_weights_is_one_line(tmp_path):
    """`python -m vdc_jax.main --config configs/vdc/imagenet_dog.py:badnets` (the paper's
    InstructBLIP-Vicuna-7B, official protocol) on a machine without the weights and without
    network: one line naming the checkpoint, exit 2, no traceback. Synthetic data stands in for
    ImageNet so that the model is the first thing missing; an empty hub cache, so that a
    developer's cached 7B model is not run. (`,llava`'s config: test_vdc_protocol.)"""
    import subprocess
    import sys
    from pathlib import Path

    model = "Salesforce/instructblip-vicuna-7b"
    repo = Path(__file__).resolve().parents[1]
    cmd = [sys.executable, "-m", "vdc_jax.main", "--config=configs/vdc/imagenet_dog.py:badnets",
           "--config.data.kind=synthetic", "--config.data.per_class=2",
           "--config.corrupt.poison_per_class=1", f"--workdir={tmp_path / 'run'}"]  # fmt: skip
    hub = str(tmp_path / "hub")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": hub, "HF_HUB_CACHE": hub}
    p = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr[-3000:]
    assert "Traceback" not in p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and model in last and "HF_HUB_OFFLINE" in last
    run = json.loads((tmp_path / "run" / "run_config.json").read_text())
    assert run["model"]["name"] == model and run["protocol"] == "official"
