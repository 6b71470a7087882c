"""`vqa_generate`: answers/s of our generation engine on a VDC-like VQA workload (N images x 6
questions, answers of up to 16 new tokens) against transformers' PyTorch `generate` on the same
random-weight LLaVA (CLIP tower + Llama decoder), on a random InstructBLIP-Vicuna-shaped
model (ViT, Q-Former, Llama decoder) with the paper's decoding: 5 beams, repetition penalty 1.5,
and on a random Qwen2.5-VL-shaped model with images of two sizes in one batch
(`benchmarks.vqa_generate_qwen`).

Baselines, as VDC's code and its re-implementation call HF:
  (a) one `generate` call per (image, question) (batch 1), as the official code does;
  (b) one call per image with its 6 questions batched (left-padded), the image repeated per row.
Ours runs the whole workload in one call: each image encoded once and shared by its 6 questions.
The checkpoint is written once by `vl_jax.models.tiny.write_llava` (fixed seed, the Hugging Face
layout) and loaded by both transformers and `vl_jax.models.llava.from_pretrained`, so both sides
run identical weights; greedy outputs are compared (agreement recorded) before anything is timed.
"""

from __future__ import annotations

import os
import tempfile

from benchmarks.common import ForeignLoad, figure, log, register, time_interleaved

NAME = "vqa_generate"
QUESTIONS = 6
NEW_TOKENS = 16
# tiny.write_llava's word-level vocabulary, padded to vocab_size: <image> is the last id.
IMG, BOS, PAD, EOS = 31999, 3, 1, 2

FULL = dict(
    text=dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=4, num_attention_heads=8,
              num_key_value_heads=8, vocab_size=32000),
    vision=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=4,
                num_attention_heads=8, image_size=224, patch_size=14),
    images=4,
)  # fmt: skip
QUICK = dict(
    text=dict(hidden_size=256, intermediate_size=688, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=4, vocab_size=32000),
    vision=dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=2,
                num_attention_heads=4, image_size=224, patch_size=32),
    images=4,
)  # fmt: skip


def _write_llava(spec: dict, path: str, seed: int) -> str:
    """The benchmark's random LLaVA, written with `tiny.write_llava` (no torch)."""
    from vl_jax.models import tiny

    vision = {k: v for k, v in spec["vision"].items() if k not in ("image_size", "patch_size")}
    text = {k: v for k, v in spec["text"].items() if k != "vocab_size"}
    return tiny.write_llava(
        path, seed=seed, vocab_size=spec["text"]["vocab_size"], vision=vision, text=text,
        image_size=spec["vision"]["image_size"], patch_size=spec["vision"]["patch_size"],
    )  # fmt: skip


def _prompts(n_images: int, p: int, rng):
    """Left-padded [N*6, T] ids/mask: BOS, P image tokens, a 6-20 token "question"; row
    i * 6 + j is question j about image i."""
    import numpy as np

    rows = [
        np.concatenate([[BOS], [IMG] * p, rng.integers(3, IMG, rng.integers(6, 21))])
        for _ in range(n_images * QUESTIONS)
    ]
    t = max(map(len, rows))
    ids = np.full((len(rows), t), PAD, np.int64)
    mask = np.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, t - len(r) :], mask[i, t - len(r) :] = r, 1
    return ids, mask


@register(NAME)
def vqa_generate(
    quick: bool,
    *,
    spec: dict | None = None,
    iters: int | None = None,
    beams: int = 3,
    blip_spec: dict | None = None,
    families: tuple[str, ...] = ("llava", "instructblip", "qwen2_5_vl"),
    qwen_spec: dict | None = None,
) -> list[dict]:
    """LLaVA (`spec`): greedy ours vs (a) and (b), beam search (`beams`) ours vs (b);
    InstructBLIP (`blip_spec`): the paper's 5 beams, ours vs (a) and (b); Qwen2.5-VL
    (`qwen_spec`): two image sizes in one batch, greedy, ours vs (a) and (b)."""
    figs = []
    if "llava" in families:
        figs += _llava(quick, spec=spec, iters=iters, beams=beams)
    if "instructblip" in families:
        figs += _instructblip(quick, spec=blip_spec, iters=iters)
    if "qwen2_5_vl" in families:
        from benchmarks.vqa_generate_qwen import qwen2_5_vl

        figs += qwen2_5_vl(quick, spec=qwen_spec, iters=iters)
    return figs


