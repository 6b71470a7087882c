"""The prepared accelerator check: real model sizes, bf16, ours vs PyTorch on the same GPU.

    python -m benchmarks.accelerator --out DIR            # one GPU, < 8 minutes (budget 420 s)
    python -m benchmarks.accelerator --out DIR --tiny     # the same code paths, tiny, on CPU

Writes ``DIR/accelerator.jsonl`` (one `benchmarks.common.figure` record per line, as
``benchmarks.run`` prints them; ``accelerator.jsonl.partial`` while running, renamed at the end)
and ``DIR/machine.json`` (device, nominal and measured peaks, versions). A section that fails is
logged with its traceback to ``DIR/errors.txt`` and the others still run (exit status 1).

Every model has random weights of the real sizes, built from configs in code (the GPU machine
cannot download): the PyTorch model is constructed on the device in bf16 and its state dict is
read into ours through the same verified mapping tables and sharded placement the loaders use
(`vl_jax.checkpoints.mapping.load_model`), so both sides run identical weights. Sections:

* ``clip``: CLIP ViT-L/14-336 image tower + projection (the size LLaVA-1.5 uses), images/s of
  ours (`vl_jax.encode.make_image_encoder`) vs transformers' ``CLIPVisionModelWithProjection``
  (SDPA), and each as a fraction of the bf16 peak (nominal for known GPUs, and measured).
* ``llava`` / ``instructblip``: the VDC workload (images x questions, short answers; LLaVA
  greedy, InstructBLIP the paper's 5 beams and repetition penalty 1.5) with LLaVA-1.5-7B /
  InstructBLIP-Vicuna-7B shapes: answers/s of ours (one call, each image encoded once) vs
  ``generate`` per (image, question) and per image (its questions batched); for LLaVA also
  decode tokens/s at the workload's batch against the memory-bandwidth bound (every step reads
  the decoder's weights and the attended KV cache).
* ``mcla``: one MCLA epoch at N x 768, K = 1000 (``mcla_jax.train.Trainer``), and SIC's epoch
  by our trainer vs the same SIC loop in PyTorch on the device.
* ``knn``: exact 20-NN of N x 768 (cosine, float32) by the program ``vl_jax.cluster.knn`` runs
  vs a blocked torch matmul + ``topk``; measured first at N/8 and run at full N only when that
  predicts it fits the remaining budget (the figure names the N it was measured at).

The CLIP section and the driver are here; the VDC sections are in `benchmarks.accelerator_vdc`,
MCLA and kNN in `benchmarks.accelerator_cluster`.

Timing: compiled (and checked) before timing, sides interleaved (`time_interleaved`), torch
synchronised, inputs on the device; outputs of generation are fetched to the host on both sides.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import sys
import time
import traceback

NAME = "accelerator"
SECTIONS = ("clip", "llava", "instructblip", "mcla", "knn")
# Seconds of budget a section needs left to start (estimates for one H200, never measured: no
# GPU was available when this was written); `knn` also sizes itself to what is left.
MIN_LEFT_S = dict(clip=30, llava=100, instructblip=100, mcla=45, knn=20)
BOS, EOS, PAD = 1, 2, 0

# Real sizes (transformers config fields).
VIT_L14_336 = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                   num_attention_heads=16, image_size=336, patch_size=14, hidden_act="quick_gelu",
                   layer_norm_eps=1e-5)  # fmt: skip
LLAMA_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=32, rms_norm_eps=1e-5,
                max_position_embeddings=4096)  # fmt: skip
FULL = dict(
    clip=dict(vision=dict(VIT_L14_336, projection_dim=768), batch=256),
    llava=dict(vision=VIT_L14_336, text=dict(LLAMA_7B, vocab_size=32064), image_token=32000),
    instructblip=dict(
        vision=dict(hidden_size=1408, intermediate_size=6144, num_hidden_layers=39,
                    num_attention_heads=16, image_size=224, patch_size=14, layer_norm_eps=1e-6),
        qformer=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                     num_attention_heads=12, cross_attention_frequency=2, vocab_size=30523,
                     max_position_embeddings=512),
        text=dict(LLAMA_7B, vocab_size=32002), image_token=32001, queries=32,
    ),
    vdc=dict(images=16, questions=4, new_tokens=16, each_rows=8, per_image_images=4, iters=2,
             decode_iters=5),
    mcla=dict(n=1_280_000, dim=768, k=1000, batch=512, nouns=2000),
    knn=dict(n=1_280_000, dim=768, k=20, torch_block=4096),
)  # fmt: skip
# Tiny: one layer per tower where the structure allows it (compiling is most of a CPU run).
_TINY_LLAMA = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=1,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
)
TINY = dict(
    clip=dict(vision=dict(VIT_L14_336, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                          num_attention_heads=4, image_size=56, projection_dim=32), batch=8),
    llava=dict(vision=dict(VIT_L14_336, hidden_size=64, intermediate_size=128,
                           num_hidden_layers=2, num_attention_heads=4, image_size=56),
               text=dict(_TINY_LLAMA, vocab_size=300), image_token=299),
    instructblip=dict(
        vision=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                    num_attention_heads=4, image_size=28, patch_size=14, layer_norm_eps=1e-6),
        qformer=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, cross_attention_frequency=2, vocab_size=120,
                     max_position_embeddings=64),
        text=dict(_TINY_LLAMA, vocab_size=300), image_token=299, queries=4,
    ),
    vdc=dict(images=2, questions=2, new_tokens=4, each_rows=2, per_image_images=1, iters=1,
             decode_iters=2),
    mcla=dict(n=2048, dim=32, k=10, batch=256, nouns=64),
    knn=dict(n=2048, dim=32, k=5, torch_block=512),
)  # fmt: skip

# Nominal dense bf16 FLOP/s and HBM bytes/s of GPUs we may be lent (vendor data sheets).
NOMINAL = {"H200": (989.4e12, 4.8e12), "H100": (989.4e12, 3.35e12), "A100": (312e12, 2.039e12)}

log = logging.getLogger("benchmarks")


class Ctx:
    """What every section shares: sizes, the mesh, the torch device, peaks, the deadline."""

    def __init__(self, tiny: bool, budget_s: float):
        import jax
        import torch

        from vl_jax import parallel

        self.tiny, self.spec = tiny, TINY if tiny else FULL
        self.mesh = parallel.create_mesh()
        self.torch_device = "cuda" if torch.cuda.is_available() else "cpu"
        self.deadline = time.perf_counter() + budget_s
        kind = jax.devices()[0].device_kind
        self.nominal = next((v for k, v in NOMINAL.items() if k in kind), (None, None))
        self.peak_flops, self.peak_bw = measured_peaks(tiny)
        self.versions = versions()

    def remaining(self) -> float:
        return self.deadline - time.perf_counter()

    def flops_peak(self) -> tuple[float, str]:
        if self.nominal[0]:
            return self.nominal[0], "nominal dense bf16 (data sheet)"
        return self.peak_flops, "measured bf16 matmul"

    def bw_peak(self) -> tuple[float, str]:
        if self.nominal[1]:
            return self.nominal[1], "nominal HBM bandwidth (data sheet)"
        return self.peak_bw, "measured device copy bandwidth"

    def params(self, **extra) -> dict:
        return {**self.versions, "mesh": dict(self.mesh.shape), "tiny": self.tiny, **extra}

    def sync(self):
        import torch

        if self.torch_device == "cuda":
            torch.cuda.synchronize()


def versions() -> dict:
    import jax
    import torch
    import transformers

    out = {"jax": jax.__version__, "torch": torch.__version__,
           "transformers": transformers.__version__}  # fmt: skip
    if torch.cuda.is_available():
        out["torch_device"] = torch.cuda.get_device_name(0)
        out["cuda"] = torch.version.cuda
    return out


def measured_peaks(tiny: bool) -> tuple[float, float]:
    """(bf16 [n, n] @ [n, n] FLOP/s, device copy bytes/s) measured with JAX, compiled first."""
    import jax
    import jax.numpy as jnp

    from benchmarks.common import timeit

    n = 512 if tiny else 8192
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
    mm = jax.jit(jnp.matmul).lower(a, a).compile()
    flops = 2.0 * n**3 / timeit(lambda: mm(a, a), warmup=2, iters=5)
    x = jnp.zeros(((1 << 22) if tiny else (1 << 29),), jnp.float32)  # 16 MB / 2 GiB
    copy = jax.jit(lambda v: v + 1.0).lower(x).compile()
    bw = 2.0 * x.nbytes / timeit(lambda: copy(x), warmup=2, iters=5)  # read + write
    log.info("%s: measured bf16 matmul %.1f TFLOP/s, copy %.0f GB/s", NAME, flops / 1e12, bw / 1e9)
    return flops, bw


def torch_state(model) -> dict:
    """A torch model's state dict as host numpy arrays (bf16 kept as ml_dtypes.bfloat16)."""
    import ml_dtypes
    import torch

    out = {}
    for key, t in model.state_dict().items():
        t = t.detach().to("cpu")
        out[key] = (
            t.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
            if t.dtype == torch.bfloat16
            else t.numpy()
        )
    return out


