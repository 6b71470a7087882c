"""`vdc_stream`: VDC over a long stream of samples (full: 100,000) with a tiny model — does the
cleanser keep a constant throughput and a flat memory footprint over the whole run?

The pipeline is the cleanser's own (`vdc_jax.cleanse`): `vqa.answer_dataset` (batches of 16
images read by the input pipeline, `vl_jax.data.pipeline`, with the checkpoint's preprocessing;
every pending (image, question) pair answered in one generate call per answer kind,
answers appended to an fsync'd `answers.jsonl` by an `AnswerStore(keep=False)`), then
`scoring.score` (answers read back from disk in blocks of 4096 samples, keyword match + yes/no
parsing, threshold; no judge LLM). Model: the tiny random LLaVA of runlocal
(`vl_jax.models.tiny.write_llava`: CLIP tower and Llama decoder of width 32, 2 layers each,
30 px images), runlocal's answer lengths (12 / 4 new tokens) and 2 + 4 template questions.

Data: N samples drawn from a pool of `POOL` generated PNG files (`write_shapes_folder`: three
shape classes, 48 px) — sample i is pool file i % POOL, read and decoded from disk by the
cleanser's `FileSource` every time the pipeline asks (as a file dataset is), with its own id. This
exercises the real input path without writing 100k files (a CSV may not list a file twice,
so the stream wraps a `FileSource` rather than going through `load_dataset`). The pool is
ordered so that every batch holds all three classes (one request shape for the whole run).

Before the clock starts, one batch of other ids compiles the request shapes and is scored. Recorded per
tenth of the run: samples/s and the process's resident set (`VmRSS`) at its end, plus the
CPU cores other processes used meanwhile (the machine may be shared). Figures (no baseline:
the run is compared with itself):

- ``samples_per_second``: N / (answering + scoring seconds);
- ``throughput_last_over_first``: samples/s of the last tenth / of the first (1 = constant);
- ``rss_growth_gb``: RSS after scoring (the end of the run) - RSS at 10% of the answering.

    python -m benchmarks.run --only vdc_stream [--quick]    # quick: 3,200 samples
"""

from __future__ import annotations

import os
import tempfile
import time

from benchmarks.common import ForeignLoad, figure, log, register

NAME = "vdc_stream"
FULL_N, QUICK_N = 100_000, 3_200
BATCH = 16
POOL = 66  # 22 generated images per class
WINDOWS = 10
GB = 1 << 30


