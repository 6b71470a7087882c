"""The cleanser's HTML report, ``report.html``: what was flagged, the image as judged, and why.

    python -m vdc_jax.report_html --workdir runs/demo/vdc_badnets    # regenerate, no model

Written by every cleansing run (``vdc_jax.report.write_report`` calls :func:`write`) and
regenerated from the workdir's files alone: ``scores.csv`` and ``metrics.json`` (what
``vdc_jax.report`` wrote), ``answers.jsonl`` (every question and answer) and ``run_config.json``
(the dataset and the injected dirt, to read each image *as the MLLM saw it*: with its trigger,
through the same ``vdc_jax.inputs`` / ``vdc_jax.corrupt.CorruptedSource`` the run used). One
self-contained file (``vl_jax.html_report``): the summary metrics and the plots; the flagged
samples sorted by score (lowest first), then the kept ones (lowest first, paged); each card
shows the thumbnail, id, label, score, verdict, dirt kind when it is known, and every question
with its answer and per-answer verdict; filters by class, dirt kind and verdict.

Per-answer verdicts are recomputed with the run's protocol (``metrics.json`` names it; keyword
match and yes/no parsing, `vdc_jax.answers.score_samples` without a judge), which is exactly
what the run did when ``judge.kind`` is ``"none"`` (the recomputed count is checked against
``scores.csv``). With a judge, the descriptions without a keyword hit went to it; its
decisions are read from ``judgements.jsonl`` (written by the run: id, description, verdict,
reason). A workdir from before that file existed shows such an answer as "judge" and what the
sample's count in ``scores.csv`` implies about them (all consistent, none, or k of m).

A missing or malformed ``scores.csv`` / ``answers.jsonl`` / ``metrics.json`` is one
``error: ...`` line and exit status 2. A dataset that cannot be read any more (moved, another
machine) gives a report without images and says so on the page.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from collections import defaultdict

import ml_collections
import numpy as np

from vdc_jax import answers as vae
from vdc_jax.protocol import get_rules
from vl_jax import html_report as H
from vl_jax.data.files import DataError
from vl_jax.errors import NotFoundError, UserError
from vl_jax.workdir import read_json

log = logging.getLogger(__name__)

MAX_CARDS = 1000  # per gallery (flagged, kept): the lowest scores; scores.csv lists every sample
PAGE = 60  # cards per page
_NEEDED = ("index", "id", "label", "class", "score", "flagged", "consistent", "total")


def _need(path: str) -> str:
    if not os.path.exists(path):
        raise NotFoundError(
            f"{path}: not found (written by a cleansing run: python -m vdc_jax.main)"
        )
    return path


def read_scores(path: str) -> list[dict]:
    """The rows of ``scores.csv`` (typed), in file order; a missing column or a bad value is a
    ``DataError`` naming the file and line."""
    with open(_need(path), encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in _NEEDED if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
        rows = []
        for line, r in enumerate(reader, start=2):
            try:
                rows.append({
                    "index": int(r["index"]), "id": r["id"], "label": int(r["label"]),
                    "class": r["class"], "score": float(r["score"]),
                    "flagged": bool(int(r["flagged"])), "consistent": int(r["consistent"]),
                    "total": int(r["total"]), "kind": r.get("dirt_kind"),
                })  # fmt: skip
            except (TypeError, ValueError) as e:
                raise DataError(f"{path}, line {line}: {e}") from None
    return rows


def read_answers(path: str) -> dict[str, list[dict]]:
    """``answers.jsonl`` grouped by sample id, each sample's answers in the order asked. A torn
    last line (a killed run) is ignored, as the run itself does; any other bad line is a
    ``DataError`` with its line number."""
    out: dict[str, list[dict]] = defaultdict(list)
    with open(_need(path), encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.endswith("\n"):
                break
            try:
                rec = json.loads(line)
                out[rec["id"]].append({k: rec[k] for k in ("question", "kind", "answer")})
            except (ValueError, KeyError, TypeError):
                raise DataError(f"{path}, line {n}: not an answer record") from None
    return dict(out)


def read_judgements(path: str) -> dict[tuple[str, str], tuple[bool, str]]:
    """``judgements.jsonl`` -> {(sample id, description): (consistent, the judge's reason)};
    empty when the file is absent (a run without a judge, or from before the file existed)."""
    if not os.path.exists(path):
        return {}
    out = {}
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            try:
                j = json.loads(line)
                out[(str(j["id"]), j["description"])] = (bool(j["consistent"]), str(j["reason"]))
            except (ValueError, KeyError, TypeError):
                raise DataError(f"{path}, line {n}: not a judgement record") from None
    return out


def verdicts(
    rows: list[dict], answers: dict, rules, judged: bool, judgements: dict | None = None
) -> dict[str, list[tuple]]:
    """Per sample id: ``[(question, answer, verdict, how)]`` with ``verdict`` in {"yes", "no",
    "judge", "dropped"} (see the module docstring); ``judgements``: `read_judgements`. Also sets
    ``row["recount"]``, the count of consistent answers the rules and the recorded judge
    decisions give, and ``row["pending"]``, the judged answers without a record."""
    judgements = judgements or {}
    out, names = {}, {}  # names: class -> the names a description may use (a WordNet scan)
    for r in rows:
        recs = answers.get(r["id"])
        if not recs:
            continue
        if r["class"] not in names:
            names[r["class"]] = rules.names(r["class"])
        desc = [a for a in recs if a["kind"] == "describe"]
        yn = [a for a in recs if a["kind"] != "describe"]
        s = vae.Sample(r["id"], r["class"], descriptions=[a["answer"] for a in desc],
                       yes_no=[a["answer"] for a in yn], names=names[r["class"]],
                       questions=[a["question"] for a in yn])  # fmt: skip
        res = vae.score_samples([s], judge=None, rules=rules)[0]
        got = iter(zip(res.consistent, res.how))
        items, recount = [], 0  # recount: the judge's recorded "consistent" decisions
        for a in desc + yn:
            if rules.drop_empty and not a["answer"].strip():
                items.append((a["question"], a["answer"], "dropped", "empty answer, not counted"))
                continue
            ok, how = next(got)
            pending = judged and a["kind"] == "describe" and not ok
            record = judgements.get((r["id"], a["answer"])) if pending else None
            if record is not None:
                pending, ok, how = False, record[0], f"no keyword; judge: {record[1]}"
                recount += ok
            items.append(
                (a["question"], a["answer"], "judge" if pending else ("yes" if ok else "no"), how)
            )
        r["recount"] = sum(res.consistent) + recount
        r["pending"] = sum(v == "judge" for _, _, v, _ in items)
        out[r["id"]] = items
    return out


def _source(workdir: str):
    """The run's dataset with its injected dirt, rebuilt from ``run_config.json``; None (with
    the reason) when it cannot be read here."""
    from vdc_jax import inputs
    from vdc_jax.cleanse import corrupt_spec

    rc = read_json(os.path.join(workdir, "run_config.json"))
    if not isinstance(rc, dict) or "data" not in rc:
        return None, "run_config.json is missing, so the dataset is unknown"
    try:
        data = inputs.load_dataset(ml_collections.ConfigDict(rc["data"]), workdir)
        source = data.source
        spec = corrupt_spec(
            ml_collections.ConfigDict(rc.get("corrupt") or {"attack": "", "noise": ""})
        )
        if spec is not None:
            from vdc_jax.corrupt import CorruptedSource

            source = CorruptedSource(source, spec, seed=rc["corrupt"].get("seed", 0))
    except (UserError, OSError, ValueError) as e:
        return None, f"the dataset could not be read here ({e})"
    return source, ""


def _thumbs(source, rows: list[dict]) -> tuple[dict[int, str], str]:
    if source is None:
        return {}, ""
    ids = source.ids()
    bad = [
        r["id"] for r in rows if not (0 <= r["index"] < len(ids)) or str(ids[r["index"]]) != r["id"]
    ]
    if bad:
        return {}, f"the dataset here is not the run's (id {bad[0]!r} is not at its index)"
    out = {}
    for r in rows:
        try:
            out[r["index"]] = H.image_uri(source[r["index"]]["image"])
        except (OSError, ValueError) as e:  # an unreadable image: the card says "no image"
            log.warning("report.html: no thumbnail for %s: %s", r["id"], e)
    return out, ""


def _card(r: dict, thumb: str | None, qa: list[tuple] | None, known: bool) -> str:
    flagged, kind = r["flagged"], (r["kind"] or "clean")
    lines = [f"label: <b>{H.esc(r['class'])}</b>",
             f"score {r['score']:.3f} ({r['consistent']}/{r['total']} consistent)",
             f"verdict: <b>{'flagged' if flagged else 'kept'}</b>"]  # fmt: skip
    if known:
        lines.append(f"dirt: <b>{H.esc(kind)}</b>")
    if qa is None:
        details = '<p class="muted">not asked (pre-screened by CLIP: counted as consistent)</p>'
    else:
        li = []
        for q, a, v, how in qa:
            cls = {"yes": "yes", "no": "no"}.get(v, "muted")
            label = {"yes": "consistent", "no": "not consistent"}.get(v, v)
            li.append(f"<li>{H.esc(q)}<br>&rarr; <i>{H.esc(a)}</i> "
                      f'<span class="{cls}">[{H.esc(label)}]</span> '
                      f'<span class="muted">{H.esc(how)}</span></li>')  # fmt: skip
        details = f"<ol>{''.join(li)}</ol>"
        if r.get("pending"):
            k, m = r["consistent"] - r["recount"], r["pending"]
            details += (
                f'<p class="muted">judge: {k} of {m} undecided description(s) judged consistent</p>'
            )
        elif r["recount"] != r["consistent"]:
            details += '<p class="no">recomputed verdicts differ from scores.csv</p>'
    attrs = {"cls": r["class"], "verdict": "flagged" if flagged else "kept"}
    if known:
        attrs["kind"] = kind
    return H.card(thumb, title=r["id"], lines=lines, details=details, attrs=attrs,
                  tone="bad" if flagged else "good", open_details=flagged)  # fmt: skip


def _summary(m: dict, workdir: str) -> str:
    c = m.get("counts", {})
    parts = [H.table_html(["count", "value"], [(k, v) for k, v in c.items()])]
    parts.append(f"<p>rule: {H.esc(m.get('rule', ''))}; threshold {H.esc(m.get('threshold', ''))}; "
                 f"protocol {H.esc(m.get('protocol', {}).get('name', ''))}</p>")  # fmt: skip
    cols = ["tpr", "fpr", "precision", "f1", "auroc", "n", "n_dirty"]
    rows = [("overall", *[m["overall"].get(k, "") for k in cols])] if "overall" in m else []
    rows += [(k, *[v.get(k, "") for k in cols]) for k, v in m.get("per_kind", {}).items()]
    if rows:
        parts.append(H.table_html(["", *cols], rows))
    cfg = m.get("config", {})
    if cfg:
        parts.append(H.table_html(["setting", "value"],
                                  [(k, json.dumps(v) if isinstance(v, dict) else v)
                                   for k, v in cfg.items()]))  # fmt: skip
    plots = [H.png_file_uri(os.path.join(workdir, p)) for p in ("scores_hist.png", "roc.png")]
    imgs = "".join(f'<img src="{u}" alt="plot">' for u in plots if u)
    parts.append(f'<div class="plots">{imgs}</div>')
    return H.section("Summary", "".join(parts))


def write(workdir: str, *, require_answers: bool = True, source=None) -> str:
    """Writes ``workdir/report.html`` from the workdir's files (module docstring); returns its
    path. ``require_answers=False``: a run whose samples were all pre-screened has no
    ``answers.jsonl``. ``source``: the run's dataset with its dirt, when the caller has it (a
    cleansing run passes its own: rebuilding it would wait at a barrier that only the writer
    process reaches); otherwise it is rebuilt from ``run_config.json``."""
    metrics = read_json(_need(os.path.join(workdir, "metrics.json")))
    if not isinstance(metrics, dict):
        raise DataError(f"{os.path.join(workdir, 'metrics.json')}: not a JSON object")
    rows = read_scores(os.path.join(workdir, "scores.csv"))
    apath = os.path.join(workdir, "answers.jsonl")
    answers = read_answers(apath) if require_answers or os.path.exists(apath) else {}
    try:
        rules = get_rules(metrics.get("protocol", {}).get("name", "ours"))
    except UserError as e:  # an unknown protocol name in a hand-edited file
        raise DataError(f"metrics.json: {e}") from None
    judged = metrics.get("config", {}).get("judge", "none") not in ("none", "")
    qa = verdicts(rows, answers, rules, judged,
                  read_judgements(os.path.join(workdir, "judgements.jsonl")))  # fmt: skip
    known = any(r["kind"] is not None for r in rows)
    order = sorted(rows, key=lambda r: (np.nan_to_num(r["score"], nan=-1.0), r["index"]))
    flagged = [r for r in order if r["flagged"]][:MAX_CARDS]
    kept = [r for r in order if not r["flagged"]][:MAX_CARDS]
    source, why = (source, "") if source is not None else _source(workdir)
    thumbs, why2 = _thumbs(source, flagged + kept)
    why = why or why2

    kinds = sorted({r["kind"] or "clean" for r in rows}) if known else []
    filters = [("cls", "class", sorted({r["class"] for r in rows})),
               ("verdict", "verdict", ["flagged", "kept"])]  # fmt: skip
    if known:
        filters.insert(1, ("kind", "dirt kind", kinds))
    body = [_summary(metrics, workdir)]
    if why:
        body.append(f'<p class="no">No images: {H.esc(why)}.</p>')
    body.append(H.filters_html(filters))
    n_flag = sum(r["flagged"] for r in rows)
    for name, sel, total in (("flagged", flagged, n_flag), ("kept", kept, len(rows) - n_flag)):
        cards = [_card(r, thumbs.get(r["index"]), qa.get(r["id"]), known) for r in sel]
        note = "lowest score first" + (
            f"; the first {len(sel)} of {total}" if len(sel) < total else ""
        )
        body.append(H.section(f"{name.capitalize()} samples ({total})", H.gallery(name, cards, page_size=PAGE),
                              note=note))  # fmt: skip
    skipped = _skipped(os.path.join(workdir, "skipped.tsv"))
    if skipped:
        body.append(
            H.section(
                f"Unreadable images ({len(skipped)})", H.table_html(["id", "reason"], skipped)
            )
        )
    return H.write_page(os.path.join(workdir, "report.html"), "VDC cleansing report", "".join(body))


def _skipped(path: str) -> list[list[str]]:
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [ln.rstrip("\n").split("\t", 1) for ln in list(f)[1:] if ln.strip()]


def main(argv) -> None:
    from vl_jax import cli, errors

    cli.quiet()
    if len(argv) > 1:
        errors.fail(ValueError(f"unexpected arguments: {argv[1:]}"))
    path = errors.exit_on_user_error(write, _WORKDIR.value)
    print(f"report: {path}")


if __name__ == "__main__":
    from absl import app, flags

    from vl_jax import cli

    _WORKDIR = flags.DEFINE_string("workdir", None, "a cleansing run's workdir")
    flags.mark_flag_as_required("workdir")
    app.run(main, flags_parser=cli.parse_flags)
