"""`vdc_prescreen`: samples/s and MLLM calls of VDC with the CLIP pre-screen against full VDC
(every sample asked) on the same data, the same loaded MLLM and the same questions.

Full: the offline demo's BadNets VDC part (1,000 easy-VQA test images, 60 BadNets poisons + 20 %
symmetric noise, the demo VLM; configs/vdc/compare.py) — the data the detection figures in
docs/vdc.md come from. Quick: the runlocal synthetic shapes (24 images) with the same models.
Each run is one `vdc_jax.cleanse.clean` in a fresh workdir, timed end to end (the pre-screen's
CLIP encoding and kNN included), after one untimed run of each side that compiles every program
it uses (compile once, then time); each side runs twice, in the order full, pre-screened,
pre-screened, full, and its figure is the mean of its two. The detection figures of both runs ride along in
``params`` (the speed must not cost detection).
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import time

from benchmarks.common import ForeignLoad, figure, log, register

NAME = "vdc_prescreen"


def _config(quick: bool, tmp: str):
    from configs.vdc.compare import get_config

    c = get_config("badnets")
    c.job = "vdc"
    if quick:  # 24 generated shapes (8 per class), 2 poisons per class, the same models
        c.data.kind, c.data.per_class = "synthetic", 8
        c.corrupt.poison_per_class = 2
        c.vqa.batch_size = c.prescreen.batch_size = 8  # 24 images: no 64-row padding
        # the generated classes are circle / square / triangle: the demo's question forms
        with open(c.vqg.questions_file, encoding="utf-8") as f:
            q = json.load(f)
        q["classes"]["square"] = [
            s.replace("rectangle", "square") for s in q["classes"].pop("rectangle")
        ]
        c.vqg.questions_file = os.path.join(tmp, "questions.json")
        with open(c.vqg.questions_file, "w", encoding="utf-8") as f:
            json.dump(q, f)
    return c


def _clean(base, workdir: str, prescreen: bool, mllm) -> tuple[float, dict, int, float]:
    """(seconds, metrics, samples scored, CPU-seconds of this process) of one cleansing run in
    a fresh ``workdir``. The CPU-seconds move less than the wall time when other processes
    share the machine."""
    from vdc_jax import cleanse

    c = copy.deepcopy(base)
    c.prescreen.enabled = prescreen
    t0, c0 = time.perf_counter(), time.process_time()
    m, table = cleanse.clean(c, workdir, mllm=mllm)
    return time.perf_counter() - t0, m, len(table.ids), time.process_time() - c0


@register(NAME)
def vdc_prescreen(quick: bool) -> list[dict]:
    from vdc_jax.models import load_mllm
    from vl_jax import parallel

    with tempfile.TemporaryDirectory(prefix="bench_prescreen_") as tmp:
        base = _config(quick, tmp)
        mesh = parallel.mesh_from_config(base.mesh.to_dict())
        mllm = load_mllm(base.model, tmp, mesh)
        # untimed, once per side: compiles the CLIP tower, the kNN and every VQA generate shape
        # (a last, partial batch has its own row count, hence its own shape, on each side)
        for on in (True, False):
            _clean(base, f"{tmp}/warm{int(on)}", on, mllm)
        # A B B A: a load that drifts during the window hits both sides alike
        runs = {"full": [], "prescreened": []}
        with ForeignLoad() as load:
            for i, name in enumerate(("full", "prescreened", "prescreened", "full")):
                runs[name].append(_clean(base, f"{tmp}/{name}{i}", name == "prescreened", mllm))
    for name, rs in runs.items():
        log.info("%s: %s s, %d MLLM calls", name, [round(r[0], 1) for r in rs],
                 rs[0][1]["config"]["answers"])  # fmt: skip
    mean = lambda rs, k=0: sum(r[k] for r in rs) / len(rs)
    t_pre, t_full = mean(runs["prescreened"]), mean(runs["full"])
    cpu_pre, cpu_full = mean(runs["prescreened"], 3), mean(runs["full"], 3)
    m_pre, n, m_full = runs["prescreened"][0][1], runs["prescreened"][0][2], runs["full"][0][1]
    o = lambda m, key: m.get("overall", {}).get(key, float("nan"))
    params = {
        "samples": n,
        "data": "synthetic shapes (runlocal)" if quick else "easy-VQA test + BadNets + 20% sym noise",
        "skipped_by_prescreen": m_pre["config"]["prescreen"]["skipped"],
        "tpr_prescreened": o(m_pre, "tpr"), "tpr_full": o(m_full, "tpr"),
        "fpr_prescreened": o(m_pre, "fpr"), "fpr_full": o(m_full, "fpr"),
        "seconds_prescreened": t_pre, "seconds_full": t_full,
        "seconds_each": {k: [round(r[0], 2) for r in rs] for k, rs in runs.items()},
        "cpu_seconds_prescreened": cpu_pre, "cpu_seconds_full": cpu_full,
        "foreign_cpu_cores": load.cores,
    }  # fmt: skip
    return [
        figure(NAME, "samples_per_second", n / t_pre, n / t_full,
               "full VDC (every sample asked)", higher_is_better=True, params=params),
        figure(NAME, "samples_per_cpu_second", n / cpu_pre, n / cpu_full,
               "full VDC (every sample asked)", higher_is_better=True, params=params),
        figure(NAME, "mllm_calls", m_pre["config"]["answers"], m_full["config"]["answers"],
               "full VDC (every sample asked)", higher_is_better=False, params=params),
    ]  # fmt: skip
