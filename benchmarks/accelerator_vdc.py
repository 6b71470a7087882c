"""The VDC workload of the accelerator check (`benchmarks.accelerator`): LLaVA-1.5-7B and
InstructBLIP-Vicuna-7B shapes with random bf16 weights, answers/s of our engine vs transformers'
`generate` per (image, question) and per image, and LLaVA's decode tokens/s against the
memory-bandwidth bound."""

from __future__ import annotations

from benchmarks.accelerator import (
    BOS,
    EOS,
    NAME,
    PAD,
    Ctx,
    build_torch,
    load_ours,
    log,
    torch_state,
)


def _llava(ctx: Ctx):
    """(torch model, ours, our config) of the random LLaVA-1.5-7B."""
    import jax.numpy as jnp
    import transformers
    from flax import nnx

    from vl_jax.models import llava

    spec = ctx.spec["llava"]
    hf = transformers.LlavaConfig(
        vision_config=transformers.CLIPVisionConfig(**spec["vision"]),
        text_config=transformers.LlamaConfig(**spec["text"], bos_token_id=BOS,
                                             eos_token_id=EOS, pad_token_id=PAD),
        image_token_index=spec["image_token"], vision_feature_layer=-2,
        vision_feature_select_strategy="default", projector_hidden_act="gelu",
    )  # fmt: skip
    tmodel = build_torch(transformers.LlavaForConditionalGeneration, hf, ctx.torch_device)
    state = torch_state(tmodel)
    cfg = llava.LLaVAConfig.from_hf(tmodel.config)
    layout = llava.detect_layout(state)
    ours = load_ours(
        lambda: llava.LLaVA(cfg, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0)),
        llava.hf_rules(cfg, layout), state, llava.hf_ignore(cfg, layout), ctx.mesh,
    )  # fmt: skip
    return tmodel, ours, cfg


def _instructblip(ctx: Ctx):
    """(torch model, ours, our config) of the random InstructBLIP-Vicuna-7B."""
    import jax.numpy as jnp
    import transformers
    from flax import nnx

    from vl_jax.models import instructblip

    spec = ctx.spec["instructblip"]
    hf = transformers.InstructBlipConfig(
        vision_config=spec["vision"], qformer_config=dict(spec["qformer"], pad_token_id=0),
        text_config=dict(spec["text"], model_type="llama", bos_token_id=BOS, eos_token_id=EOS,
                         pad_token_id=PAD),
        num_query_tokens=spec["queries"], image_token_index=spec["image_token"],
    )  # fmt: skip
    tmodel = build_torch(transformers.InstructBlipForConditionalGeneration, hf, ctx.torch_device)
    state = torch_state(tmodel)
    cfg = instructblip.InstructBLIPConfig.from_hf(tmodel.config)
    split_qv = "vision_model.encoder.layers.0.self_attn.q_bias" in state
    make = lambda: instructblip.InstructBLIP(cfg, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16,
                                             rngs=nnx.Rngs(0))  # fmt: skip
    ours = load_ours(make, instructblip.hf_rules(cfg, split_qv), state,
                     instructblip.hf_ignore(cfg), ctx.mesh)  # fmt: skip
    return tmodel, ours, cfg


def vdc_prompts(family: str, rows: int, p: int, image_id: int, q_vocab: int, rng):
    """(ids, mask [rows, P + T], qformer ids, mask [rows, Qt] or None) laid out as each
    processor does: LLaVA `BOS <image> x P question`, left-padded; InstructBLIP `<image> x P`,
    then left padding, then `BOS question`; 8-24 token questions, 6-20 token instructions."""
    import numpy as np

    text = [np.concatenate([[BOS], rng.integers(3, image_id, rng.integers(8, 25))])
            for _ in range(rows)]  # fmt: skip
    t = max(map(len, text))
    ids = np.full((rows, p + t), PAD, np.int64)
    mask = np.zeros_like(ids)
    for i, r in enumerate(text):
        if family == "llava":
            row = np.concatenate([r[:1], np.full(p, image_id), r[1:]])
            ids[i, p + t - len(row) :], mask[i, p + t - len(row) :] = row, 1
        else:
            ids[i, :p], mask[i, :p] = image_id, 1
            ids[i, p + t - len(r) :], mask[i, p + t - len(r) :] = r, 1
    if family == "llava":
        return ids, mask, None, None
    instr = [rng.integers(5, q_vocab, rng.integers(6, 21)) for _ in range(rows)]
    q_ids = np.zeros((rows, max(map(len, instr))), np.int64)
    q_mask = np.zeros_like(q_ids)
    for i, q in enumerate(instr):
        q_ids[i, : len(q)], q_mask[i, : len(q)] = q, 1
    return ids, mask, q_ids, q_mask


