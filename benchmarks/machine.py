"""What machine a figure was measured on: CPU, ISA, cores, library versions, and its best fp32 GEMM.

    python -m benchmarks.machine [--quick]

prints one JSON object (`describe()`); every benchmark's figures carry the same record
(`benchmarks.common.device_record`), so a figure always names its machine kind.

Why a measured GEMM and not a nominal peak: on the 2-core CI-class machines this project runs
on, the same "AMD EPYC" model string has come with very different float32 GEMM speeds (AVX-512
with full-width units, double-pumped AVX-512, AVX2 only), and XLA, PyTorch and numpy's BLAS
rank differently on each. The probe times all three on the same shapes in one process,
interleaved, so "ours vs the best GEMM this machine does" is a like-for-like ratio.

The probe shapes are the square 2048^3 GEMM and the K = 512 shape of kNN's score blocks and
CLIP's projections (``[2048, 512] @ [512, 8192]``), where XLA's CPU GEMM trailed BLAS most.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys

# CPU flags that decide float32 GEMM speed (as /proc/cpuinfo spells them).
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")
GEMM_SHAPES = ((2048, 2048, 2048), (2048, 512, 8192))  # (M, K, N) of [M, K] @ [K, N]
# Environment variables that change which kernels the libraries pick.
ENV_KEYS = ("XLA_FLAGS", "OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "ATEN_CPU_CAPABILITY",
            "OMP_NUM_THREADS")  # fmt: skip


def _cpuinfo() -> dict[str, str]:
    """The first processor's block of /proc/cpuinfo as {key: value}; {} where there is none."""
    out: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break
                key, _, value = line.partition(":")
                out[key.strip()] = value.strip()
    except OSError:
        pass
    return out


def cpu_model() -> str:
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def isa_flags() -> list[str]:
    """Those of `ISA_FLAGS` this CPU reports, in `ISA_FLAGS` order."""
    have = set(_cpuinfo().get("flags", "").split())
    return [f for f in ISA_FLAGS if f in have]


