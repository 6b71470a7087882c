"""The two VDC rule sets, chosen once per run from ``config.protocol``: "ours" and "official".

    rules = get_rules(config.protocol)          # OURS or OFFICIAL
    rules.general_questions                      # the two description prompts asked
    rules.yes_no("Yes, it is.", "Is there a dog?")             # Verdict
    rules.describe("A golden retriever on grass.", rules.names("golden retriever"))
    judge = rules.llm_judge(ask, batch_size=64)  # the judge prompt and reply rule of the set
    rules.detected(score, is_dirty, 0.5)         # the flags the detection metrics count

Everything that differs between the official VDC pipeline and ours lives in one `Rules`
object, so the rest of the cleanser never asks which protocol it runs:

| | ours (default) | official |
|---|---|---|
| general questions | "Describe the image in detail." / "What is the main object in this image? Describe it in detail." | "Describe the image in detail." / "Provide a detailed description of the given image." |
| yes/no answer | leading verdict, negation, later-clause verdict, declarative vs the question (`answers.parse_yes_no`) | "yes" occurs in the lower-cased answer (`official.substring_yes`) |
| description | a whole class name (lemmatised phrase) occurs (`answers.keyword_match`) | any single class-name token occurs (`official.any_token_match`) |
| judge prompt / reply | ours, leading verdict parsed | "Caption" / "Labels", "yes" anywhere |
| empty answer | counts, as not consistent | dropped (counts neither way) |
| detection metrics | dirty iff score < threshold, for every sample | a dirty sample detected iff score <= threshold, a clean one flagged iff score < threshold |

Both use the same class-name strings (`Rules.names`): the class name split on commas, the
official synonyms of CIFAR-10 (`CLASS_SYNONYMS`) and, for an ImageNet-1k class, its synset's
lemmas. The outputs (`scores.csv` flagged, `kept_ids.txt`, `label_issues.npy`, `cleaned.csv`)
use ``score < threshold`` under both protocols: the official metric rule needs the ground truth,
which a real run does not have.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from vdc_jax import answers, official
from vdc_jax.answers import NO, YES, Verdict
from vdc_jax.questions import GENERAL_QUESTIONS

__all__ = [
    "CLASS_SYNONYMS", "OFFICIAL", "OFFICIAL_GENERAL", "OURS", "PROTOCOLS", "Case", "Rules",
    "class_names", "compare_rules", "decide", "get_rules",
]  # fmt: skip

# CIFAR-10's class-name strings with the synonyms the official code gives them (the other eight
# classes are their plain names). ImageNet classes take their synset's lemmas from the WordNet
# table instead (`answers.label_names`).
CLASS_SYNONYMS = {"airplane": ("aircraft",), "automobile": ("car",)}

# The official code's two general questions (ours: `vdc_jax.questions.GENERAL_QUESTIONS`).
OFFICIAL_GENERAL = (
    "Describe the image in detail.",
    "Provide a detailed description of the given image.",
)


def class_names(label: str) -> tuple[str, ...]:
    """The names a description may use for ``label``: `answers.label_names` (class name split
    on commas, ImageNet synset lemmas) plus `CLASS_SYNONYMS`."""
    names = list(answers.label_names(label))
    seen = {n.lower() for n in names}
    names += [s for s in CLASS_SYNONYMS.get(label.strip().lower(), ()) if s not in seen]
    return tuple(names)


@dataclasses.dataclass(frozen=True)
class Rules:
    """One protocol's evaluation rules (see the module docstring's table).

    Attributes:
      name: "ours" or "official" (recorded in metrics.json and the answers fingerprint).
      general_questions: the description prompts every sample is asked.
      yes_no: (answer, question or None) -> Verdict of a label-specific answer.
      match: (description, names) -> the name or token that makes it consistent, or None.
      judge_prompt: (description, judge label) -> the judge LLM's prompt.
      judge_reply: the judge's reply -> Verdict.
      synonyms_to_judge: the judge sees every name ("airplane, aircraft"), not the class name.
      drop_empty: empty answers are left out of the score instead of counting as inconsistent.
      dirty_inclusive: a dirty sample counts as detected at score == threshold (metrics only).
      rule: the detection rule in words (metrics.json).
    """

    name: str
    general_questions: tuple[str, ...]
    yes_no: Callable[[str, str | None], Verdict]
    match: Callable[[str, Sequence[str]], str | None]
    judge_prompt: Callable[[str, str], str]
    judge_reply: Callable[[str], Verdict]
    synonyms_to_judge: bool
    drop_empty: bool
    dirty_inclusive: bool
    rule: str

    def names(self, label: str) -> tuple[str, ...]:
        return class_names(label)

    def describe(self, description: str, names: Sequence[str], any_token: bool = False):
        """The matching name (or token) of a description, or None. ``any_token`` swaps in the
        official any-token rule (a what-if switch of `answers.score_samples`)."""
        return _official_match(description, names) if any_token else self.match(description, names)

    def judge_label(self, label: str, names: Sequence[str]) -> str:
        return ", ".join(names) if self.synonyms_to_judge else label

    def llm_judge(self, ask, batch_size: int = 64) -> answers.Judge:
        """`answers.llm_judge` with this rule set's prompt and reply rule."""
        return answers.llm_judge(ask, batch_size, prompt=self.judge_prompt, parse=self.judge_reply)

    def detected(self, score, dirty, threshold: float) -> np.ndarray:
        """``bool [N]``: the flags the detection metrics count (TP/FP/...). Ours: score <
        threshold for every sample. Official: a dirty sample at exactly the threshold counts
        as detected too (its code used <= for poisoned, < for clean samples)."""
        s, d = np.asarray(score, np.float64), np.asarray(dirty, bool)
        return np.where(d & self.dirty_inclusive, s <= threshold, s < threshold)

    def summary(self) -> dict:
        """What metrics.json records about the rule set."""
        return {"name": self.name, "general_questions": list(self.general_questions),
                "empty_answers": "dropped" if self.drop_empty else "counted as not consistent",
                "detection_rule": self.rule}  # fmt: skip