def build_torch(cls, config, device: str):
    """`cls(config)` with random weights, constructed on `device` in bf16, eval mode."""
    import torch

    torch.manual_seed(0)
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            model = cls(config)
    finally:
        torch.set_default_dtype(old)
    return model.to(device=device, dtype=torch.bfloat16).eval()


def load_ours(make, rules, state: dict, ignore, mesh):
    """Our model from a numpy state dict through the verified table, each parameter placed
    straight into its sharding on `mesh` (what `from_pretrained(..., shardings=)` does)."""
    from vl_jax import parallel
    from vl_jax.checkpoints.mapping import load_model

    shardings = functools.partial(parallel.param_shardings, mesh=mesh)
    return load_model(make, rules, state, where="random weights", ignore=ignore,
                      shardings=shardings)  # fmt: skip


# ---- CLIP image encoding -----------------------------------------------------------------------


def bench_clip(ctx: Ctx) -> list[dict]:
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch
    import transformers
    from flax import nnx

    from benchmarks.clip_encode import forward_flops_per_image
    from benchmarks.common import figure, time_interleaved
    from vl_jax import parallel
    from vl_jax.encode import make_image_encoder
    from vl_jax.models import clip, clip_config, clip_weights

    spec = ctx.spec["clip"]
    hf = transformers.CLIPVisionConfig(**spec["vision"])
    tmodel = build_torch(transformers.CLIPVisionModelWithProjection, hf, ctx.torch_device)
    cfg = clip_config.CLIPConfig(clip_config.vision_from_hf(hf), None, embed_dim=hf.projection_dim)
    ours = load_ours(
        lambda: clip.CLIP(cfg, dtype=jnp.bfloat16, param_dtype=jnp.bfloat16, rngs=nnx.Rngs(0)),
        clip_weights.hf_rules(cfg, "clip_vision_model"), torch_state(tmodel),
        clip_weights.HF_IGNORE, ctx.mesh,
    )  # fmt: skip
    encode = make_image_encoder(ours, ctx.mesh)
    b, s = spec["batch"], hf.image_size
    pixels = np.random.default_rng(0).standard_normal((b, s, s, 3), dtype=np.float32)
    x = jax.device_put(pixels.astype(jnp.bfloat16), parallel.batch_sharding(ctx.mesh, 4))
    xt = torch.from_numpy(pixels.transpose(0, 3, 1, 2).copy()).to(ctx.torch_device, torch.bfloat16)

    def run_torch():
        with torch.inference_mode():
            out = tmodel(pixel_values=xt).image_embeds
        ctx.sync()
        return out

    got = np.asarray(jax.device_get(encode(x)), np.float32)
    want = run_torch().float().cpu().numpy()
    rel = float(np.abs(got - want).max() / np.abs(want).max())
    log.info("%s clip: max |ours - torch| / max |torch| = %.4f (bf16)", NAME, rel)
    if not rel < 0.1:  # bf16 rounding is ~1e-2; a mapping error is O(1)
        raise AssertionError(f"clip outputs differ from torch: relative {rel}")
    t = time_interleaved({"ours": lambda: encode(x), "torch": run_torch}, warmup=1,
                         iters=3 if ctx.tiny else 10)  # fmt: skip
    ips = {k: b / v for k, v in t.items()}
    gflop = forward_flops_per_image(dict(spec["vision"])) / 1e9
    peak, peak_kind = ctx.flops_peak()
    params = ctx.params(model="CLIP ViT-L/14-336 image tower + projection, random bf16"
                        + (" (tiny widths)" if ctx.tiny else ""),
                        vision=spec["vision"], batch=b, dtype="bfloat16", gflops_per_image=gflop,
                        relative_diff_vs_torch=rel, peak_flops=peak, peak_kind=peak_kind,
                        measured_bf16_matmul_flops=ctx.peak_flops,
                        torch_attn=tmodel.config._attn_implementation)  # fmt: skip
    base = "transformers CLIPVisionModelWithProjection (torch, bf16)"
    frac = {k: v * gflop * 1e9 / peak for k, v in ips.items()}
    return [
        figure(NAME, "clip_images_per_second", ips["ours"], ips["torch"], base,
               higher_is_better=True, params=params),
        figure(NAME, "clip_fraction_of_bf16_peak", frac["ours"], frac["torch"], base,
               higher_is_better=True, params=params),
    ]  # fmt: skip


