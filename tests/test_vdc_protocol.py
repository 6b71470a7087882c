"""VDC's two rule sets (vdc_jax.protocol / vdc_jax.official): each official rule on crafted
answers (its known failures included), ours' fixes, the corpus table in docs/vdc.md, the paper
configs for every arg, and the protocol recorded in metrics.json and the answers fingerprint."""

import itertools
import json
import math
import runpy
from pathlib import Path

import numpy as np
import pytest

from configs.vdc.common import ATTACK_NAMES, DATASETS, MLLMS, PROTOCOLS, vdc_config
from vdc_jax import cleanse, official, report
from vdc_jax.answers import NO, UNKNOWN, YES, Sample, parse_yes_no, score_samples
from vdc_jax.protocol import (
    OFFICIAL,
    OFFICIAL_GENERAL,
    OURS,
    Case,
    compare_rules,
    decide,
    get_rules,
)
from vdc_jax.questions import GENERAL_QUESTIONS, load_or_generate
from vdc_jax.scoring import Table
from vl_jax.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
DOG = "Is there a dog in the image?"
GOLDEN = "Is the animal a golden retriever?"
EARS = "Does the dog have long drooping ears?"

# (case, what ours says, what the official rules say): True = consistent, None = dropped.
# `truth` is what a careful reader concludes: does the answer confirm the label?
# fmt: off
CORPUS = [
    # a verdict after a leading clause or sentence
    (Case("verdict after a clause", "Looking at the image, yes, there is a dog.", True), True, True),
    (Case("verdict after a clause", "The image shows a beach. No, there is no dog.", False), False, False),
    (Case("verdict after a clause", "Based on the image, no.", False), False, False),
    (Case("verdict after a clause", "From what I can see, yes.", True), True, True),
    (Case("verdict after a clause", "Looking closely, I would say yes.", True), True, True),
    (Case("verdict after a clause", "In this picture, yes there is a dog on the grass.", True), True, True),
    (Case("verdict after a clause", "After examining the image, no, the animal is a cat.", False), False, False),
    (Case("verdict after a clause", "The photo is blurry. Yes, a dog is visible.", True), True, True),
    (Case("verdict after a clause", "Well, yeah.", True), True, False),  # no "yes" in "yeah"
    (Case("verdict after a clause", "Hmm, no.", False), False, False),
    (Case("verdict after a clause", "Looking at the image, it is hard to tell.", False), False, False),
    # declarative answers that affirm the asked object or attribute
    (Case("declarative affirmation", "There is a dog in the image.", True), True, False),
    (Case("declarative affirmation", "A dog is lying on the sofa.", True), True, False),
    (Case("declarative affirmation", "The image contains a dog.", True), True, False),
    (Case("declarative affirmation", "I can see a dog in the picture.", True), True, False),
    (Case("declarative affirmation", "The dogs are sitting on the grass.", True), True, False),
    (Case("declarative affirmation", "The animal is a golden retriever.", True, GOLDEN), True, False),
    (Case("declarative affirmation", "It is a golden retriever.", True, GOLDEN), True, False),
    (Case("declarative affirmation", "The dog has long, drooping ears.", True, EARS), True, False),
    (Case("declarative affirmation", "Its ears are floppy.", True, "Does the dog have floppy ears?"), True, False),
    (Case("declarative affirmation", "It is a dog, not a cat.", True), True, False),
    (Case("declarative affirmation", "The dog is running across the field.", True, "Is the dog running?"), True, False),
    (Case("declarative affirmation", "The animal appears to be a dog.", True), True, False),
    # declarative answers that deny it
    (Case("declarative denial", "I don't see any dog.", False), False, False),
    (Case("declarative denial", "The animal is a cat, not a dog.", False), False, False),
    (Case("declarative denial", "There are no dogs in this image.", False), False, False),
    (Case("declarative denial", "The image only shows a cat.", False), False, False),
    (Case("declarative denial", "The dog has short ears.", False, EARS), False, False),
    (Case("declarative denial", "Only a cat is visible; no dog.", False), False, False),
    (Case("declarative denial", "It is a golden retriever, not a beagle.", False, "Is there a beagle in the image?"), False, False),
    # hedged answers confirm nothing
    (Case("hedged", "There might be a dog behind the tree.", False), False, False),
    (Case("hedged", "It could possibly be a dog.", False), False, False),
    (Case("hedged", "Looking at the image, maybe.", False), False, False),
    # the substring rule's failures: "yes" inside a word, or a yes-word without "yes"
    (Case("substring traps", "The dog's eyes are brown.", False, "Does the dog have blue eyes?"), False, True),
    (Case("substring traps", "Its eyes are closed.", False, "Are the dog's eyes open?"), False, True),
    (Case("substring traps", "No, but the eyes are visible.", False), False, True),
    (Case("substring traps", "Yeah, definitely.", True), True, False),
    (Case("substring traps", "Definitely.", True), True, False),
    (Case("substring traps", "Correct, it is a dog.", True), True, False),
    (Case("substring traps", "Absolutely.", True), True, False),
    (Case("substring traps", "Yes, it is.", True), True, True),
    # empty answers: ours counts them as not confirming, the official rules drop them
    (Case("empty answer", "", False), False, None),
    (Case("empty answer", "   ", False), False, None),
    # descriptions (keyword stage, no judge): shared words of other classes
    (Case("description: shared word", "A Labrador retriever running on a beach.", False, None, "golden retriever"), False, True),
    (Case("description: shared word", "A cocker spaniel sitting on a couch.", False, None, "Welsh springer spaniel"), False, True),
    (Case("description: shared word", "A golden sunset over the sea.", False, None, "golden retriever"), False, True),
    (Case("description: shared word", "A dog playing in the park.", False, None, "hot dog"), False, True),
    (Case("description: names the class", "Two golden retrievers play in the snow.", True, None, "golden retriever"), True, True),
    (Case("description: names the class", "A large aircraft parked at the gate.", True, None, "airplane"), True, True),
    (Case("description: names the class", "A red car on a wet street.", True, None, "automobile"), True, True),
    # known misses of both rule sets: synonyms, hypernyms, paraphrase, negated descriptions
    (Case("known misses", "A puppy is sleeping on a rug.", True), False, False),
    (Case("known misses", "The animal is a golden retriever.", True), False, False),
    (Case("known misses", "Its ears hang down.", True, EARS), False, False),
    (Case("known misses", "Not only is there a dog, there is also a cat.", True), False, False),
    (Case("known misses", "This is not a golden retriever but a Labrador.", False, None, "golden retriever"), True, True),
]
# fmt: on
CASES = [c for c, _, _ in CORPUS]