def cores() -> int:
    """CPUs this process may run on (the affinity mask, else `os.cpu_count()`)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:  # not installed, or broken: recorded as absent
        return None


def blas_libraries() -> list[dict]:
    """Every BLAS loaded in this process as threadpoolctl sees it (numpy's, torch's, faiss's
    each bundle their own): library file, implementation, version, kernel (`architecture`,
    e.g. OpenBLAS's SkylakeX / Haswell / Zen), threads. numpy's is the one whose file is in
    ``numpy.libs`` (`numpy_blas`); faiss-cpu's wheel, for one, bundles an older OpenBLAS whose
    kernel choice can differ from numpy's on the same CPU."""
    try:
        import numpy  # noqa: F401  (loads numpy's BLAS so that threadpoolctl finds it)
        from threadpoolctl import threadpool_info
    except ImportError:
        return []
    keys = ("internal_api", "version", "architecture", "num_threads")
    return [
        {
            "file": os.path.basename(lib.get("filepath", "")),
            "package": os.path.basename(os.path.dirname(lib.get("filepath", ""))),
            **{k: lib.get(k) for k in keys},
        }
        for lib in threadpool_info()
        if lib.get("user_api") == "blas"
    ]


def numpy_blas(libs: list[dict]) -> dict | None:
    return next((lib for lib in libs if lib["package"] == "numpy.libs"), None)


def versions() -> dict:
    import jax
    import jaxlib

    out = {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
    }
    for name in ("numpy", "torch", "sklearn", "faiss", "transformers"):
        out[name] = _version(name)
    return out


@functools.cache
def static_record() -> dict:
    """Everything but the GEMM probe: cheap, the same for every figure of a process."""
    import jax

    d = jax.devices()[0]
    return {
        "cpu_model": cpu_model(),
        "isa": isa_flags(),
        "cores": cores(),
        "jax_device": f"{d.platform}:{d.device_kind}",
        "versions": versions(),
        "numpy_blas": numpy_blas(blas := blas_libraries()),
        "blas_libraries": blas,
        "env": {k: os.environ[k] for k in ENV_KEYS if k in os.environ},
    }


def short(record: dict) -> str:
    """One line: 'cpu:cpu | AMD EPYC | 2 cores | avx2,fma,avx512f | jax 0.10.2'."""
    return (
        f"{record['jax_device']} | {record['cpu_model']} | {record['cores']} cores | "
        f"{','.join(record['isa']) or 'no avx2'} | jax {record['versions']['jax']}"
    )


def _gemm_fns(m: int, k: int, n: int):
    """{"jax", "torch", "numpy"} -> zero-argument fp32 ``[m, k] @ [k, n]`` calls on the same
    operands (JAX compiled here, operands on the device); torch only when installed."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, k), dtype=np.float32)
    b = rng.standard_normal((k, n), dtype=np.float32)
    ja, jb = jax.device_put(a), jax.device_put(b)
    mm = jax.jit(functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST))
    mm = mm.lower(ja, jb).compile()
    fns = {"jax": lambda: mm(ja, jb), "numpy": lambda: a @ b}
    try:
        import torch
    except ImportError:
        return fns
    torch.set_num_threads(cores())
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)

    def torch_mm():
        with torch.inference_mode():
            return torch.matmul(ta, tb)

    fns["torch"] = torch_mm
    return fns


def gemm_probe(quick: bool = True, shapes=GEMM_SHAPES) -> dict:
    """Best measured fp32 GEMM GFLOP/s per library and shape, all interleaved in this process.

    Each call is timed ``iters`` times (quick 3, else 7) after one warm-up; the *fastest* call
    counts (a GEMM cannot run faster than the machine allows, while other processes can only
    slow it down, so the minimum is the least load-biased estimate). Returns ``{"MxKxN":
    {"jax": .., "torch": .., "numpy": ..}, "best_gflops": {"jax": .., ...}, "best": max,
    "best_by": library, "foreign_cpu_cores": ..}``."""
    import time

    from benchmarks.common import ForeignLoad, _block

    iters = 3 if quick else 7
    out: dict = {}
    with ForeignLoad() as load:
        for m, k, n in shapes:
            fns = _gemm_fns(m, k, n)
            for fn in fns.values():
                _block(fn())
            best = dict.fromkeys(fns, float("inf"))
            for _ in range(iters):
                for name, fn in fns.items():
                    time.sleep(0.02)  # let torch's OpenMP workers stop spinning (common.SETTLE_S)
                    t0 = time.perf_counter()
                    _block(fn())
                    best[name] = min(best[name], time.perf_counter() - t0)
            out[f"{m}x{k}x{n}"] = {
                a: float(f"{2.0 * m * k * n / t / 1e9:.4g}") for a, t in best.items()
            }
    per_lib: dict[str, float] = {}
    for shape in out.values():
        for lib, g in shape.items():
            per_lib[lib] = max(per_lib.get(lib, 0.0), g)
    out["best_gflops"] = per_lib
    out["best_by"] = max(per_lib, key=per_lib.__getitem__)
    out["best"] = per_lib[out["best_by"]]
    out["foreign_cpu_cores"] = load.cores
    return out


def describe(quick: bool = True, gemm: bool = True) -> dict:
    """`static_record()` plus, with ``gemm``, ``"gemm": gemm_probe(quick)``."""
    rec = dict(static_record())
    if gemm:
        rec["gemm"] = gemm_probe(quick)
    return rec


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m benchmarks.machine", description=__doc__.split("\n")[0]
    )
    ap.add_argument("--quick", action="store_true", help="3 timed GEMMs per shape (else 7)")
    ap.add_argument("--no-gemm", action="store_true", help="skip the GEMM probe")
    args = ap.parse_args(argv)
    print(json.dumps(describe(quick=args.quick, gemm=not args.no_gemm)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