def decode_step_bytes(lm_state, cfg, rows: int, context: float) -> float:
    """Bytes one decode step must read: the decoder's weights (the input embedding table only
    when tied: a step reads just its rows) and `rows` x `context` tokens of K and V (bf16)."""
    import jax
    from flax import nnx

    weights = 0
    for path, v in nnx.to_flat_state(lm_state):
        if "embed" in ".".join(map(str, path)) and not cfg.tie_word_embeddings:
            continue
        weights += v.get_value().nbytes if isinstance(v.get_value(), jax.Array) else 0
    head_dim = cfg.head_dim or cfg.hidden_size // cfg.num_heads
    kv = rows * context * cfg.num_layers * 2 * cfg.num_kv_heads * head_dim * 2
    return float(weights + kv)


def bench_vdc(ctx: Ctx, family: str) -> list[dict]:
    import numpy as np
    import torch
    from flax import nnx

    from benchmarks.common import figure, time_interleaved
    from vl_jax.generate import Generator

    tmodel, ours, cfg = (_llava if family == "llava" else _instructblip)(ctx)
    w = ctx.spec["vdc"]
    n, q, m = w["images"], w["questions"], w["new_tokens"]
    rows, p = n * q, cfg.num_image_tokens
    rng = np.random.default_rng(0)
    q_vocab = cfg.qformer.vocab_size if family == "instructblip" else 0
    ids, mask, q_ids, q_mask = vdc_prompts(family, rows, p, cfg.image_token_id, q_vocab, rng)
    s = cfg.vision.image_size
    pixels = rng.standard_normal((n, s, s, 3), dtype=np.float32)
    index = np.repeat(np.arange(n, dtype=np.int32), q)
    decoding = dict(num_beams=1) if family == "llava" else dict(num_beams=5, repetition_penalty=1.5)
    common = dict(max_new_tokens=m, min_new_tokens=m, pad_token_id=PAD, eos_token_id=EOS,
                  **decoding)  # fmt: skip
    engine = Generator(ours, ctx.mesh)
    extra = {} if q_ids is None else dict(qformer_input_ids=q_ids, qformer_attention_mask=q_mask)

    def run_ours(new_tokens=m):
        kw = dict(common, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
        return engine(ids, mask, pixel_values=pixels, image_index=index, **extra, **kw)

    dev = ctx.torch_device
    t_px = torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy()).to(dev, torch.bfloat16)
    tt = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(dev)

    def hf_call(sel):
        """One `generate` call for rows `sel`, padded to their own longest prompt."""
        keep = (mask[sel].sum(0) > 0).nonzero()[0]
        kw = dict(input_ids=tt(ids[sel][:, keep]), attention_mask=tt(mask[sel][:, keep]),
                  pixel_values=t_px[index[sel]])  # fmt: skip
        if q_ids is not None:
            width = int(q_mask[sel].sum(1).max())
            kw.update(qformer_input_ids=tt(q_ids[sel][:, :width]),
                      qformer_attention_mask=tt(q_mask[sel][:, :width]))  # fmt: skip
        with torch.inference_mode():
            out = tmodel.generate(**kw, do_sample=False, **common)
        new = out[:, len(keep) :].cpu().numpy()
        return np.pad(new, ((0, 0), (0, m - new.shape[1])), constant_values=PAD)

    each_rows = list(range(w["each_rows"]))
    hf_each = lambda: np.concatenate([hf_call([r]) for r in each_rows])
    img_rows = [list(range(i * q, (i + 1) * q)) for i in range(w["per_image_images"])]
    hf_per_image = lambda: np.concatenate([hf_call(r) for r in img_rows])

    # Outputs first (and compilation). Random weights give flat logits and bf16 rounds both
    # sides differently, so agreement is recorded; a mapping error would make it ~1 / vocab.
    got, each, per_image = run_ours(), hf_each(), hf_per_image()
    same_first = [got[each_rows, 0] == each[:, 0], got[: len(per_image), 0] == per_image[:, 0]]
    first = float(np.mean(np.concatenate(same_first)))
    rows_equal = float((got[: len(per_image)] == per_image).all(1).mean())
    log.info("%s %s: first tokens equal to HF %.2f, rows equal %.2f", NAME, family, first,
             rows_equal)  # fmt: skip
    if not first >= 0.25:
        raise AssertionError(f"{family}: first answer tokens agree with HF on only {first:.2f}")
    fns = {"ours": run_ours, "hf_each": hf_each, "hf_per_image": hf_per_image}
    t = time_interleaved(fns, warmup=0, iters=w["iters"])
    # Decode time is a difference of two of our calls (all new tokens, one): interleaved and
    # repeated more often, as the difference is small next to the prefill of long prompts.
    run_prefill = lambda: run_ours(1)
    run_prefill()  # compiles the one-token program
    td = time_interleaved({"ours": run_ours, "ours_prefill": run_prefill}, warmup=0,
                          iters=w["decode_iters"])  # fmt: skip
    answers = {"ours": rows / t["ours"], "hf_each": len(each_rows) / t["hf_each"],
               "hf_per_image": len(per_image) / t["hf_per_image"]}  # fmt: skip
    size = "tiny" if ctx.tiny else "7B-size"
    params = ctx.params(
        model=f"{size} random {family}, bf16", images=n, questions_per_image=q, rows=rows,
        image_tokens=p, new_tokens=m, decoding=decoding, hf_each_rows=len(each_rows),
        hf_per_image_images=len(img_rows),
        prompt_tokens=[int(mask.sum(1).min()), int(mask.sum(1).max())],
        first_token_agreement=first, rows_equal_to_hf_per_image=rows_equal, seconds=dict(t),
        timing="median s per call (ours: all rows; HF: the subsets named), interleaved",
    )  # fmt: skip
    hf = f"transformers {type(tmodel).__name__}.generate (torch, bf16)"
    figs = [
        figure(NAME, f"{family}_answers_per_second", answers["ours"], answers["hf_each"],
               f"{hf}, one call per (image, question)", higher_is_better=True, params=params),
        figure(NAME, f"{family}_answers_per_second", answers["ours"], answers["hf_per_image"],
               f"{hf}, one call per image ({q} questions batched)", higher_is_better=True,
               params=params),
    ]  # fmt: skip
    # Decode: every step of every sequence (rows x beams) reads the decoder and its KV cache.
    seqs = rows * decoding["num_beams"]
    decode_s = td["ours"] - td["ours_prefill"]
    # Timing noise can exceed a tiny model's whole decode: then there is no figure (NaN).
    tps = seqs * (m - 1) / decode_s if decode_s > 0 else float("nan")
    context = float(mask.sum(1).mean()) + m / 2
    lm_state = nnx.state(ours.language_model, nnx.Param)
    step = decode_step_bytes(lm_state, cfg.text, seqs, context)
    bw, bw_kind = ctx.bw_peak()
    bound = seqs * bw / step
    dparams = dict(params, batch=seqs, bytes_per_step=step, mean_context=context,
                   bandwidth=bw, bandwidth_kind=bw_kind, measured_copy_bandwidth=ctx.peak_bw,
                   decode_seconds=decode_s, decode_timing=dict(td, iters=w["decode_iters"]),
                   method="(t(new_tokens) - t(1)) over new_tokens - 1 steps; bound = "
                   "sequences * bandwidth / (decoder weights + attended KV bytes)")  # fmt: skip
    figs.append(figure(NAME, f"{family}_decode_tokens_per_second", tps, bound,
                       "memory-bandwidth bound", higher_is_better=True,
                       params=dparams))  # fmt: skip
    return figs