def test_corpus_is_large_enough():
    assert len(CORPUS) >= 45 and all(isinstance(t, bool) for t in (c.truth for c in CASES))


@pytest.mark.parametrize("case, ours, off", CORPUS, ids=[c.answer[:40] for c in CASES])
def test_corpus_verdicts_of_both_rule_sets(case, ours, off):
    assert decide(OURS, case) is ours
    assert decide(OFFICIAL, case) is off


def test_docs_hold_the_generated_corpus_table():
    table = compare_rules(CASES)
    doc = (REPO / "docs" / "vdc.md").read_text()
    assert table in doc, f"docs/vdc.md must hold compare_rules(CASES):\n{table}"
    last = table.strip().splitlines()[-1]  # ours gets more right than the official rules
    assert last.startswith("| **all** |")
    ours_right, off_right = (int(cell.split("/")[0]) for cell in last.split("|")[3:5])
    assert ours_right > off_right


# ---- each official rule on crafted answers ----


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("Yes", True),
        ("YES, it is.", True),
        ("No, but it looks yes-like.", True),  # fires on any "yes"
        ("The dog's eyes are brown.", True),  # known failure: "yes" in "eyes"
        ("Yeah.", False),  # known misses: no "yes" substring
        ("Definitely!", False),
        ("Correct.", False),
        ("No.", False),
        ("", False),
    ],
)
def test_official_substring_rule(answer, expected):
    assert official.substring_yes(answer) is expected
    assert (OFFICIAL.yes_no(answer, DOG).value == YES) is expected


def test_official_name_tokens_split_commas_spaces_hyphens_underscores():
    names = ["German shepherd", "German_police-dog", "alsatian"]
    assert official.name_tokens(names) == ("german", "shepherd", "police", "dog", "alsatian")
    assert official.name_tokens(["airplane, aircraft"]) == ("airplane", "aircraft")


@pytest.mark.parametrize(
    "description, label, hit",
    [
        ("Two golden retrievers.", "golden retriever", "golden"),
        ("A golden sunset.", "golden retriever", "golden"),  # known failure: any token
        ("A Labrador retriever on a beach.", "golden retriever", "retriever"),  # shared word
        ("A cocker spaniel on a couch.", "Welsh springer spaniel", "spaniel"),
        ("A dog in the park.", "hot dog", "dog"),
        ("Several dogs run.", "dog", "dog"),  # lemmatised: dogs -> dog
        ("A big aircraft.", "airplane", "aircraft"),  # CIFAR-10's official synonyms
        ("A car.", "automobile", "car"),
        ("I can see a bottle.", "can opener", None),  # "can" is an NLTK stop word
        ("A cat on a sofa.", "dog", None),
    ],
)
def test_official_any_token_rule(description, label, hit):
    assert OFFICIAL.describe(description, OFFICIAL.names(label)) == hit


