"""The dataset-level VDC driver: `run(config, workdir)` (CLI: `python -m vdc_jax.main`);
`clean(config, workdir)` also returns the per-sample `scoring.Table` (scores and verdicts).

    dataset (+ injected dirt)            vdc_jax.inputs, vdc_jax.corrupt
    -> VQG questions per class           vdc_jax.questions (by a text LLM: vdc_jax.models)
    -> VQA answers per (image, question) vdc_jax.vqa (the MLLM: vdc_jax.models)
    -> VAE consistency score per sample  vdc_jax.scoring (answers judged by vdc_jax.answers)
    -> flag `score < threshold`, metrics vdc_jax.detection
    -> outputs                           vdc_jax.report

This module only orchestrates: it reads a config and never builds one (configs/vdc/common.py
`vdc_config()` does, with every field commented). The config schema it reads:

    data.kind / name / split / data_dir / manual_dir / path / class_names / per_class / seed
                                         the dataset (vdc_jax.inputs)
    corrupt.attack / attack_kwargs / target / poison_per_class / poison_rate / noise /
        noise_rate / seed                injected dirt ("" / 0 = off; vdc_jax.corrupt)
    model.name / dtype / seed            the MLLM: hub id, directory, or "tiny-random"
    vqg.llm / n / questions_file / max_new_tokens
                                         questions ("" = templates, "mllm", or a text LLM id)
    vqa.batch_size / yes_no_tokens / describe_tokens / min_new_tokens / num_beams /
        repetition_penalty / length_penalty / prompt ("chat" | "raw")
    judge.kind / llm / max_new_tokens / batch_size / embed_model / embed_threshold
    prescreen.enabled / clip / prompt / batch_size / min_prob / neighbours / min_agree
                                         the CLIP pre-screen: confidently consistent samples
                                         skip the MLLM (vdc_jax.prescreen; off by default)
    protocol                             "ours" | "official": the rule set (vdc_jax.protocol)
    threshold                            flag a sample when score < threshold
    export_hf                            auto | true | false: W/cleaned_hf (vdc_jax.export_hf)
    mesh.data / mesh.model               the device mesh (vl_jax.parallel.mesh_from_config)

Resume: everything expensive is kept in the workdir and reused when the same command runs
again — `questions.json` (VQG), `answers.jsonl` (VQA, appended per batch; see vdc_jax.vqa), and
`run_config.json`, the fingerprint of the settings that decide the answers (data, injected
dirt, MLLM, question settings, answer lengths). When they differ from the workdir's, the run
stops with `IncompatibleWorkdirError` naming each difference (`vl_jax.workdir.require_same`)
instead of mixing answers of two setups. Settings that only re-score (judge, threshold, batch
size) may change between runs. The judge is re-run on every run (it is cheap next to VQA:
only undecided descriptions).

Models: the MLLM is loaded once per run, straight into its shardings on the mesh, and the one
`models.MLLM` object is given to VQG, VQA and the judge; pass `mllm=` to `clean` to reuse one
across runs in a process.

Images: VQA reads them through the input pipeline (`vl_jax.data.pipeline`) with the MLLM's own
preprocessing (`models.MLLM.transform`), in batches of `vqa.batch_size` rounded up to what the
mesh splits evenly (see vdc_jax.vqa). One bad-image policy: an image that cannot be read is
skipped and recorded, never fatal — its questions are not asked, the sample is left out of
scoring (neither kept nor flagged), and it is listed in `skipped.tsv` (id, reason) and counted
in metrics.json (`counts.skipped`). A rerun tries those images again.

Several processes (multi-host): every process runs this with the same config and workdir (a
shared filesystem); the writer (`vl_jax.workdir.is_writer`, process 0) writes every file, the
others wait at barriers (`written`) where they must read what it wrote, and each decodes only
its own rows of every batch (the pipeline's per-process schedule; see vdc_jax.vqa).
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile

import ml_collections
import numpy as np

from vdc_jax import export_hf, inputs, prescreen, report, scoring
from vdc_jax.models import MLLM, TINY, dtype_of, load_mllm, make_judge, text_llm
from vdc_jax.protocol import OURS, Rules, get_rules
from vdc_jax.questions import load_or_generate
from vdc_jax.vqa import VQA, AnswerStore, Item, answer_dataset, pairs_of
from vl_jax import parallel
from vl_jax import workdir as wd
from vl_jax.errors import ConfigError
from vl_jax.runlog import progress

log = logging.getLogger(__name__)


def fingerprint(config) -> dict:
    """The settings that decide the answers in `answers.jsonl` (see the module docstring);
    `protocol` is among them because it decides the general questions asked."""
    return wd.fingerprint(
        protocol=config.get("protocol", OURS.name),
        data=config.data,
        corrupt=config.corrupt,
        # What the attacks draw for the same settings; only matters when something is injected.
        transforms=_transforms_version() if corrupt_spec(config.corrupt) else None,
        model=config.model,
        vqg=config.vqg,
        vqa={k: v for k, v in config.vqa.to_dict().items() if k != "batch_size"},
    )


def _transforms_version() -> int:
    from vdc_jax.corrupt import TRANSFORMS_VERSION  # lazy, as corrupt_spec: TrojanNN pulls in CLIP

    return TRANSFORMS_VERSION


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


def vqg(cfg, path: str, class_names, ask, general=None):
    """`load_or_generate` of the run's questions (`config.vqg`; cache at `path`).

    `load_or_generate` rewrites its cache when it generates, and on several processes every
    one of them must make the same VQG calls (a generate call on the mesh is a collective).
    The others therefore work on a private copy of the cache and never write the shared one;
    the writer only writes after those collectives, i.e. after the others have copied it."""
    kw = dict(ask=ask, n=cfg.n, override=cfg.questions_file or None, general=general)
    if wd.is_writer():
        return load_or_generate(path, class_names, **kw)
    with tempfile.TemporaryDirectory(prefix="vdc_questions_") as tmp:
        private = os.path.join(tmp, "questions.json")
        if os.path.exists(path):
            shutil.copyfile(path, private)
        return load_or_generate(private, class_names, **kw)


def clean(
    config: ml_collections.ConfigDict, workdir: str, *, mllm: MLLM | None = None
) -> tuple[dict, scoring.Table]:
    """`run`, returning (metrics, the per-sample `scoring.Table`: scores and verdicts).

    `mllm`: an MLLM already loaded for ``config.model`` (default: load it on the config's
    mesh). On several processes every one returns the same metrics and table; the writer
    writes."""
    wd.makedirs(workdir)
    rules = get_rules(config.get("protocol", OURS.name))  # the one choice of rule set
    data = inputs.load_dataset(config.data, workdir)
    source, truth = data.source, None
    spec = corrupt_spec(config.corrupt)
    if spec is not None:
        from vdc_jax.corrupt import CorruptedSource

        source = CorruptedSource(source, spec, seed=config.corrupt.seed)
        if wd.is_writer():
            source.write_manifest(os.path.join(workdir, "manifest.tsv"))
        truth = (source.is_dirty, source.kinds)
        log.info("injected: %r", source)
    _stage(
        f"data: {len(source)} samples of {len(data.class_names)} classes ({data.description})"
        + (f", {int(np.sum(truth[0]))} made dirty" if truth is not None else "")
    )
    wd.require_same(os.path.join(workdir, "run_config.json"), fingerprint(config), what="answers")

    mesh = parallel.mesh_from_config(config.mesh.to_dict())
    dtype = dtype_of(config.model.dtype)
    if mllm is None:
        _stage(f"model: loading {config.model.name}")
        mllm = load_mllm(config.model, workdir, mesh)
    ask = text_llm(config.vqg.llm, mllm, dtype, mesh, config.vqg.max_new_tokens)
    questions = vqg(config.vqg, os.path.join(workdir, "questions.json"), data.class_names, ask,
                    general=rules.general_questions)  # fmt: skip
    _stage(
        f"questions: {config.vqg.n} per class, from {config.vqg.llm or 'templates'}"
        f" ({rules.name} protocol)"
    )

    ids, labels = source.ids(), np.asarray(source.labels(), np.int64)
    items = [Item(i, ids[i], int(labels[i])) for i in range(len(ids)) if labels[i] >= 0]
    if len(items) < len(ids):
        log.warning("%d samples without a label are not checked", len(ids) - len(items))
    # The pre-screen's confidently consistent samples are not asked; merged back after scoring.
    screen = prescreen.run(config.get("prescreen"), source, data.class_names, items, mesh,
                           workdir)  # fmt: skip
    if screen is not None:
        _stage(f"pre-screen: {int(screen.skip.sum())} of {len(items)} samples skip the MLLM")
        items = screen.asked
    vqa = VQA.from_config(mllm, config.vqa, mesh=mesh)
    # keep=False: the answers stay on disk (read back for scoring), not in memory.
    store = AnswerStore(os.path.join(workdir, "answers.jsonl"), keep=False)
    # The writer may repair a torn tail; everyone has read the file before it appends anew.
    wd.written("vdc: answers.jsonl read")
    names = data.class_names
    done = sum(all((it.id, q) in store for q, _ in pairs_of(it, questions, names)) for it in items)
    if done:
        log.info("resuming: %d/%d samples already answered", done, len(items))
    skipped = []  # unreadable images: not scored, listed in skipped.tsv
    with progress(total=len(items), initial=done, desc="VQA", unit="img") as bar:
        for step in answer_dataset(vqa, items, source, questions, names, store,
                                   batch_size=config.vqa.batch_size):  # fmt: skip
            skipped += step.skipped
            if step.asked:
                bar.update(step.size)
    if skipped:
        log.warning("%d unreadable images skipped (not scored): see skipped.tsv", len(skipped))

    # The other processes read answers.jsonl back for scoring: the writer's last append first.
    wd.written("vdc: answers.jsonl complete")
    _stage(f"scoring: answers judged by {config.judge.kind}, dirty below {config.threshold}")
    judge = judge_of(config.judge, rules, mllm, dtype, mesh)
    left_out = {s.index for s in skipped}
    scored = [it for it in items if it.index not in left_out]
    table = scoring.score(scored, store, questions, names, judge, config.threshold, len(ids),
                          rules=rules)  # fmt: skip
    if screen is not None:
        table = screen.merge(table)
    table.skipped = skipped
    if truth is not None:
        sel = table.index
        table.is_dirty, table.kinds = truth[0][sel], np.asarray(truth[1], str)[sel]
    if data.paths is not None:
        table.paths = [data.paths[i] for i in table.index]
    summary = {
        "protocol": rules.name,
        "dataset": data.description, "model": _model_name(config.model.name, mllm),
        "questions_per_class": config.vqg.n,
        "vqg_llm": config.vqg.llm or "templates", "judge": config.judge.kind,
        "corrupt": {k: v for k, v in config.corrupt.to_dict().items() if v not in ("", 0, {})},
        "classes": len(names), "answers": len(store), "prescreen": prescreen.summary(screen),
    }  # fmt: skip
    m = report.write_report(workdir, table, threshold=config.threshold, config_summary=summary,
                            rules=rules, source=source)  # fmt: skip
    if export_hf.wanted(config) and wd.is_writer():  # W/cleaned_hf: data + label_issue, score
        export_hf.write(os.path.join(workdir, "cleaned_hf"), table, source)
    _print_summary(m, workdir)
    return m, table


def _stage(line: str) -> None:
    """One line per stage on stdout (the writer process only): what the run is doing, for a
    person watching it; the details go to metrics.json."""
    if wd.is_writer():
        print(f"vdc: {line}", flush=True)


def judge_of(cfg, rules: Rules, mllm: MLLM, dtype, mesh):
    """The VAE judge of ``config.judge``; an LLM judge asks with the protocol's prompt and
    reads its replies with the protocol's rule (`Rules.llm_judge`)."""
    if cfg.kind != "llm":
        return make_judge(cfg, mllm, dtype, mesh)
    ask = text_llm(cfg.llm, mllm, dtype, mesh, cfg.max_new_tokens)
    if ask is None:
        raise ConfigError("config.judge.kind='llm' needs config.judge.llm")
    return rules.llm_judge(ask, batch_size=cfg.batch_size)


def _model_name(name: str, mllm: MLLM) -> str:
    """The model as metrics.json names it: the configured hub id / directory (not the local
    snapshot a hub id resolves to), or the written checkpoint of "tiny-random"."""
    return mllm.path if name == TINY else name


def _print_summary(m: dict, workdir: str) -> None:
    if "overall" in m:
        o = m["overall"]
        print(f"vdc ({m['protocol']['name']} protocol): TPR {o['tpr']:.4f} FPR {o['fpr']:.4f} F1 {o['f1']:.4f} AUROC {o['auroc']:.4f} "
              f"({m['counts']['flagged']} of {m['counts']['dataset']} flagged); outputs in {workdir}",
              file=sys.stderr)  # fmt: skip
    else:
        print(f"vdc: {m['counts']['flagged']} of {m['counts']['dataset']} samples flagged; "
              f"outputs in {workdir}", file=sys.stderr)  # fmt: skip
    if m["counts"]["skipped"]:
        print(f"vdc: {m['counts']['skipped']} unreadable image(s) skipped, not scored: see "
              f"{os.path.join(workdir, 'skipped.tsv')}", file=sys.stderr)  # fmt: skip
