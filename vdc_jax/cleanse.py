"""The dataset-level VDC driver: `run(config, workdir)` (CLI: `python -m vdc_jax.main`);
`clean(config, workdir)` also returns the per-sample scores and verdicts.

    dataset (+ injected dirt) -> VQG questions per class -> VQA answers per (image, question)
    -> VAE consistency score per sample -> flag `score < threshold` -> outputs (vdc_jax.report)

Resume: everything expensive is kept in the workdir and reused when the same command runs
again — `questions.json` (VQG), `answers.jsonl` (VQA, appended per batch; see vdc_jax.vqa), and
`run_config.json`, the settings that decide the answers (data, injected dirt, MLLM, prompts,
generation lengths, question settings). When they differ from the workdir's, the run stops with
`IncompatibleWorkdirError` naming each difference, instead of mixing answers of two setups.
Settings that only re-score (judge, threshold, batch size) may change between runs. The judge
is re-run on every run (it is cheap next to VQA: only undecided descriptions).

Config (see `default_config`; configs/vdc/*.py override it): ``data`` (vdc_jax.inputs),
``corrupt`` (vdc_jax.corrupt.CorruptionSpec fields; "" / 0 = off), ``model`` (the MLLM: hub id,
directory, or "tiny-random" = build a random tiny checkpoint in the workdir), ``vqg`` (``llm``:
"" = templates, "mllm" = the MLLM's own language model, or a text LLM id; ``n`` questions per
class; ``questions_file`` override), ``vqa`` (batch of images, answer lengths), ``judge``
(``kind`` llm | embedding | none, ``llm`` as for vqg, ``embed_model`` a CLIP for "embedding"),
``threshold``, ``mesh``.

Several processes (multi-host): every process runs this with the same config and workdir (a
shared filesystem); process 0 writes every file, the others wait at barriers where they must
read what it wrote, and each decodes only the images its devices hold (see vdc_jax.vqa).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import sys
import tempfile

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vdc_jax import answers as vae
from vdc_jax import inputs, report
from vdc_jax.questions import load_or_generate
from vdc_jax.vqa import DESCRIBE, VQA, AnswerStore, Item, answer_dataset, pairs_of, stop_tokens
from vl_jax import parallel
from vl_jax.runlog import progress, write_json

log = logging.getLogger(__name__)

TINY = "tiny-random"
MLLM = "mllm"


MLLMS = {"7b": "llava-hf/llava-1.5-7b-hf", "small": "llava-hf/llava-interleave-qwen-0.5b-hf"}
# The paper's six attacks; trojannn / ssba are resolved by vdc_jax.corrupt when it has them.
ATTACK_NAMES = ("badnets", "blended", "sig", "wanet", "trojannn", "ssba")
# config arg name -> (get_source name, split, label-specific questions per class)
DATASETS = {
    "cifar10": ("cifar10", "train", 4),
    "imagenet100": ("imagenet100", "train", 6),
    "imagenet_dog": ("imagenet_dog10", "train_800", 6),
}
POISON_PER_CLASS = {"cifar10": 500, "imagenet100": 50, "imagenet_dog": 80}


class IncompatibleWorkdirError(ValueError):
    """The workdir holds answers made with other settings."""


def default_config() -> ml_collections.ConfigDict:
    """Every field the driver reads, with defaults (llava-1.5-7b, templates, judge = the MLLM's
    language model); configs/vdc/*.py start from this."""
    c = ml_collections.ConfigDict()
    c.job = "vdc"
    c.data = dict(kind="tfds", name="", split="train", data_dir="", manual_dir="", path="",
                  class_names=[], per_class=8, seed=0)  # fmt: skip
    c.corrupt = dict(attack="", attack_kwargs={}, target=0, poison_per_class=0, poison_rate=0.0,
                     noise="", noise_rate=0.0, seed=0)  # fmt: skip
    c.model = dict(name="llava-hf/llava-1.5-7b-hf", dtype="bfloat16", seed=0)
    c.vqg = dict(llm=MLLM, n=6, questions_file="", max_new_tokens=256)
    c.vqa = dict(batch_size=16, yes_no_tokens=8, describe_tokens=64, num_beams=1,
                 repetition_penalty=1.0)  # fmt: skip
    c.judge = dict(kind="llm", llm=MLLM, max_new_tokens=8, batch_size=64,
                   embed_model="openai/clip-vit-base-patch32", embed_threshold=0.25)  # fmt: skip
    c.threshold = 0.5
    c.mesh = dict(data=-1, model=1)
    return c


def apply_arg(c, arg: str, *, attack: bool = False, noise: bool = False):
    """Applies a config file's `:arg` — `[<attack>,][<sym|asym>,][small]` in that order, as the
    config asks for them — to `c` and returns it (ValueError names a bad part)."""
    parts = [p.strip() for p in arg.split(",") if p.strip()]
    if "small" in parts:
        parts.remove("small")
        c.model.name = MLLMS["small"]
    if attack:
        if not parts or parts[0] not in ATTACK_NAMES:
            raise ValueError(f"config arg {arg!r}: expected an attack in {ATTACK_NAMES} first")
        c.corrupt.attack = parts.pop(0)
    if noise:
        if not parts or parts[0] not in ("sym", "asym"):
            raise ValueError(f"config arg {arg!r}: expected sym or asym")
        c.corrupt.noise = parts.pop(0)
    if parts:
        raise ValueError(f"config arg {arg!r}: unexpected {parts} (known extra: small)")
    return c


def fingerprint(config) -> dict:
    """The settings that decide the answers in `answers.jsonl` (see the module docstring)."""
    return {
        "data": config.data.to_dict(),
        "corrupt": config.corrupt.to_dict(),
        "model": config.model.to_dict(),
        "vqg": config.vqg.to_dict(),
        "vqa": {k: v for k, v in config.vqa.to_dict().items() if k != "batch_size"},
    }


def check_workdir(workdir: str, fp: dict) -> None:
    """Raises `IncompatibleWorkdirError` when `workdir` was made with other answer settings;
    records `fp` otherwise."""
    path = os.path.join(workdir, "run_config.json")
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
        new = json.loads(json.dumps(fp))  # same normalisation as the file (tuples -> lists)
        diffs = [
            f"{group}.{k}: {old.get(group, {}).get(k)!r} -> {new[group].get(k)!r}"
            for group in new
            for k in sorted(set(old.get(group, {})) | set(new[group]))
            if old.get(group, {}).get(k) != new[group].get(k)
        ]
        if diffs:
            raise IncompatibleWorkdirError(
                f"{workdir} holds answers made with other settings ({'; '.join(diffs)}). "
                f"Use another --workdir, or delete {workdir}/answers.jsonl, questions.json "
                "and run_config.json to start over."
            )
    write_json(path, fp)


# ------------------------------------------------------------------------------ models
def _dtype(name: str):
    return {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}[name]


def load_mllm(cfg, workdir: str):
    """(LLaVA, processor, checkpoint path); "tiny-random" builds one in the workdir once
    (process 0 writes it into a temporary folder renamed into place, so a killed write
    leaves no half checkpoint; the others wait for it at a barrier)."""
    path = cfg.name
    if path == TINY:
        path = os.path.join(workdir, "tiny_llava")
        if jax.process_index() == 0 and not os.path.exists(os.path.join(path, "config.json")):
            tmp = tempfile.mkdtemp(dir=workdir, prefix=".tiny_llava.")
            inputs.write_tiny_llava(tmp, seed=cfg.seed)
            shutil.rmtree(path, ignore_errors=True)  # a half-written one (no config.json)
            os.rename(tmp, path)
        parallel.sync_processes("vdc: tiny checkpoint written")
    return (*_load_llava(path, cfg.dtype, os.path.getmtime(_config_json(path))), path)


def resolve_dir(path: str) -> str:
    """A checkpoint directory, or the local snapshot of a hub id."""
    if os.path.isdir(path):
        return path
    from vl_jax.checkpoints import resolve

    return resolve(path)


def _config_json(path: str) -> str:
    return os.path.join(resolve_dir(path), "config.json")


@functools.lru_cache(maxsize=1)
def _load_llava(path: str, dtype: str, mtime: float):
    """Loaded once per process (and checkpoint version): a rerun in the same process (resume
    in a notebook, tests) reuses the model and so its compiled generation functions."""
    from vl_jax.models import llava

    return llava.from_pretrained(path, dtype=_dtype(dtype)), llava.load_processor(path)


def text_llm(name: str, mllm, processor, dtype, mesh, max_new_tokens: int):
    """`ask(prompts) -> replies` of a text LLM: "mllm" = the MLLM's language model with its
    tokenizer (LLaVA's decoder is a chat LLM), else a hub id / directory of a Llama-family LLM.
    None for ""."""
    from vl_jax.generate import generate_text

    if not name:
        return None
    if name == MLLM:
        model, tokenizer = mllm.language_model, processor.tokenizer
    else:
        import transformers

        from vl_jax.checkpoints import resolve
        from vl_jax.models import llm

        model = llm.from_pretrained(name, dtype=dtype)
        tokenizer = transformers.AutoTokenizer.from_pretrained(resolve(name))
    chat = bool(getattr(tokenizer, "chat_template", None))

    def ask(prompts: list[str]) -> list[str]:
        if not chat:  # LLaVA-1.5's conversation format
            prompts = [f"USER: {p} ASSISTANT:" for p in prompts]
        return generate_text(model, tokenizer, prompts, chat=chat, max_new_tokens=max_new_tokens,
                             mesh=mesh)  # fmt: skip

    return ask


def make_judge(cfg, mllm, processor, dtype, mesh):
    """The VAE judge for descriptions without a keyword hit (None = count them inconsistent)."""
    if cfg.kind == "none":
        return None
    if cfg.kind == "llm":
        ask = text_llm(cfg.llm, mllm, processor, dtype, mesh, cfg.max_new_tokens)
        return vae.llm_judge(ask, batch_size=cfg.batch_size)
    if cfg.kind == "embedding":
        from vl_jax.models import clip
        from vl_jax.models.clip_tokenizer import load_tokenizer, tokenize

        model = clip.from_pretrained(cfg.embed_model)
        tok = load_tokenizer(cfg.embed_model, model.config.text.context_length)

        def embed(texts):
            ids, mask = tokenize(tok, list(texts), model.config.text.context_length)
            return np.asarray(model.encode_text(ids, mask))

        return vae.embedding_judge(embed, threshold=cfg.embed_threshold)
    raise ValueError(f"config.judge.kind must be llm, embedding or none, got {cfg.kind!r}")


# ------------------------------------------------------------------------------ the run
def corrupt_spec(cfg):
    """`CorruptionSpec` of ``config.corrupt``, or None when nothing is injected."""
    from vdc_jax.corrupt import CorruptionSpec

    if not cfg.attack and not cfg.noise:
        return None
    per_class = cfg.poison_per_class if cfg.attack and cfg.poison_per_class > 0 else None
    rate = cfg.poison_rate if cfg.attack and per_class is None else None
    return CorruptionSpec(
        attack=cfg.attack or None, attack_kwargs=dict(cfg.attack_kwargs), target=cfg.target,
        poison_per_class=per_class, poison_rate=rate, noise=cfg.noise or None,
        noise_rate=cfg.noise_rate,
    )  # fmt: skip


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Cleans the configured dataset; writes the outputs of `vdc_jax.report` to `workdir`.

    Returns the metrics dict (also in `workdir/metrics.json`)."""
    return clean(config, workdir)[0]


def vqg(cfg, path: str, class_names, ask):
    """`load_or_generate` of the run's questions (`config.vqg`; cache at `path`).

    `load_or_generate` rewrites its cache when it generates, and on several processes every
    one of them must make the same VQG calls (a generate call on the mesh is a collective).
    The others therefore work on a private copy of the cache and never write the shared one;
    process 0 only writes after those collectives, i.e. after the others have copied it."""
    kw = dict(ask=ask, n=cfg.n, override=cfg.questions_file or None)
    if jax.process_index() == 0:
        return load_or_generate(path, class_names, **kw)
    with tempfile.TemporaryDirectory(prefix="vdc_questions_") as tmp:
        private = os.path.join(tmp, "questions.json")
        if os.path.exists(path):
            shutil.copyfile(path, private)
        return load_or_generate(private, class_names, **kw)


def clean(config: ml_collections.ConfigDict, workdir: str) -> tuple[dict, report.Table]:
    """`run`, returning (metrics, the per-sample `report.Table`: scores and verdicts).

    On several processes every one returns the same metrics and table; process 0 writes."""
    if jax.process_index() == 0:
        os.makedirs(workdir, exist_ok=True)
    data = inputs.load_dataset(config.data, workdir)
    source, truth = data.source, None
    spec = corrupt_spec(config.corrupt)
    if spec is not None:
        from vdc_jax.corrupt import CorruptedSource

        source = CorruptedSource(source, spec, seed=config.corrupt.seed)
        if jax.process_index() == 0:
            source.write_manifest(os.path.join(workdir, "manifest.tsv"))
        truth = (source.is_dirty, source.kinds)
        log.info("injected: %r", source)
    check_workdir(workdir, fingerprint(config))

    mesh = parallel.mesh_from_config(config.mesh.to_dict())
    dtype = _dtype(config.model.dtype)
    mllm, processor, model_path = load_mllm(config.model, workdir)
    ask = text_llm(config.vqg.llm, mllm, processor, dtype, mesh, config.vqg.max_new_tokens)
    questions = vqg(config.vqg, os.path.join(workdir, "questions.json"), data.class_names, ask)

    ids = inputs.source_ids(source)
    labels = np.asarray(source.labels(), np.int64)
    items = [Item(i, ids[i], int(labels[i])) for i in range(len(ids)) if labels[i] >= 0]
    if len(items) < len(ids):
        log.warning("%d samples without a label are not checked", len(ids) - len(items))
    vqa = VQA(
        mllm, processor, yes_no_tokens=config.vqa.yes_no_tokens,
        describe_tokens=config.vqa.describe_tokens, num_beams=config.vqa.num_beams,
        repetition_penalty=config.vqa.repetition_penalty, mesh=mesh,
        eos_token_id=stop_tokens(resolve_dir(model_path), processor.tokenizer) or None,
    )  # fmt: skip
    # keep=False: the answers stay on disk (read back for scoring), not in memory.
    store = AnswerStore(os.path.join(workdir, "answers.jsonl"), keep=False)
    # Process 0 may repair a torn tail; everyone has read the file before it appends anew.
    parallel.sync_processes("vdc: answers.jsonl read")
    names = data.class_names
    done = sum(all((it.id, q) in store for q, _ in pairs_of(it, questions, names)) for it in items)
    if done:
        log.info("resuming: %d/%d samples already answered", done, len(items))
    load_image = lambda i: source[i]["image"]
    with progress(total=len(items), initial=done, desc="VQA", unit="img") as bar:
        for n, worked in answer_dataset(vqa, items, load_image, questions, names, store,
                                        batch_size=config.vqa.batch_size):  # fmt: skip
            if worked:
                bar.update(n)

    # The other processes read answers.jsonl back for scoring: process 0's last append first.
    parallel.sync_processes("vdc: answers.jsonl complete")
    judge = make_judge(config.judge, mllm, processor, dtype, mesh)
    table = score(items, store, questions, names, judge, config.threshold, len(ids))
    if truth is not None:
        sel = table.index
        table.is_dirty, table.kinds = truth[0][sel], np.asarray(truth[1], str)[sel]
    if data.paths is not None:
        table.paths = [data.paths[i] for i in table.index]
    summary = {
        "dataset": data.description, "model": model_path, "questions_per_class": config.vqg.n,
        "vqg_llm": config.vqg.llm or "templates", "judge": config.judge.kind,
        "corrupt": {k: v for k, v in config.corrupt.to_dict().items() if v not in ("", 0, {})},
        "classes": len(names), "answers": len(store),
    }  # fmt: skip
    m = report.write_report(workdir, table, threshold=config.threshold, config_summary=summary)
    if "overall" in m:
        o = m["overall"]
        print(f"vdc: TPR {o['tpr']:.4f} FPR {o['fpr']:.4f} F1 {o['f1']:.4f} AUROC {o['auroc']:.4f} "
              f"({m['counts']['flagged']} of {m['counts']['dataset']} flagged); outputs in {workdir}",
              file=sys.stderr)  # fmt: skip
    else:
        print(f"vdc: {m['counts']['flagged']} of {m['counts']['dataset']} samples flagged; "
              f"outputs in {workdir}", file=sys.stderr)  # fmt: skip
    return m, table


SCORE_BLOCK = 4096  # samples scored (answers read back, judge called) per step


def score(
    items, store, questions, class_names, judge, threshold, n, *, block: int = SCORE_BLOCK
) -> report.Table:
    """VAE on the stored answers of `items` -> a report.Table ([M] arrays, M = len(items)).

    Blocks of `block` samples at a time: their answers are read (`AnswerStore.answers`),
    scored with one batched judge call, and only the per-sample counts are kept, so scoring
    memory does not grow with the dataset."""
    consistent, total = np.zeros(len(items), np.int64), np.zeros(len(items), np.int64)
    label_names = {}  # class name -> names a description may use (a WordNet scan: once each)
    for lo in range(0, len(items), block):
        part = items[lo : lo + block]
        asked = [(it, q, kind) for it in part for q, kind in pairs_of(it, questions, class_names)]
        got = iter(store.answers([(it.index, it.id, q) for it, q, _ in asked]))
        per_item = {it.index: ([], []) for it in part}  # (descriptions, yes/no answers)
        for it, _, kind in asked:
            per_item[it.index][kind != DESCRIBE].append(next(got))
        samples = []
        for it in part:
            name = class_names[it.label]
            if name not in label_names:
                label_names[name] = vae.label_names(name)
            samples.append(vae.Sample(it.id, name, descriptions=per_item[it.index][0],
                                      yes_no=per_item[it.index][1], names=label_names[name]))  # fmt: skip
        results = vae.score_samples(samples, judge=judge)
        consistent[lo : lo + len(part)] = [sum(r.consistent) for r in results]
        total[lo : lo + len(part)] = [len(r.consistent) for r in results]
    scores = np.divide(consistent, total, out=np.full(len(items), np.nan), where=total > 0)
    return report.Table(
        index=np.asarray([it.index for it in items], np.int64),
        ids=[it.id for it in items],
        labels=np.asarray([it.label for it in items], np.int64),
        class_names=list(class_names),
        score=scores,
        flagged=vae.flag_dirty(scores, threshold),
        consistent=consistent,
        total=total,
        n=n,
    )