# ---- driver -----------------------------------------------------------------------------------


def _benches() -> dict:
    from benchmarks import accelerator_cluster as cluster
    from benchmarks import accelerator_vdc as vdc

    return {
        "clip": bench_clip,
        "llava": functools.partial(vdc.bench_vdc, family="llava"),
        "instructblip": functools.partial(vdc.bench_vdc, family="instructblip"),
        "mcla": cluster.bench_mcla,
        "knn": cluster.bench_knn,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.accelerator",
                                 description=__doc__.split("\n")[0])  # fmt: skip
    ap.add_argument("--out", required=True, help="folder for accelerator.jsonl and machine.json")
    ap.add_argument("--tiny", action="store_true", help="tiny sizes (CPU test of the code paths)")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma list of {SECTIONS}")
    ap.add_argument("--budget-s", type=float, default=420.0, help="time after which no section "
                    "starts (knn also sizes itself to it)")  # fmt: skip
    args = ap.parse_args(argv)
    only = [s for s in args.only.split(",") if s]
    unknown = sorted(set(only) - set(SECTIONS))
    if unknown or not only:
        print(f"unknown section(s) {unknown}; known: {', '.join(SECTIONS)}", file=sys.stderr)
        return 2
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as e:
        print(f"cannot create --out {args.out}: {e.strerror}", file=sys.stderr)
        return 2
    # Before JAX starts: torch shares the GPU, so JAX must not take 75 % of it up front.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s: %(message)s")  # fmt: skip
    import gc

    import jax
    import torch

    from vl_jax.fileio import atomic_open

    if not args.tiny and jax.default_backend() == "cpu":
        print("no accelerator: the full sizes need a GPU (use --tiny on CPU)", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    ctx = Ctx(args.tiny, args.budget_s)
    from benchmarks.common import device_string

    machine = dict(device=device_string(), nominal_bf16_flops=ctx.nominal[0],
                   nominal_bandwidth=ctx.nominal[1], measured_bf16_flops=ctx.peak_flops,
                   measured_copy_bandwidth=ctx.peak_bw, **ctx.versions)  # fmt: skip
    with atomic_open(os.path.join(args.out, "machine.json"), "w") as f:
        json.dump(machine, f, indent=1)
    final = os.path.join(args.out, "accelerator.jsonl")
    benches = _benches()
    failed = []
    with open(final + ".partial", "w") as out:
        for name in only:
            need = 0 if args.tiny else MIN_LEFT_S[name]
            if ctx.remaining() < need:
                failed.append(f"{name}: not started, {ctx.remaining():.0f} s of the budget left")
                log.warning("%s", failed[-1])
                continue
            s0 = time.perf_counter()
            try:
                for fig in benches[name](ctx):
                    line = json.dumps(fig)
                    print(line, flush=True)
                    out.write(line + "\n")
                    out.flush()
            except Exception:
                failed.append(f"{name}:\n{traceback.format_exc()}")
                log.error("%s %s failed:\n%s", NAME, name, traceback.format_exc())
            finally:
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            log.info("%s %s: %.1f s", NAME, name, time.perf_counter() - s0)
    os.replace(final + ".partial", final)
    if failed:
        with atomic_open(os.path.join(args.out, "errors.txt"), "w") as f:
            f.write("\n".join(failed))
    log.info("%s: all done in %.1f s", NAME, time.perf_counter() - t0)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