def test_official_judge_prompt_and_reply():
    seen = []

    def ask(prompts):
        seen.extend(prompts)
        return ["Yes, they refer to the same object.", "no", "It says yes-ish", "Nope"]

    judge = OFFICIAL.llm_judge(ask, batch_size=8)
    names = OFFICIAL.names("airplane")
    label = OFFICIAL.judge_label("airplane", names)
    got = judge(["A jet.", "A bird.", "x", "y"], [label] * 4)
    assert [v.value for v in got] == [YES, NO, YES, NO]
    assert "'Caption'" in seen[0] and "- Caption: [A jet.]" in seen[0]
    assert "- Labels: [airplane, aircraft]" in seen[0]
    assert OURS.judge_label("airplane", names) == "airplane"


def test_empty_answers_dropped_by_official_counted_by_ours():
    s = Sample("a", "dog", descriptions=["", "A dog on grass."], yes_no=["Yes", " ", "No"],
               questions=[DOG, DOG, DOG])  # fmt: skip
    off, ours = score_samples([s], rules=OFFICIAL)[0], score_samples([s], rules=OURS)[0]
    assert (off.dropped, len(off.consistent), off.score) == (2, 3, 2 / 3)
    assert (ours.dropped, len(ours.consistent), ours.score) == (0, 5, 2 / 5)
    everything_empty = Sample("b", "dog", descriptions=[""], yes_no=[""])
    assert math.isnan(score_samples([everything_empty], rules=OFFICIAL)[0].score)


def test_flag_rule_boundary_at_exactly_one_half():
    score = np.array([0.5, 0.5, 0.49, 0.51, 0.5])
    dirty = np.array([True, False, False, True, True])
    assert OFFICIAL.detected(score, dirty, 0.5).tolist() == [True, False, True, False, True]
    assert OURS.detected(score, dirty, 0.5).tolist() == [False, False, True, False, False]


def _table(score, dirty):
    m = len(score)
    return Table(index=np.arange(m), ids=[str(i) for i in range(m)], labels=np.zeros(m, int),
                 class_names=["dog"], score=np.asarray(score, float),
                 flagged=np.asarray(score) < 0.5, consistent=np.zeros(m, int),
                 total=np.full(m, 8), n=m, is_dirty=np.asarray(dirty),
                 kinds=np.where(dirty, "badnets", ""), dropped=np.array([1] + [0] * (m - 1)))  # fmt: skip


def test_metrics_record_the_protocol_and_count_with_its_rule(monkeypatch):
    """The metrics dict `write_report` writes as metrics.json (not writing here: the plots take
    seconds; the slow end-to-end test below reads the file)."""
    monkeypatch.setattr(report, "is_writer", lambda: False)
    t = _table([0.5, 0.5, 0.25, 0.75], [True, False, False, True])
    m_off = report.write_report("unused", t, threshold=0.5, rules=OFFICIAL)
    assert m_off["protocol"]["name"] == "official" and "<=" in m_off["rule"]
    assert m_off["protocol"]["general_questions"] == list(OFFICIAL_GENERAL)
    assert m_off["counts"]["dropped_answers"] == 1
    # official: the dirty sample at 0.5 is detected; outputs still flag score < 0.5 only
    assert (m_off["overall"]["tp"], m_off["overall"]["fp"], m_off["counts"]["flagged"]) == (1, 1, 1)
    assert m_off["per_kind"]["badnets"]["tp"] == 1
    m_ours = report.write_report("unused", t, threshold=0.5)
    assert m_ours["protocol"]["name"] == "ours" and m_ours["rule"] == "dirty iff score < threshold"
    assert (m_ours["overall"]["tp"], m_ours["overall"]["fp"]) == (0, 1)


# ---- ours' fixes, with and without the question ----


def test_ours_reads_a_verdict_after_a_leading_clause():
    assert parse_yes_no("Looking at the image, yes, there is a dog.").value == YES
    assert parse_yes_no("The image shows a beach. No, there is no dog.").value == NO
    # "no" opening a later clause is a verdict only alone or before a new clause's subject
    assert parse_yes_no("It shows a cat, no collar visible").value == UNKNOWN
    assert parse_yes_no("It is a dog, not a cat.").value == UNKNOWN  # without the question


def test_ours_declaratives_need_every_content_word_of_the_question():
    assert parse_yes_no("There is a dog.", GOLDEN).value == UNKNOWN
    assert parse_yes_no("The dog has long ears.", EARS).value == UNKNOWN  # "drooping" unsaid
    assert parse_yes_no("A golden retriever.", GOLDEN).value == YES
    assert parse_yes_no("There is a dog.", "Is there an animal in the image?").value == UNKNOWN


