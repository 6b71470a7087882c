"""`vqa_generate`'s Qwen2.5-VL part: answers/s of our engine on a VDC-like VQA workload with
images of two sizes in one batch (dynamic resolution), against transformers'
`Qwen2_5_VLForConditionalGeneration.generate` on the same random weights.

A random Qwen2.5-VL-shaped model is written by `vl_jax.models.tiny.write_qwen2_vl` (fixed seed;
the real patch geometry: 14 px patches, 2 x 2 merge, 112 px attention windows with full
attention in every other layer; M-RoPE) and loaded by both sides. 4 images, two of each size,
6 questions per image in the checkpoint's chat template, greedy, <= 16 new tokens, fp32.
Baselines, as for LLaVA: (a) one `generate` call per (image, question), (b) one call per image
with its 6 questions batched (left-padded, the image repeated per row). Ours: one call for the
whole workload (each image's patches padded to the request's bucket and encoded once, each
image's prompt prefix prefilled once and shared by its questions). HF's inputs come from our
processor (equal to transformers' `Qwen2VLProcessor`, tested; transformers' own needs
torchvision). Outputs are compared (agreement recorded) before anything is timed.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile

from benchmarks.common import ForeignLoad, figure, log, time_interleaved

NAME = "vqa_generate"
QUESTIONS = (
    "Describe the image in detail.",
    "What is the main object in this image? Describe it in detail.",
    "Is there a circle in the image?",
    "Is there a square in the image?",
    "Is the object a kind of triangle?",
    "Is the main object green?",
)
NEW_TOKENS = 16


def _spec(width: int, layers: int, sizes: tuple[tuple[int, int], ...]) -> dict:
    """A Qwen2.5-VL shape: vision tower `layers` x `width` (full attention in every other layer,
    112 px windows), Qwen2 decoder `layers` x `width` (GQA 2:1, head dim 64, M-RoPE 8/12/12)
    over a 32k vocabulary; images of `sizes` (px, multiples of 28), each used twice."""
    heads = width // 64
    return dict(
        vision=dict(depth=layers, hidden_size=width, intermediate_size=int(2.7 * width),
                    num_heads=heads, out_hidden_size=width, window_size=112,
                    fullatt_block_indexes=list(range(1, layers, 2))),
        text=dict(hidden_size=width, intermediate_size=int(2.7 * width), num_hidden_layers=layers,
                  num_attention_heads=heads, num_key_value_heads=max(1, heads // 2),
                  rope_parameters={"rope_type": "default", "mrope_section": [8, 12, 12],
                                   "rope_theta": 1000000.0}),
        vocab_size=32000, sizes=sizes,
    )  # fmt: skip


# 280 x 392 px (140 image tokens) and 392 x 308 px (154): the slot bucket is 640 patches.
FULL = _spec(512, 4, ((280, 392), (392, 308)))
# 168 x 224 px (48 image tokens) and 224 x 140 (40).
QUICK = _spec(256, 2, ((168, 224), (224, 140)))


def qwen2_5_vl(quick: bool, *, spec: dict | None = None, iters: int | None = None) -> list[dict]:
    """Greedy Qwen2.5-VL answers: ours vs transformers (a) per (image, question), (b) per image."""
    import numpy as np
    import torch
    import transformers

    from benchmarks.vqa_generate import run_record
    from vl_jax import parallel
    from vl_jax.generate import Generator
    from vl_jax.models import qwen2_vl, tiny

    spec = spec or (QUICK if quick else FULL)
    iters = iters or (2 if quick else 3)
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory(prefix="bench_qwen_") as d:
        path = tiny.write_qwen2_vl(os.path.join(d, "qwen"), seed=0, vocab_size=spec["vocab_size"],
                                   vision=spec["vision"], text=spec["text"])  # fmt: skip
        tmodel = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(path).eval()
        ours = qwen2_vl.from_pretrained(path)
        proc = qwen2_vl.load_processor(path)
    # The images keep their sizes (multiples of 28 px inside the budget: no rescaling).
    budget = max(h * w for h, w in spec["sizes"])
    proc.image_processor = dataclasses.replace(proc.image_processor, max_pixels=budget)
    tok = proc.tokenizer
    eos, pad = tok.convert_tokens_to_ids("<|im_end|>"), tok.pad_token_id
    rng = np.random.default_rng(0)
    sizes = [s for s in spec["sizes"] for _ in range(2)]  # 4 images, two of each size
    images = [rng.integers(0, 256, (*s, 3), dtype=np.uint8) for s in sizes]
    n, q = len(images), len(QUESTIONS)
    prompts = [
        proc.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}],
            add_generation_prompt=True,
        )
        for text in QUESTIONS
    ]
    index = np.repeat(np.arange(n, dtype=np.int32), q)
    enc = proc(images=[images[i] for i in index], text=[prompts[r % q] for r in range(n * q)])
    pixels = [proc.image_processor.resize(im) for im in images]  # ours: each image once
    mesh = parallel.create_mesh()
    engine = Generator(ours, mesh)
    common = dict(max_new_tokens=NEW_TOKENS, pad_token_id=pad, eos_token_id=eos)

    def run_ours():
        return engine(enc["input_ids"], enc["attention_mask"], pixel_values=pixels,
                      image_index=index, **common)  # fmt: skip

    per_pair = [proc(images=[images[index[r]]], text=[prompts[r % q]]) for r in range(n * q)]
    per_image = [proc(images=[images[i]] * q, text=prompts) for i in range(n)]

    def hf_call(e):
        with torch.inference_mode():
            out = tmodel.generate(**{k: torch.from_numpy(v) for k, v in e.items()},
                                  do_sample=False, **common)  # fmt: skip
        new = out[:, e["input_ids"].shape[1] :].numpy()
        return np.pad(new, ((0, 0), (0, NEW_TOKENS - new.shape[1])), constant_values=pad)

    def hf_each():  # (a): one call per (image, question)
        return np.concatenate([hf_call(e) for e in per_pair])

    def hf_per_image():  # (b): one call per image, its questions batched
        return np.concatenate([hf_call(e) for e in per_image])

    # Correctness (and compilation) first: every row against both call patterns.
    got, each, batched = run_ours(), hf_each(), hf_per_image()
    agree = float((got == each).all(axis=1).mean())
    agree_batched = float((got == batched).all(axis=1).mean())
    log.info("%s qwen2_5_vl: rows equal to HF: per pair %.2f, per image %.2f", NAME, agree,
             agree_batched)  # fmt: skip

    fns = {"ours": run_ours, "hf_each": hf_each, "hf_per_image": hf_per_image}
    with ForeignLoad() as load:
        t = time_interleaved(fns, warmup=0, iters=iters)
    answers = n * q
    tokens = [ours.image_token_counts(ours.image_layout([p])).item() for p in pixels]
    params = {
        "model": "random Qwen2.5-VL shape: windowed ViT (2-D rotary, 2x2 merger) + Qwen2 "
        "decoder with M-RoPE",
        "vision_config": spec["vision"],
        "text_config": spec["text"],
        "vocab_size": spec["vocab_size"],
        "image_sizes_px": [list(s) for s in sizes],
        "image_tokens": tokens,
        "images": n,
        "questions_per_image": q,
        "max_new_tokens": NEW_TOKENS,
        "prompt_tokens": [
            int(enc["attention_mask"].sum(1).min()),
            int(enc["attention_mask"].sum(1).max()),
        ],
        "rows_equal_to_hf_per_pair": agree,
        "rows_equal_to_hf_per_image": agree_batched,
        **run_record(t, load, mesh, iters),
    }
    log.info("%s qwen2_5_vl: %s", NAME, {k: round(answers / v, 2) for k, v in t.items()})
    hf = "transformers Qwen2_5_VLForConditionalGeneration.generate (torch)"
    metric = "answers_per_second_qwen2_5_vl_greedy"
    return [
        figure(NAME, metric, answers / t["ours"], answers / t["hf_each"],
               f"{hf}, one call per (image, question)", higher_is_better=True, params=params),
        figure(NAME, metric, answers / t["ours"], answers / t["hf_per_image"],
               f"{hf}, one call per image (6 questions batched)", higher_is_better=True,
               params=params),
    ]  # fmt: skip
