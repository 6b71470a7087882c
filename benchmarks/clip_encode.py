"""`clip_encode`: images/s of our CLIP ViT-B/32 image tower vs transformers' PyTorch
`CLIPVisionModelWithProjection`, same random weights, same batch, fp32, in one process.

The torch model is built from a local copy of the openai/clip-vit-base-patch32 vision config
with a fixed seed, saved with `save_pretrained` (safetensors) and loaded into ours with
`vl_jax.models.clip.from_pretrained`, so both run identical weights; their outputs must agree
before anything is timed.
"""

from __future__ import annotations

import os
import tempfile

from benchmarks.common import (
    ForeignLoad,
    device_record,
    figure,
    log,
    matmul_fns,
    register,
    time_interleaved,
)

NAME = "clip_encode"

# openai/clip-vit-base-patch32, vision tower (transformers.CLIPVisionConfig fields).
VIT_B32 = dict(
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    patch_size=32,
    image_size=224,
    projection_dim=512,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
)
MAX_ABS_DIFF = 1e-3
QUIET_CORES = 0.15  # foreign CPU load (cores) under which a timing window counts as quiet


def forward_flops_per_image(c: dict) -> float:
    """Forward FLOPs (2 per multiply-add) of the vision tower + projection for one image.

    Counts the GEMM-like work only: patch embedding, per block q/k/v, attention scores, attention
    times V, output projection and the two MLP matmuls, and the final projection (layer norms,
    softmax, activations and biases are O(tokens * width) and left out)."""
    d, f, p, s = c["hidden_size"], c["intermediate_size"], c["patch_size"], c["image_size"]
    n = (s // p) ** 2  # patches
    t = n + 1  # tokens, with the class token
    patch = n * (p * p * 3) * d
    block = t * d * 3 * d + t * t * d + t * t * d + t * d * d + 2 * t * d * f
    proj = d * c["projection_dim"]
    return 2.0 * (patch + c["num_hidden_layers"] * block + proj)


def _torch_model(cfg: dict, seed: int):
    import torch
    import transformers

    torch.manual_seed(seed)
    model = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(**cfg))
    return model.eval()


