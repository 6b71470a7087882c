"""VDC with Qwen2.5-VL: the `,qwen2_5_vl` / `,qwen2_5_vl_3b` configs, loading through
`load_mllm`, VQA on the pipeline's canvas (images of different sizes in one batch) equal to
transformers' `generate` per (image, question), runlocal end to end, and the 7B config without
weights offline (one line, exit 2)."""

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from vl_jax.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def dog_config(arg):
    return runpy.run_path(str(REPO / "configs" / "vdc" / "imagenet_dog.py"))["get_config"](arg)


def test_qwen_configs():
    """`,qwen2_5_vl` = the 7B-Instruct, `,qwen2_5_vl_3b` = the 3B, both as VDC 2.0 runs them: our
    rules, the chat template, greedy, yes/no first, the same model writing questions and
    judging, a fixed pixel budget; combined with another MLLM flag: a ConfigError."""
    from configs.vdc.common import QWEN_MAX_PIXELS, YES_NO_FIRST

    for arg, name in [("badnets,qwen2_5_vl", "Qwen/Qwen2.5-VL-7B-Instruct"),
                      ("sig,qwen2_5_vl_3b", "Qwen/Qwen2.5-VL-3B-Instruct")]:  # fmt: skip
        c = dog_config(arg)
        assert c.model.name == name and c.model.max_pixels == QWEN_MAX_PIXELS
        assert c.protocol == "ours" and c.vqa.prompt == "chat" and c.vqa.num_beams == 1
        assert c.vqa.yes_no_instruction == YES_NO_FIRST
        assert c.vqg.llm == c.judge.llm == "mllm" and c.judge.kind == "llm"
    assert "max_pixels" not in dog_config("badnets").model  # the other configs are unchanged
    for arg in ("badnets,qwen2_5_vl,llava", "badnets,qwen2_5_vl,qwen2_5_vl_3b"):
        with pytest.raises(ConfigError, match="does not combine"):
            dog_config(arg)


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory):
    from vdc_jax.models import TINY_QWEN2_5_VL, load_mllm
    from vl_jax.parallel import create_mesh

    workdir = str(tmp_path_factory.mktemp("qwen_run"))
    cfg = ml_collections.ConfigDict(dict(name=TINY_QWEN2_5_VL, dtype="float32", seed=0))
    return load_mllm(cfg, workdir, create_mesh(devices=jax.devices()[:1]))


@pytest.mark.slow
def test_vqa_on_the_canvas_equals_hf_generate_per_pair(tiny_qwen):
    """The tiny Qwen2.5-VL through `load_mllm` (family from config.json, the canvas transform)
    and VDC's VQA: images of two sizes in one batch, description and yes/no questions (with
    the yes/no-first instruction), every answer equal to transformers' `generate` on the
    processor's inputs for that (image, question) alone, with the checkpoint's chat template."""
    from vdc_jax.vqa import VQA
    from vl_jax.models.qwen2_vl_preprocess import CanvasTransform

    mllm = tiny_qwen
    assert mllm.family == "qwen2_vl" and isinstance(mllm.transform, CanvasTransform)
    instruction = "Answer Yes or No first, then give a short reason."
    vqa = VQA.from_mllm(mllm, describe_tokens=6, yes_no_tokens=5, yes_no_instruction=instruction)
    rng = np.random.RandomState(0)
    images = [rng.randint(0, 256, s, np.uint8) for s in [(70, 90, 3), (120, 60, 3)]]
    pixels = np.stack([mllm.transform(im) for im in images])  # what the pipeline batches
    pairs = [(i, q, kind) for i in range(2) for q, kind in
             [("Describe the image.", "describe"), ("Is there a dog in the image?", "yes_no")]]  # fmt: skip
    got = vqa.answer(pixels, pairs)
    hf = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(mllm.path).eval()
    proc, tok = mllm.processor, mllm.tokenizer
    for (i, q, kind), answer in zip(pairs, got, strict=True):
        text = q + (f" {instruction}" if kind == "yes_no" else "")
        prompt = tok.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}],
            add_generation_prompt=True, tokenize=False,
        )  # fmt: skip
        enc = proc(images=[Image.fromarray(images[i])], text=[prompt])
        with torch.no_grad():
            out = hf.generate(**{k: torch.from_numpy(v) for k, v in enc.items()},
                              max_new_tokens=6 if kind == "describe" else 5, do_sample=False,
                              eos_token_id=list(mllm.stop_tokens))  # fmt: skip
        new = out[0, enc["input_ids"].shape[1] :]
        assert answer == tok.decode(new, skip_special_tokens=True).strip()
    assert len(set(got)) > 1


