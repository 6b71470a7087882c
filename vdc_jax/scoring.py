"""VAE aggregation: the stored answers of every sample -> its consistency score and verdict.

    table = score(items, store, questions, class_names, judge, threshold=0.5, n=len(source))
    table.score, table.flagged                      # float [M], bool [M]

Per sample (VDC, Zhu et al. 2024, §3.3): each answer is judged consistent with the sample's
label or not (`vdc_jax.answers.score_samples`: keyword match / yes-no parse, then the judge for
descriptions without a keyword hit); the score is consistent / total, and the sample is flagged
dirty when ``score < threshold`` (`vdc_jax.detection.flag_dirty`). The answers are read back
from ``answers.jsonl`` a block of samples at a time, so scoring memory does not grow with the
dataset.

Samples whose image could not be read (VQA skipped them: `vdc_jax.vqa.Step.skipped`) are not
scored: the caller leaves them out of `items` and records them in `Table.skipped`, so they are
neither kept nor flagged and ``skipped.tsv`` lists them (`vdc_jax.report`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from vdc_jax import answers as vae
from vdc_jax.detection import flag_dirty
from vdc_jax.protocol import OURS, Rules
from vdc_jax.vqa import DESCRIBE, AnswerStore, Item, pairs_of
from vl_jax.data.pipeline import Skipped

__all__ = ["SCORE_BLOCK", "Table", "score"]

SCORE_BLOCK = 4096  # samples scored (answers read back, judge called) per step


@dataclasses.dataclass
class Table:
    """Per-sample results, all [M] in dataset order (M <= N: samples without a label, and those
    whose image could not be read, are not scored); `n` is the dataset length N for the
    label-issue mask; `skipped` lists the unreadable samples (index = dataset position, id,
    reason) in dataset order."""

    index: np.ndarray  # int [M] dataset position
    ids: list[str]
    labels: np.ndarray  # int [M] label checked (after corruption)
    class_names: list[str]
    score: np.ndarray  # float [M]
    flagged: np.ndarray  # bool [M]
    consistent: np.ndarray  # int [M]
    total: np.ndarray  # int [M] answers counted (empty ones dropped under the official rules)
    n: int
    dropped: np.ndarray | None = None  # int [M] empty answers left out of the score
    is_dirty: np.ndarray | None = None  # bool [M], when known
    kinds: np.ndarray | None = None  # str [M], "" = clean, when known
    # (id, description, consistent, reason) for each description the judge decided
    judged: list[tuple[str, str, bool, str]] = dataclasses.field(default_factory=list)
    paths: list[str] | None = None  # [M] image files, when known
    skipped: list[Skipped] = dataclasses.field(default_factory=list)  # left out: unreadable


def score(
    items: Sequence[Item],
    store: AnswerStore,
    questions,
    class_names: Sequence[str],
    judge: vae.Judge | None,
    threshold: float,
    n: int,
    *,
    block: int = SCORE_BLOCK,
    rules: Rules | None = None,
) -> Table:
    """VAE on the stored answers of `items` -> a `Table` ([M] arrays, M = len(items);
    `n` = the dataset length N, for the label-issue mask).

    `rules`: the protocol's rule set (`vdc_jax.protocol.Rules`; default ours). Blocks of
    `block` samples at a time: their answers are read (`AnswerStore.answers`), scored with one
    batched judge call, and only the per-sample counts are kept."""
    rules = OURS if rules is None else rules
    consistent, total = np.zeros(len(items), np.int64), np.zeros(len(items), np.int64)
    dropped = np.zeros(len(items), np.int64)
    judged = []  # only the judge's decisions are kept per answer (few); the rest are counts
    label_names = {}  # class name -> names a description may use (a WordNet scan: once each)
    for lo in range(0, len(items), block):
        part = items[lo : lo + block]
        asked = [(it, q, kind) for it in part for q, kind in pairs_of(it, questions, class_names)]
        got = iter(store.answers([(it.index, it.id, q) for it, q, _ in asked]))
        # per sample: (descriptions, yes/no answers, yes/no questions)
        per_item = {it.index: ([], [], []) for it in part}
        for it, q, kind in asked:
            per_item[it.index][kind != DESCRIBE].append(next(got))
            if kind != DESCRIBE:
                per_item[it.index][2].append(q)
        samples = []
        for it in part:
            name = class_names[it.label]
            if name not in label_names:
                label_names[name] = rules.names(name)
            desc, yes_no, qs = per_item[it.index]
            samples.append(vae.Sample(it.id, name, descriptions=desc, yes_no=yes_no,
                                      names=label_names[name], questions=qs))  # fmt: skip
        results = vae.score_samples(samples, judge=judge, rules=rules)
        consistent[lo : lo + len(part)] = [sum(r.consistent) for r in results]
        total[lo : lo + len(part)] = [len(r.consistent) for r in results]
        dropped[lo : lo + len(part)] = [r.dropped for r in results]
        judged += [(r.id, *j) for r in results for j in r.judged]
    scores = np.divide(consistent, total, out=np.full(len(items), np.nan), where=total > 0)
    return Table(
        index=np.asarray([it.index for it in items], np.int64),
        ids=[it.id for it in items],
        labels=np.asarray([it.label for it in items], np.int64),
        class_names=list(class_names),
        score=scores,
        flagged=flag_dirty(scores, threshold),
        consistent=consistent,
        total=total,
        n=n,
        dropped=dropped,
        judged=judged,
    )