@register(NAME)
def clip_encode(
    quick: bool,
    *,
    config: dict | None = None,
    batch: int | None = None,
    warmup: int | None = None,
    iters: int | None = None,
    peak_n: int = 2048,
    max_attempts: int | None = None,
) -> list[dict]:
    """ViT-B/32 by default; `config` overrides CLIPVisionConfig fields (the tests use a tiny one).

    Batch 32 (quick: 16), split over the mesh's `data` axis (all devices JAX sees; rounded up to
    a multiple of it). Ours, torch and the two fp32 matmul probes are timed interleaved, so the
    fraction-of-peak figures share one measurement window; when other processes load the
    machine, the window is re-measured (up to `max_attempts`, quick 2, else 3) and the quietest
    kept (`params.foreign_cpu_cores`, `params.attempts`)."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    import transformers

    from vl_jax import parallel
    from vl_jax.encode import make_image_encoder
    from vl_jax.models import clip

    cfg = {**VIT_B32, **(config or {})}
    warmup = warmup if warmup is not None else (1 if quick else 2)
    iters = iters or (5 if quick else 10)
    max_attempts = max_attempts or (2 if quick else 3)
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)

    mesh = parallel.create_mesh()
    shards = mesh.shape[parallel.DATA]
    batch = -(-(batch or (16 if quick else 32)) // shards) * shards

    # Identical weights: torch (fixed seed) -> save_pretrained -> our from_pretrained.
    tmodel = _torch_model(cfg, seed=0)
    attn_impl = tmodel.config._attn_implementation
    with tempfile.TemporaryDirectory(prefix="bench_clip_") as d:
        tmodel.save_pretrained(d, safe_serialization=True)
        ours = clip.from_pretrained(d, dtype=jnp.float32)

    encode = make_image_encoder(ours, mesh)
    s = cfg["image_size"]
    pixels = np.random.default_rng(0).standard_normal((batch, s, s, 3), dtype=np.float32)
    x = jax.device_put(pixels, parallel.batch_sharding(mesh, pixels.ndim))  # on device, not timed
    x_torch = torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 3, 1, 2)))  # NCHW

    def run_torch():
        with torch.inference_mode():
            return tmodel(pixel_values=x_torch).image_embeds

    # Correctness first; the first call of ours also compiles it.
    ref = run_torch().numpy()
    got = np.asarray(jax.block_until_ready(encode(x)))
    max_abs_diff = float(np.max(np.abs(got - ref)))
    log.info("%s: max |ours - torch| = %.3g", NAME, max_abs_diff)
    if not max_abs_diff < MAX_ABS_DIFF:
        raise AssertionError(
            f"{NAME}: outputs differ from torch by {max_abs_diff} >= {MAX_ABS_DIFF}"
        )

    jax_mm, torch_mm, mm_flops = matmul_fns(peak_n)
    fns = {"ours": lambda: encode(x), "torch": run_torch, "mm_jax": jax_mm, "mm_torch": torch_mm}
    # On a shared machine another tenant can take a core for seconds at a time, which halves
    # either side (torch's statically scheduled OpenMP loops suffer most). Re-measure a few
    # times while that is seen and keep the quietest window.
    best, attempts = None, 0
    while attempts < max_attempts:
        attempts += 1
        with ForeignLoad() as load:
            t = time_interleaved(fns, warmup=warmup if attempts == 1 else 0, iters=iters)
        if best is None or (load.cores or 0.0) < (best[1].cores or 0.0):
            best = (t, load)
        if load.cores is None or load.cores <= QUIET_CORES:
            break
        log.warning("%s: other processes kept %.2f cores busy; re-measuring", NAME, load.cores)
    t, load = best
    ips_ours, ips_torch = batch / t["ours"], batch / t["torch"]
    mm_jax, mm_torch = mm_flops / t["mm_jax"] / 1e9, mm_flops / t["mm_torch"] / 1e9
    peak = max(mm_jax, mm_torch)
    log.info("%s: ours %.1f img/s, torch %.1f img/s", NAME, ips_ours, ips_torch)
    log.info("fp32 matmul n=%d: jax %.1f GFLOP/s, torch %.1f GFLOP/s", peak_n, mm_jax, mm_torch)

    gflop_img = forward_flops_per_image(cfg) / 1e9
    params = {
        "model": "clip-vit-base-patch32 vision tower + projection, random init"
        if config is None
        else f"custom CLIPVisionConfig overrides {config}",
        "batch": batch,
        "dtype": "float32",
        "image_size": s,
        "warmup": warmup,
        "iters": iters,
        "timing": "median s/batch, ours/torch/matmuls interleaved; input on device; output blocked",
        "foreign_cpu_cores": load.cores,
        "attempts": attempts,
        "mesh": dict(mesh.shape),
        "jax_version": jax.__version__,
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": threads,
        "torch_attn_implementation": attn_impl,
        "max_abs_diff": max_abs_diff,
        "machine": device_record(),
    }
    baseline = f"transformers CLIPVisionModelWithProjection (torch, {attn_impl})"
    figs = [
        figure(
            NAME,
            "images_per_second",
            ips_ours,
            ips_torch,
            baseline,
            higher_is_better=True,
            params=params,
        )
    ]
    peak_params = {
        **params,
        "gflops_per_image": gflop_img,
        "flops_counted": "2/MAC: patch embed, per block qkv/scores/attn*V/out/mlp, projection",
        "ours_gflops_per_s": gflop_img * ips_ours,
        "baseline_gflops_per_s": gflop_img * ips_torch,
        "peak_gflops_per_s": peak,
        "peak_definition": f"max(jax, torch) measured fp32 {peak_n}^3 matmul GFLOP/s, same run",
        "matmul_gflops_per_s_jax": mm_jax,
        "matmul_gflops_per_s_torch": mm_torch,
    }
    figs.append(
        figure(
            NAME,
            "fraction_of_fp32_matmul_peak",
            gflop_img * ips_ours / peak,
            gflop_img * ips_torch / peak,
            baseline,
            higher_is_better=True,
            params=peak_params,
        )
    )
    return figs
