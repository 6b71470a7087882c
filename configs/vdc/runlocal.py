"""VDC runlocal: a tiny random MLLM on generated shapes with injected BadNets, end to end.

    python -m vdc_jax.main --config configs/vdc/runlocal.py --workdir runs/vdc_local
    python -m vdc_jax.main --config configs/vdc/runlocal.py:instructblip --workdir runs/vdc_blip
    python -m vdc_jax.main --config configs/vdc/runlocal.py:qwen2_5_vl --workdir runs/vdc_qwen

Offline, well under a minute on 2 CPU cores. It checks the plumbing — checkpoint written in the
Hugging Face layout and loaded through our verifier, VQG by the MLLM's own decoder (its random
questions are rejected and padded from templates), batched VQA, answers.jsonl, the LLM judge,
metrics and plots — NOT accuracy: the model's weights are random, so its answers and scores mean
nothing.

Arg: "llava" (default) = a tiny LLaVA, greedy, the chat prompt (image-prefix sharing), our
rules; "instructblip" = the paper configs' pipeline in miniature: a tiny InstructBLIP-Vicuna in
the official protocol (`official_protocol`, as `imagenet_dog.py:badnets` sets it: the official
rules and general questions, the raw question as the prompt, 5 beams, repetition penalty 1.5 on
new tokens, length penalty 1, at least one new token; the vision tower once per image, the
Q-Former per question), with the answer budgets cut from 256 to 4 / 12 new tokens;
"qwen2_5_vl" = a tiny Qwen2.5-VL (dynamic resolution on the pipeline's canvas) in the Qwen
configs' setting (`qwen_setting`: our rules, chat template, yes/no first).
`--config.protocol ours` keeps that decoding with our rules and general questions.
"""

from configs.common import parse_arg
from configs.vdc.common import MLLM, official_protocol, qwen_setting, vdc_config

# The tiny checkpoints (config.model.name), written to WORKDIR/tiny_llava, tiny_instructblip or
# tiny_qwen2_5_vl.
TINY = {"llava": "tiny-random", "instructblip": "tiny-instructblip",
        "qwen2_5_vl": "tiny-qwen2_5_vl"}  # fmt: skip


def get_config(arg: str | None = None):
    a = parse_arg(arg, mllm=tuple(TINY))
    c = vdc_config()
    c.data.kind = "synthetic"  # 3 classes (circle, square, triangle) x per_class, in the workdir
    c.data.per_class = 8
    c.corrupt.attack = "badnets"
    c.corrupt.target = 0
    c.corrupt.poison_per_class = 2  # 4 poisoned of 24
    c.model.name = TINY[a.mllm]  # written to the workdir on the first run
    c.model.dtype = "float32"
    c.vqg.llm = MLLM
    c.vqg.n = 4
    c.vqg.max_new_tokens = 24
    c.judge.kind = "llm"
    c.judge.llm = MLLM
    c.judge.max_new_tokens = 4
    if a.mllm == "instructblip":
        # The paper path (the same function the paper configs call): the official rules and
        # LAVIS blip2_vicuna_instruct.generate's decoding; then only the sizes are shrunk.
        official_protocol(c, "instructblip")
        c.model.name = TINY[a.mllm]
        c.judge.max_new_tokens = 4
    if a.mllm == "qwen2_5_vl":
        # The Qwen configs' setting (`imagenet_dog.py:badnets,qwen2_5_vl`: yes/no first, chat
        # template, the same model writing questions and judging) on the tiny Qwen2.5-VL; its
        # processor's own pixel budget (28^2 x 36), so images keep the tiny model's sizes.
        qwen_setting(c, "qwen2_5_vl")
        c.model.name, c.model.max_pixels = TINY[a.mllm], 0
    c.vqa.batch_size = 8
    c.vqa.yes_no_tokens = 4
    c.vqa.describe_tokens = 12
    return c
