"""VDC runlocal: a tiny random LLaVA on generated shapes with injected BadNets, end to end.

    python -m vdc_jax.main --config configs/vdc/runlocal.py --workdir runs/vdc_local

Offline, well under a minute on 2 CPU cores. It checks the plumbing — checkpoint written in the
Hugging Face layout and loaded through our verifier, VQG by the MLLM's own decoder (its random
questions are rejected and padded from templates), batched VQA with image-prefix sharing,
answers.jsonl, the LLM judge, metrics and plots — NOT accuracy: the model's weights are random,
so its answers and scores mean nothing.
"""

from configs.vdc.common import MLLM, vdc_config


def get_config():
    c = vdc_config()
    c.data.kind = "synthetic"  # 3 classes (circle, square, triangle) x per_class, in the workdir
    c.data.per_class = 8
    c.corrupt.attack = "badnets"
    c.corrupt.target = 0
    c.corrupt.poison_per_class = 2  # 4 poisoned of 24
    c.model.name = "tiny-random"  # written to WORKDIR/tiny_llava on the first run
    c.model.dtype = "float32"
    c.vqg.llm = MLLM
    c.vqg.n = 4
    c.vqg.max_new_tokens = 24
    c.vqa.batch_size = 8
    c.vqa.yes_no_tokens = 4
    c.vqa.describe_tokens = 12
    c.judge.kind = "llm"
    c.judge.llm = MLLM
    c.judge.max_new_tokens = 4
    return c