def _official_yes_no(answer: str, question: str | None = None) -> Verdict:
    hit = official.substring_yes(answer)
    return Verdict(YES if hit else NO, "'yes' occurs in the answer" if hit else "no 'yes' in it")


def _official_match(description: str, names: Sequence[str]) -> str | None:
    return official.any_token_match(description, official.name_tokens(names))


def _official_reply(reply: str) -> Verdict:
    return _official_yes_no(reply)


OURS = Rules(
    name="ours",
    general_questions=GENERAL_QUESTIONS,
    yes_no=answers.parse_yes_no,
    match=answers.keyword_match,
    judge_prompt=answers.judge_prompt,
    judge_reply=answers.parse_yes_no,
    synonyms_to_judge=False,
    drop_empty=False,
    dirty_inclusive=False,
    rule="dirty iff score < threshold",
)
OFFICIAL = Rules(
    name="official",
    general_questions=OFFICIAL_GENERAL,
    yes_no=_official_yes_no,
    match=_official_match,
    judge_prompt=official.judge_prompt,
    judge_reply=_official_reply,
    synonyms_to_judge=True,
    drop_empty=True,
    dirty_inclusive=True,
    rule="official: a dirty sample is detected iff score <= threshold, a clean sample is a "
    "false positive iff score < threshold (TPR/FPR/precision/F1); outputs use score < threshold",
)
PROTOCOLS = {r.name: r for r in (OURS, OFFICIAL)}


def get_rules(name: str) -> Rules:
    """The rule set of ``config.protocol``; ConfigError names the known ones."""
    from vl_jax.errors import ConfigError

    if name not in PROTOCOLS:
        raise ConfigError(f"config.protocol must be one of {sorted(PROTOCOLS)}, got {name!r}")
    return PROTOCOLS[name]


# ---- comparing the rule sets on a corpus of answers with known verdicts ----


@dataclasses.dataclass(frozen=True)
class Case:
    """One answer with the verdict a careful reader gives it.

    ``truth``: the answer confirms the label (consistent). ``question``: a yes/no question, or
    None for a description answer (judged against ``label``'s names, without a judge)."""

    kind: str
    answer: str
    truth: bool
    question: str | None = "Is there a dog in the image?"
    label: str = "dog"


def decide(rules: Rules, case: Case) -> bool | None:
    """The rule set's verdict on one case (None = the answer is dropped); descriptions without
    a keyword hit count as inconsistent (no judge)."""
    if rules.drop_empty and not case.answer.strip():
        return None
    if case.question is None:
        return rules.describe(case.answer, rules.names(case.label)) is not None
    return rules.yes_no(case.answer, case.question).value == YES


def compare_rules(cases: Sequence[Case], rule_sets: Sequence[Rules] = (OURS, OFFICIAL)) -> str:
    """A markdown table: per kind of answer, how many cases each rule set gets right / wrong
    (and drops). docs/vdc.md holds this table for the test corpus (a test checks it)."""
    kinds = list(dict.fromkeys(c.kind for c in cases))
    head = "| kind | cases | " + " | ".join(f"{r.name} right / wrong" for r in rule_sets) + " |"
    lines = [head, "|---|---|" + "---|" * len(rule_sets)]
    for kind in [*kinds, None]:
        sel = [c for c in cases if c.kind == kind] if kind else cases
        cells = []
        for r in rule_sets:
            got = [decide(r, c) for c in sel]
            right = sum(g is not None and g == c.truth for g, c in zip(got, sel))
            dropped = sum(g is None for g in got)
            cells.append(f"{right} / {len(sel) - right - dropped}" + (f" ({dropped} dropped)" if dropped else ""))  # fmt: skip
        name = kind if kind else "**all**"
        lines.append(f"| {name} | {len(sel)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