def run_record(t: dict, load, mesh, iters: int) -> dict:
    """The ``params`` every `vqa_generate` figure shares: timing protocol, machine load,
    mesh, library versions and the seconds of each timed variant (``t``)."""
    import jax
    import torch
    import transformers

    return {
        "dtype": "float32",
        "iters": iters,
        "timing": "median s per workload, all variants interleaved; compiled before timing",
        "foreign_cpu_cores": load.cores,
        "mesh": dict(mesh.shape),
        "jax_version": jax.__version__,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        **{f"seconds_{k}": v for k, v in t.items()},
    }


def _llava(quick: bool, *, spec: dict | None, iters: int | None, beams: int) -> list[dict]:
    """Greedy: ours vs (a) and (b); beam search (`beams`): ours vs (b) with the same beams."""
    import numpy as np
    import torch
    import transformers

    from vl_jax import parallel
    from vl_jax.generate import Generator
    from vl_jax.models import llava

    spec = spec or (QUICK if quick else FULL)
    iters = iters or (2 if quick else 3)
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory(prefix="bench_llava_") as d:
        path = _write_llava(spec, os.path.join(d, "llava"), seed=0)
        tmodel = transformers.LlavaForConditionalGeneration.from_pretrained(path).eval()
        ours = llava.from_pretrained(path)
    assert (ours.config.image_token_id, ours.config.text.vocab_size) == (IMG, IMG + 1)
    p = ours.config.num_image_tokens
    n = spec["images"]
    rng = np.random.default_rng(0)
    ids, mask = _prompts(n, p, rng)
    s = spec["vision"]["image_size"]
    pixels = rng.standard_normal((n, s, s, 3), dtype=np.float32)
    index = np.repeat(np.arange(n, dtype=np.int32), QUESTIONS)
    mesh = parallel.create_mesh()
    engine = Generator(ours, mesh)
    t_ids, t_mask = torch.tensor(ids), torch.tensor(mask)
    t_px = torch.tensor(pixels.transpose(0, 3, 1, 2))  # NCHW
    common = dict(max_new_tokens=NEW_TOKENS, pad_token_id=PAD, eos_token_id=EOS)

    def run_ours(num_beams=1):
        return engine(ids, mask, pixel_values=pixels, image_index=index, num_beams=num_beams,
                      **common)  # fmt: skip

    def hf_call(rows, images, num_beams=1):
        # Each call gets its own left padding (its rows' longest prompt), as a caller would.
        r_mask = t_mask[rows]
        start = int((r_mask.sum(0) == 0).sum())
        with torch.inference_mode():
            out = tmodel.generate(
                t_ids[rows, start:], attention_mask=r_mask[:, start:], pixel_values=t_px[images],
                do_sample=False, num_beams=num_beams, **common,
            )  # fmt: skip
        new = out[:, ids.shape[1] - start :].numpy()
        return np.pad(new, ((0, 0), (0, NEW_TOKENS - new.shape[1])), constant_values=PAD)

    def hf_each():  # (a): one call per (image, question)
        return np.concatenate([hf_call([r], [index[r]]) for r in range(len(ids))])

    def hf_per_image(num_beams=1):  # (b): one call per image, its questions batched
        out = []
        for i in range(n):
            rows = list(range(i * QUESTIONS, (i + 1) * QUESTIONS))
            out.append(hf_call(rows, [i] * QUESTIONS, num_beams))
        return np.concatenate(out)

    # Correctness (and compilation) first. Random weights give flat logits, so an fp32 near-tie
    # can flip one token and everything after it; agreement is recorded, not required.
    got, want = run_ours(), hf_per_image()
    agree = float((got == want).all(axis=1).mean())
    first = float((got[:, 0] == want[:, 0]).mean())
    beam_agree = float((run_ours(beams) == hf_per_image(beams)).all(axis=1).mean())
    log.info("%s: rows equal to HF: greedy %.2f (first tokens %.2f), beam %.2f", NAME, agree,
             first, beam_agree)  # fmt: skip

    fns = {"ours": run_ours, "hf_each": hf_each, "hf_per_image": hf_per_image}
    fns |= {"ours_beam": lambda: run_ours(beams), "hf_beam": lambda: hf_per_image(beams)}
    with ForeignLoad() as load:
        t = time_interleaved(fns, warmup=0, iters=iters)
    answers = len(ids)
    params = {
        "model": "random LLaVA: CLIP vision tower + 2-layer projector + Llama decoder",
        "vision_config": spec["vision"],
        "text_config": spec["text"],
        "image_tokens": p,
        "images": n,
        "questions_per_image": QUESTIONS,
        "max_new_tokens": NEW_TOKENS,
        "prompt_tokens": [int(mask.sum(1).min()), int(mask.sum(1).max())],
        "rows_equal_to_hf": agree,
        "first_token_agreement": first,
        "beam_rows_equal_to_hf": beam_agree,
        "generated_tokens_per_s_ours": answers * NEW_TOKENS / t["ours"],
        **run_record(t, load, mesh, iters),
    }
    log.info("%s: %s", NAME, {k: round(answers / v, 2) for k, v in t.items()})
    hf = "transformers LlavaForConditionalGeneration.generate (torch)"
    figs = [
        figure(NAME, "answers_per_second_greedy", answers / t["ours"], answers / t["hf_each"],
               f"{hf}, one call per (image, question)", higher_is_better=True,
               params=params),
        figure(NAME, "answers_per_second_greedy", answers / t["ours"],
               answers / t["hf_per_image"], f"{hf}, one call per image (6 questions batched)",
               higher_is_better=True, params=params),
        figure(NAME, f"answers_per_second_beam{beams}", answers / t["ours_beam"],
               answers / t["hf_beam"], f"{hf}, num_beams={beams}, one call per image",
               higher_is_better=True, params=params),
    ]  # fmt: skip
    return figs