@pytest.mark.slow
def test_max_pixels_is_qwen_only(tiny_qwen, tmp_path):
    """`config.model.max_pixels` caps the processor's budget (hence the canvas); for a
    fixed-size family it is a ConfigError."""
    from vdc_jax.models import TINY, load_mllm
    from vl_jax.parallel import create_mesh

    mesh = create_mesh(devices=jax.devices()[:1])
    cfg = ml_collections.ConfigDict(dict(name="tiny-qwen2_5_vl", dtype="float32", seed=0,
                                         max_pixels=56 * 56 * 4))  # fmt: skip
    small = load_mllm(cfg, os.path.dirname(tiny_qwen.path), mesh)
    assert small.processor.image_processor.max_pixels == 56 * 56 * 4
    assert small.transform.output_hw == (168, 168)  # sqrt(2 * 112^2) -> 168 px
    cfg = ml_collections.ConfigDict(dict(name=TINY, dtype="float32", seed=0, max_pixels=1000))
    with pytest.raises(ConfigError, match="max_pixels"):
        load_mllm(cfg, str(tmp_path), mesh)


@pytest.mark.slow
def test_runlocal_qwen2_5_vl_end_to_end(tmp_path):
    """`python -m vdc_jax.main --config configs/vdc/runlocal.py:qwen2_5_vl`: the tiny Qwen2.5-VL
    written into the workdir, questions and judge by its own decoder (text only), VQA through
    the canvas pipeline with the yes/no-first prompt, every pair answered, the report written."""
    workdir = tmp_path / "qwen"
    cmd = [sys.executable, "-m", "vdc_jax.main", "--config=configs/vdc/runlocal.py:qwen2_5_vl",
           f"--workdir={workdir}"]  # fmt: skip
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    assert (workdir / "tiny_qwen2_5_vl" / "config.json").exists()
    run = json.loads((workdir / "run_config.json").read_text())
    assert run["model"]["name"] == "tiny-qwen2_5_vl" and run["protocol"] == "ours"
    assert run["vqa"]["yes_no_instruction"].startswith("Answer Yes or No first")
    answers = [json.loads(line) for line in open(workdir / "answers.jsonl")]
    questions = json.loads((workdir / "questions.json").read_text())
    assert len(answers) == 24 * (len(questions["general"]) + 4)  # 24 images, 4 per class
    assert {a["kind"] for a in answers} == {"describe", "yes_no"}
    metrics = json.loads((workdir / "metrics.json").read_text())
    assert metrics["counts"]["dataset"] == 24 and metrics["counts"]["dirty"] == 4
    assert (workdir / "scores.csv").exists()
    assert (workdir / "skipped.tsv").read_text().splitlines() == ["id\treason"]  # none skipped


@pytest.mark.slow
def test_qwen_config_without_weights_is_one_line(tmp_path):
    """`imagenet_dog.py:badnets,qwen2_5_vl` without the weights and without network: one line
    naming Qwen/Qwen2.5-VL-7B-Instruct, exit 2, no traceback (an empty hub cache, synthetic
    data standing in for ImageNet so that the model is the first thing missing)."""
    model = "Qwen/Qwen2.5-VL-7B-Instruct"
    cmd = [sys.executable, "-m", "vdc_jax.main",
           "--config=configs/vdc/imagenet_dog.py:badnets,qwen2_5_vl",
           "--config.data.kind=synthetic", "--config.data.per_class=2",
           "--config.corrupt.poison_per_class=1", f"--workdir={tmp_path / 'run'}"]  # fmt: skip
    hub = str(tmp_path / "hub")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": hub, "HF_HUB_CACHE": hub}
    p = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 2, p.stderr[-3000:]
    assert "Traceback" not in p.stderr
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and model in last and "HF_HUB_OFFLINE" in last