def rss_gb(field: str = "VmRSS") -> float:
    """This process's resident set (or `VmHWM`, its high-water mark) in GB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024 / GB
    raise RuntimeError(f"{field} not in /proc/self/status")


class PoolStream:
    """`n` samples cycling through a `FileSource` pool: ``self[i]`` = pool sample ``order[i %
    len(order)]`` read from its file, with label the pool's and id ``"{i:06d}"``. A
    `RandomAccessSource` (`vl_jax.data.protocol`), as the input pipeline reads it."""

    split = None

    def __init__(self, pool, order, n: int):
        self.pool, self.order, self.n = pool, list(order), int(n)
        self.name, self.class_names = f"stream over {pool.name}", list(pool.class_names)

    def __len__(self) -> int:
        return self.n

    def pool_index(self, i: int) -> int:
        return self.order[i % len(self.order)]

    def label(self, i: int) -> int:
        return int(self.pool.labels()[self.pool_index(i)])

    def __getitem__(self, i) -> dict:
        rec = self.pool[self.pool_index(int(i))]
        return {**rec, "id": f"{int(i):06d}"}

    def labels(self):
        import numpy as np

        return np.asarray([self.label(i) for i in range(self.n)], np.int32)

    def ids(self) -> list[str]:
        return [f"{i:06d}" for i in range(self.n)]


def interleaved(labels, classes: int) -> list[int]:
    """Pool indices ordered class 0, 1, 2, 0, 1, 2, ...: every batch sees every class."""
    per = [[i for i, y in enumerate(labels) if y == c] for c in range(classes)]
    return [per[c][k] for k in range(min(map(len, per))) for c in range(classes)]


@register(NAME)
def vdc_stream(quick: bool, *, n: int | None = None, batch: int = BATCH) -> list[dict]:
    import jax
    import numpy as np

    from configs.vdc.common import vdc_config
    from vdc_jax import scoring
    from vdc_jax.inputs import write_shapes_folder
    from vdc_jax.models import image_transform, stop_tokens
    from vdc_jax.questions import GENERAL_QUESTIONS, Questions, template_questions
    from vdc_jax.vqa import VQA, AnswerStore, Item, answer_dataset
    from vl_jax import parallel
    from vl_jax.data.files import FileSource
    from vl_jax.models import llava, tiny

    n = n or (QUICK_N if quick else FULL_N)
    config = vdc_config()  # runlocal's answer lengths and question count
    yes_no_tokens, describe_tokens, n_specific = 4, 12, 4
    t_setup = time.perf_counter()
    tmp = tempfile.TemporaryDirectory(prefix="bench_vdc_stream_")
    ckpt = tiny.write_llava(os.path.join(tmp.name, "llava"))
    write_shapes_folder(os.path.join(tmp.name, "pool"), per_class=POOL // 3)
    pool = FileSource.from_folder(os.path.join(tmp.name, "pool"))
    names = pool.class_names
    stream = PoolStream(pool, interleaved(pool.labels(), len(names)), n)
    items = [Item(i, f"{i:06d}", stream.label(i)) for i in range(n)]
    questions = Questions(GENERAL_QUESTIONS, {c: template_questions(c, n_specific) for c in names})
    model, processor = llava.from_pretrained(ckpt), llava.load_processor(ckpt)
    mesh = parallel.create_mesh()
    vqa = VQA(
        model, processor, transform=image_transform(ckpt, processor),
        yes_no_tokens=yes_no_tokens, describe_tokens=describe_tokens, mesh=mesh,
        eos_token_id=stop_tokens(ckpt, processor.tokenizer) or None,
    )  # fmt: skip
    setup_s = time.perf_counter() - t_setup

    # Compile outside the clock: one batch of other ids, same request shapes.
    t0 = time.perf_counter()
    warm = [Item(i, f"warm{i}", stream.label(i)) for i in range(batch)]
    warm_store = AnswerStore(os.path.join(tmp.name, "warm.jsonl"), write=True, keep=False)
    for _ in answer_dataset(vqa, warm, stream, questions, names, warm_store,
                            batch_size=batch):  # fmt: skip
        pass
    # Scoring's one-time costs too (the WordNet name table is loaded on first use): the RSS
    # figure is about what grows with the stream, not about first uses.
    scoring.score(warm, warm_store, questions, names, None, config.threshold, batch)
    compile_s = time.perf_counter() - t0

    store = AnswerStore(os.path.join(tmp.name, "answers.jsonl"), write=True, keep=False)
    bounds = [round(n * (k + 1) / WINDOWS) for k in range(WINDOWS)]
    windows, done, start_done = [], 0, 0
    load = ForeignLoad().__enter__()  # ended and restarted at every window boundary
    t_start = t_window = time.perf_counter()
    for step in answer_dataset(vqa, items, stream, questions, names, store, batch_size=batch):
        done += step.size
        while len(windows) < WINDOWS and done >= bounds[len(windows)]:
            now = time.perf_counter()
            load.__exit__(None, None, None)
            windows.append({
                "samples": done, "seconds": now - t_window,
                "samples_per_second": (done - start_done) / (now - t_window),
                "rss_gb": rss_gb(), "foreign_cpu_cores": load.cores,
            })  # fmt: skip
            log.info("%s: %d/%d samples, %.1f samples/s, RSS %.3f GB", NAME, done, n,
                     windows[-1]["samples_per_second"], windows[-1]["rss_gb"])  # fmt: skip
            t_window, start_done, load = now, done, ForeignLoad().__enter__()
    answer_s = time.perf_counter() - t_start
    answers_bytes = os.path.getsize(store.path)

    t0 = time.perf_counter()
    table = scoring.score(items, store, questions, names, None, config.threshold, n)
    score_s = time.perf_counter() - t0
    rss_end, rss_peak = rss_gb(), rss_gb("VmHWM")
    tmp.cleanup()
    if len(store) != n * (len(GENERAL_QUESTIONS) + n_specific):
        raise RuntimeError(f"{NAME}: {len(store)} answers for {n} samples")

    first, last = windows[0]["samples_per_second"], windows[-1]["samples_per_second"]
    growth = rss_end - windows[0]["rss_gb"]
    params = {
        "samples": n,
        "images_per_batch": batch,
        "questions_per_sample": len(GENERAL_QUESTIONS) + n_specific,
        "max_new_tokens": {"yes_no": yes_no_tokens, "describe": describe_tokens},
        "model": "tiny random LLaVA (tiny.write_llava: CLIP 2x32 + Llama 2x32, 30 px, "
        f"{model.config.num_image_tokens} image tokens)",
        "data": f"{POOL} generated 48 px PNG files (3 shape classes), sample i = file i % "
        f"{POOL} read and decoded from disk per sample, own id",
        "judge": "none (keyword match + yes/no parsing)",
        "answer_store": "AnswerStore(keep=False): answers on disk only, read back for scoring",
        "score_block": scoring.SCORE_BLOCK,
        "windows": windows,
        "rss_gb_at_10pct": windows[0]["rss_gb"],
        "rss_gb_at_100pct_answered": windows[-1]["rss_gb"],
        "rss_gb_after_scoring": rss_end,
        "rss_peak_gb": rss_peak,
        "answers_jsonl_mb": answers_bytes / 1e6,
        "seconds": {
            "setup": setup_s,
            "compile": compile_s,
            "answering": answer_s,
            "scoring": score_s,
        },
        "flagged": int(table.flagged.sum()),
        "mesh": dict(mesh.shape),
        "jax_version": jax.__version__,
        "mean_score": float(np.mean(table.score)),
    }
    none = float("nan")
    return [
        figure(NAME, "samples_per_second", n / (answer_s + score_s), none, "none",
               higher_is_better=True, params=params),
        figure(NAME, "throughput_last_over_first", last / first, none, "none",
               higher_is_better=True, params={"first": first, "last": last,
                                              "samples": n}),
        figure(NAME, "rss_growth_gb", growth, none, "none", higher_is_better=False,
               params={"from": "10% answered", "to": "after scoring", "samples": n}),
    ]  # fmt: skip