# ---- InstructBLIP ------------------------------------------------------------------------------
BLIP_BEAMS, BLIP_PENALTY = 5, 1.5  # the paper's (LAVIS blip2_vicuna_instruct) decoding


def _blip_spec(width: int, layers: int, patch: int, text_ffn: int) -> dict:
    """An InstructBLIP-Vicuna-shaped model: 224 px ViT, Q-Former with the paper's 32 queries
    (cross-attention every 2nd layer), Llama decoder over a 32k vocabulary, 4 images."""
    part = dict(hidden_size=width, num_hidden_layers=layers, num_attention_heads=width // 64)
    return dict(
        vision=dict(part, intermediate_size=4 * width),
        qformer=dict(part, intermediate_size=4 * width, cross_attention_frequency=2),
        text=dict(part, intermediate_size=text_ffn, num_key_value_heads=width // 64),
        image_size=224, patch_size=patch, num_query_tokens=32, vocab_size=32000, images=4,
    )  # fmt: skip


BLIP_QUICK = _blip_spec(256, 2, 32, 688)  # 50 image tokens, widths 256
BLIP_FULL = _blip_spec(512, 4, 14, 1376)  # 257 image tokens, widths 512


def _blip_prompts(n_images: int, p: int, q_vocab: int, rng):
    """As InstructBlipProcessor lays them out, row i * 6 + j = question j about image i:
    ids, mask [N*6, P + T] (P image tokens, left padding, BOS + a 6-20 token "question") and
    the Q-Former instruction q_ids, q_mask [N*6, Qt] (right-padded, 6-20 tokens)."""
    import numpy as np

    rows = n_images * QUESTIONS
    text = [np.concatenate([[BOS], rng.integers(3, IMG, rng.integers(6, 21))]) for _ in range(rows)]
    instr = [rng.integers(5, q_vocab, rng.integers(6, 21)) for _ in range(rows)]
    t, qt = max(map(len, text)), max(map(len, instr))
    ids = np.full((rows, p + t), PAD, np.int64)
    mask = np.zeros_like(ids)
    ids[:, :p], mask[:, :p] = IMG, 1
    q_ids = np.zeros((rows, qt), np.int64)
    q_mask = np.zeros_like(q_ids)
    for i, (r, q) in enumerate(zip(text, instr, strict=True)):
        ids[i, p + t - len(r) :], mask[i, p + t - len(r) :] = r, 1
        q_ids[i, : len(q)], q_mask[i, : len(q)] = q, 1
    return ids, mask, q_ids, q_mask


def _instructblip(quick: bool, *, spec: dict | None, iters: int | None) -> list[dict]:
    """5-beam InstructBLIP answers: ours (one call: the ViT once per image, the Q-Former per
    row) vs transformers (a) per (image, question) and (b) per image, 6 questions batched."""
    import numpy as np
    import torch
    import transformers

    from vl_jax import parallel
    from vl_jax.generate import Generator
    from vl_jax.models import instructblip, tiny

    spec = spec or (BLIP_QUICK if quick else BLIP_FULL)
    iters = iters or (2 if quick else 3)
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory(prefix="bench_blip_") as d:
        path = tiny.write_instructblip(
            os.path.join(d, "blip"), seed=0, vocab_size=spec["vocab_size"],
            image_size=spec["image_size"], patch_size=spec["patch_size"],
            num_query_tokens=spec["num_query_tokens"], vision=spec["vision"],
            qformer=spec["qformer"], text=spec["text"],
        )  # fmt: skip
        tmodel = transformers.InstructBlipForConditionalGeneration.from_pretrained(path).eval()
        ours = instructblip.from_pretrained(path)
    assert ours.config.image_token_id == IMG
    p, n = ours.config.num_image_tokens, spec["images"]
    rng = np.random.default_rng(0)
    ids, mask, q_ids, q_mask = _blip_prompts(n, p, ours.config.qformer.vocab_size, rng)
    s = spec["image_size"]
    pixels = rng.standard_normal((n, s, s, 3), dtype=np.float32)
    index = np.repeat(np.arange(n, dtype=np.int32), QUESTIONS)
    mesh = parallel.create_mesh()
    engine = Generator(ours, mesh)
    t_px = torch.tensor(pixels.transpose(0, 3, 1, 2))  # NCHW
    common = dict(max_new_tokens=NEW_TOKENS, pad_token_id=PAD, eos_token_id=EOS,
                  num_beams=BLIP_BEAMS, repetition_penalty=BLIP_PENALTY)  # fmt: skip

    def run_ours():
        return engine(ids, mask, pixel_values=pixels, image_index=index, qformer_input_ids=q_ids,
                      qformer_attention_mask=q_mask, **common)  # fmt: skip

    def hf_call(rows):
        # Each call pads to its own rows' longest prompt / instruction, as the processor would.
        m, qm = mask[rows], q_mask[rows]
        keep = (m.sum(0) > 0).nonzero()[0]
        q_keep = slice(0, int(qm.sum(1).max()))
        with torch.inference_mode():
            out = tmodel.generate(
                pixel_values=t_px[index[rows]], input_ids=torch.tensor(ids[rows][:, keep]),
                attention_mask=torch.tensor(m[:, keep]),
                qformer_input_ids=torch.tensor(q_ids[rows][:, q_keep]),
                qformer_attention_mask=torch.tensor(qm[:, q_keep]), do_sample=False, **common,
            )  # fmt: skip
        new = out[:, len(keep) :].numpy()
        return np.pad(new, ((0, 0), (0, NEW_TOKENS - new.shape[1])), constant_values=PAD)

    def hf_each():  # (a): one call per (image, question), the paper's call pattern
        return np.concatenate([hf_call([r]) for r in range(len(ids))])

    def hf_per_image():  # (b): one call per image, its questions batched
        return np.concatenate([hf_call(list(range(i * QUESTIONS, (i + 1) * QUESTIONS)))
                               for i in range(n)])  # fmt: skip

    # Correctness (and compilation) first: every row against both call patterns.
    got, each, batched = run_ours(), hf_each(), hf_per_image()
    agree = float((got == each).all(axis=1).mean())
    agree_batched = float((got == batched).all(axis=1).mean())
    log.info("%s instructblip: 5-beam rows equal to HF: per pair %.2f, per image %.2f", NAME,
             agree, agree_batched)  # fmt: skip

    fns = {"ours": run_ours, "hf_each": hf_each, "hf_per_image": hf_per_image}
    with ForeignLoad() as load:
        t = time_interleaved(fns, warmup=0, iters=iters)
    answers = len(ids)
    params = {
        "model": "random InstructBLIP-Vicuna shape: ViT + Q-Former + Llama decoder",
        **{f"{k}_config": spec[k] for k in ("vision", "qformer", "text")},
        "image_size": spec["image_size"],
        "patch_size": spec["patch_size"],
        "query_tokens": p,
        "images": n,
        "questions_per_image": QUESTIONS,
        "max_new_tokens": NEW_TOKENS,
        "num_beams": BLIP_BEAMS,
        "repetition_penalty": BLIP_PENALTY,
        "prompt_tokens": [int(mask.sum(1).min()), int(mask.sum(1).max())],
        "rows_equal_to_hf_per_pair": agree,
        "rows_equal_to_hf_per_image": agree_batched,
        **run_record(t, load, mesh, iters),
    }
    log.info("%s instructblip: %s", NAME, {k: round(answers / v, 2) for k, v in t.items()})
    hf = "transformers InstructBlipForConditionalGeneration.generate (torch), num_beams=5"
    metric = f"answers_per_second_instructblip_beam{BLIP_BEAMS}"
    return [
        figure(NAME, metric, answers / t["ours"], answers / t["hf_each"],
               f"{hf}, one call per (image, question)", higher_is_better=True, params=params),
        figure(NAME, metric, answers / t["ours"], answers / t["hf_per_image"],
               f"{hf}, one call per image (6 questions batched)", higher_is_better=True,
               params=params),
    ]  # fmt: skip