# ---- the protocol in the run: questions, fingerprint, configs ----


def test_rules_chosen_once_by_name():
    assert get_rules("ours") is OURS and get_rules("official") is OFFICIAL
    with pytest.raises(ConfigError, match=r"config\.protocol"):
        get_rules("paper")
    assert OURS.general_questions == GENERAL_QUESTIONS


def test_general_questions_follow_the_protocol(tmp_path):
    path = tmp_path / "questions.json"
    qs = load_or_generate(path, ["dog"], n=2)
    assert qs.general == GENERAL_QUESTIONS
    qs = load_or_generate(path, ["dog"], n=2, general=OFFICIAL_GENERAL)
    assert qs.general == OFFICIAL_GENERAL
    assert json.loads(path.read_text())["general"] == list(OFFICIAL_GENERAL)


def test_protocol_is_in_the_answers_fingerprint():
    c = vdc_config()
    ours = cleanse.fingerprint(c)
    c.protocol = "official"
    assert cleanse.fingerprint(c)["protocol"] == "official" != ours["protocol"]


PAPER = {  # every choice of every paper config's arg
    "imagenet_dog.py": dict(attack=ATTACK_NAMES),
    "cifar10.py": dict(attack=ATTACK_NAMES),
    "imagenet100.py": dict(attack=ATTACK_NAMES),
    "noise.py": dict(dataset=tuple(DATASETS), noise=("sym", "asym")),
    "hybrid.py": dict(dataset=tuple(DATASETS), attack=ATTACK_NAMES, noise=("sym", "asym")),
}
FLAGS = ["", "llava", "ours", "small", "llava,small", "ours,small"]


def _leaves(d, prefix=""):
    out = set()
    for k, v in d.items():
        out |= _leaves(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k}
    return out


@pytest.mark.parametrize("name", sorted(PAPER))
def test_every_paper_config_arg_builds(name):
    get = runpy.run_path(str(REPO / "configs" / "vdc" / name))["get_config"]
    schema = _leaves(vdc_config().to_dict())
    choices = list(itertools.product(*PAPER[name].values()))
    for words, flags in itertools.product(choices, FLAGS):
        arg = ",".join([*words, *([flags] if flags else [])])
        c = get(arg)
        assert _leaves(c.to_dict()) == schema, arg  # every field the driver reads, no more
        assert get_rules(c.protocol).name == c.protocol in PROTOCOLS
        assert c.vqa.prompt in ("chat", "raw") and c.threshold == 0.5
        if not flags:  # the paper's pipeline
            assert (c.protocol, c.model.name) == ("official", MLLMS["instructblip"])
            v = c.vqa
            decoding = (v.prompt, v.num_beams, v.repetition_penalty, v.length_penalty)
            assert decoding == ("raw", 5, 1.5, 1.0)
            assert (v.min_new_tokens, v.describe_tokens, v.yes_no_tokens) == (1, 256, 256)
        elif flags == "llava":
            assert (c.protocol, c.model.name, c.vqa.prompt) == ("official", MLLMS["7b"], "chat")
            assert (c.vqa.num_beams, c.vqa.describe_tokens) == (1, 512)
        elif flags.startswith("ours"):
            assert c.protocol == "ours" and c.vqa.num_beams == 1
        if "small" in flags:
            assert c.model.name == MLLMS["small"]
    with pytest.raises(ConfigError, match="config arg"):
        get(",".join([*choices[0], "official"]))


@pytest.mark.slow
def test_official_protocol_end_to_end_on_runlocal(tmp_path):
    """The tiny runlocal setup with the official rules: metrics.json says so, the official
    general questions were asked, and the metrics follow the official detection rule."""
    from vdc_jax.cleanse import clean

    get = runpy.run_path(str(REPO / "configs" / "vdc" / "runlocal.py"))["get_config"]
    c = get()
    c.protocol = "official"
    m, table = clean(c, str(tmp_path))
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk["protocol"]["name"] == "official" and on_disk["config"]["protocol"] == "official"
    assert on_disk["rule"] == OFFICIAL.rule
    asked = {json.loads(line)["question"] for line in open(tmp_path / "answers.jsonl")}
    assert set(OFFICIAL_GENERAL) <= asked and GENERAL_QUESTIONS[1] not in asked
    flags = OFFICIAL.detected(table.score, table.is_dirty, 0.5)
    assert m["overall"]["tp"] == int(np.sum(flags & table.is_dirty))
    assert m["overall"]["fp"] == int(np.sum(flags & ~table.is_dirty))
    assert json.loads((tmp_path / "run_config.json").read_text())["protocol"] == "official"
