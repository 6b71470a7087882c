"""Benchmark harness: registry, timing, the JSON record of one figure, machine description.

A benchmark is a function `(quick: bool) -> list[dict]` registered under a name with
`@register(name)`; each dict it returns is built by `figure(...)`. `quick=True` must keep the
whole suite (`python -m benchmarks.run --quick`) under 5 minutes on 2 CPU cores.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import statistics
import time
from collections.abc import Callable

log = logging.getLogger("benchmarks")

Benchmark = Callable[[bool], list[dict]]
REGISTRY: dict[str, Benchmark] = {}

SETTLE_S = 0.02  # pause between interleaved timed calls (see `time_interleaved`)

FIELDS = (
    "benchmark",
    "metric",
    "ours",
    "baseline",
    "baseline_name",
    "ratio",
    "higher_is_better",
    "params",
    "device",
)


def register(name: str) -> Callable[[Benchmark], Benchmark]:
    """Decorator: `@register("clip_encode") def bench(quick): ...`. Names are unique."""

    def deco(fn: Benchmark) -> Benchmark:
        if name in REGISTRY and REGISTRY[name] is not fn:
            raise ValueError(f"benchmark '{name}' is already registered ({REGISTRY[name]!r})")
        REGISTRY[name] = fn
        return fn

    return deco


def _finite(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None  # NaN/inf are not JSON


def ratio(ours: float, baseline: float, higher_is_better: bool) -> float | None:
    """> 1 means we are better: ours/baseline when higher is better, baseline/ours otherwise."""
    num, den = (ours, baseline) if higher_is_better else (baseline, ours)
    return _finite(num / den) if den else None


def figure(
    benchmark: str,
    metric: str,
    ours: float,
    baseline: float,
    baseline_name: str,
    *,
    higher_is_better: bool,
    params: dict | None = None,
    device: str | None = None,
) -> dict:
    """One JSON record, exactly the keys of `FIELDS`."""
    return {
        "benchmark": benchmark,
        "metric": metric,
        "ours": _finite(ours),
        "baseline": _finite(baseline),
        "baseline_name": baseline_name,
        "ratio": ratio(ours, baseline, higher_is_better),
        "higher_is_better": bool(higher_is_better),
        "params": dict(params or {}),
        "device": device_string() if device is None else device,
    }


def cpu_model() -> str:
    from benchmarks.machine import cpu_model as model

    return model()


@functools.cache
def device_string() -> str:
    """E.g. 'cpu:cpu | AMD EPYC | 2 cores | avx2,fma,avx512f,avx512_bf16 | jax 0.10.2': JAX
    platform:device kind, host CPU, cores, the ISA flags that decide GEMM speed, jax version
    (`benchmarks.machine.short`)."""
    from benchmarks import machine

    return machine.short(machine.static_record())


@functools.cache
def device_record(quick: bool = True) -> dict:
    """The machine a process's figures were measured on (`benchmarks.machine.describe`): CPU
    model, ISA flags, cores, library versions (numpy's BLAS and its kernel included) and the
    best fp32 GEMM GFLOP/s of JAX, torch and numpy measured once, here, at the first call
    (~5 s quick). Benchmarks that compare against GEMM speed put it in ``params.machine``."""
    from benchmarks import machine

    rec = machine.describe(quick=quick)
    log.info("machine: %s; best fp32 GEMM %s", machine.short(rec), rec["gemm"]["best_gflops"])
    return rec


def _block(out):
    import jax

    # Only JAX arrays are asynchronous; torch CPU ops (and Python values) have finished already.
    return jax.block_until_ready(out)


def timeit(fn: Callable[[], object], *, warmup: int = 1, iters: int = 5) -> float:
    """Median seconds per call of `fn()`, each call's JAX outputs blocked on before the clock
    stops. `warmup` untimed calls first (compile outside them: the first call is not special)."""
    return time_interleaved({"fn": fn}, warmup=warmup, iters=iters)["fn"]


def time_interleaved(
    fns: dict[str, Callable[[], object]],
    *,
    warmup: int = 1,
    iters: int = 5,
    settle: float = SETTLE_S,
) -> dict[str, float]:
    """Median seconds per call of each `fns[name]()`, calls alternating between the functions
    (order reversed every round) so that all of them see the same background load.

    Shared or noisy machines (other tenants' processes, steal time) otherwise bias whichever
    side happened to be timed in the busier window. With several functions, an untimed
    `settle` pause precedes each timed call: after a torch op its OpenMP workers busy-wait for
    a few milliseconds, which measurably (~10% on a 2048^3 GEMM, 2 cores) slows a JAX call
    started straight after it."""
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            _block(fns[name]())
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(iters):
        for name in names if i % 2 == 0 else reversed(names):
            if settle and len(names) > 1:
                time.sleep(settle)
            t0 = time.perf_counter()
            _block(fns[name]())
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def _cpu_snapshot() -> tuple[float, float, float] | None:
    """(wall seconds, machine busy CPU-seconds incl. steal, this process's CPU-seconds)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal [guest guest_nice: already in user/nice]
    busy = sum(fields[:8]) - fields[3] - fields[4]
    t = os.times()
    return time.perf_counter(), busy / os.sysconf("SC_CLK_TCK"), t.user + t.system


class ForeignLoad:
    """`with ForeignLoad() as load: ...`; then `load.cores`: the average number of CPU cores
    that *other* processes kept busy (or the hypervisor stole) meanwhile; None if unknown.

    A non-zero value means the machine was shared while timing, and the figures are noisy."""

    cores: float | None = None

    def __enter__(self):
        self._start = _cpu_snapshot()
        return self

    def __exit__(self, *exc):
        end = _cpu_snapshot()
        if self._start is not None and end is not None and end[0] > self._start[0]:
            wall, busy, own = (b - a for a, b in zip(self._start, end))
            self.cores = round(max(0.0, busy - own) / wall, 2)
        return False


def matmul_fns(n: int = 2048):
    """(jax_fn, torch_fn, flops): one fp32 [n, n] @ [n, n] each; JAX jitted and compiled here,
    operands already on device; torch under `inference_mode`."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    import torch

    rng = np.random.default_rng(0)
    a_np = rng.standard_normal((n, n), dtype=np.float32)
    b_np = rng.standard_normal((n, n), dtype=np.float32)
    dev = jax.devices()[0]
    a, b = jax.device_put(a_np, dev), jax.device_put(b_np, dev)
    mm = jax.jit(jnp.matmul).lower(a, b).compile()
    ta, tb = torch.from_numpy(a_np), torch.from_numpy(b_np)

    def torch_mm():
        with torch.inference_mode():
            return torch.matmul(ta, tb)

    return (lambda: mm(a, b)), torch_mm, 2.0 * n**3


def matmul_peak_gflops(n: int = 2048, iters: int = 7) -> dict:
    """Measured fp32 [n, n] @ [n, n] GFLOP/s of JAX (jitted, compiled once) and of torch
    (`inference_mode`, all cores), in this process, interleaved, median of `iters`.

    Returns {"jax", "torch", "peak", "n", "foreign_cpu_cores"}, `peak` = the max of the two: the
    best this machine demonstrably does on a plain GEMM."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    jax_mm, torch_mm, flops = matmul_fns(n)
    with ForeignLoad() as load:
        t = time_interleaved({"jax": jax_mm, "torch": torch_mm}, warmup=2, iters=iters)
    out = {"jax": flops / t["jax"] / 1e9, "torch": flops / t["torch"] / 1e9, "n": n}
    out["peak"] = max(out["jax"], out["torch"])
    out["foreign_cpu_cores"] = load.cores
    log.info("fp32 matmul n=%d: jax %.1f GFLOP/s, torch %.1f GFLOP/s", n, out["jax"], out["torch"])
    return out
