"""VAE: yes/no parsing, keyword matching with lemmatisation, judges, scores and metrics."""

import math

import numpy as np
import pytest

from vdc_jax.answers import (
    NO,
    UNKNOWN,
    YES,
    Sample,
    embedding_judge,
    keyword_match,
    label_names,
    lemma_candidates,
    llm_judge,
    parse_yes_no,
    score_samples,
    tokens,
)
from vdc_jax.detection import detection_metrics, flag_dirty

ANSWERS = [
    ("Yes", YES),
    ("yes.", YES),
    ("YES!", YES),
    ("Yes, it is.", YES),
    ("yes it is a beagle", YES),
    ("**Yes**, there is a dog.", YES),
    ("  Yeah, definitely", YES),
    ("Yep", YES),
    ("Correct.", YES),
    ("Of course, it is a dog.", YES),
    ("I think so.", YES),
    ("No doubt, it is a retriever.", YES),
    ("The answer is yes.", YES),
    ("Answer: Yes", YES),
    ("Yes, but its ears are not visible.", YES),  # the leading verdict wins
    ("Certainly!", YES),
    ("No", NO),
    ("No.", NO),
    ("no, it is a cat", NO),
    ("Nope.", NO),
    ("Not really.", NO),
    ("Not at all", NO),
    ("Absolutely not.", NO),
    ("Certainly not", NO),
    ("Of course not", NO),
    ("I don't think so.", NO),
    ("I do not think so", NO),
    ("There is no dog in the image.", NO),
    ("It is not a dog.", NO),
    ("The image doesn't show a dog.", NO),
    ("There isn't any dog here", NO),
    ("I can't see any dog in the picture.", NO),
    ("None.", NO),
    ("Nothing in the image suggests a dog", NO),
    ("Incorrect", NO),
    ("Yes and no.", UNKNOWN),
    ("Maybe", UNKNOWN),
    ("I'm not sure.", UNKNOWN),
    ("It is hard to say from this image.", UNKNOWN),
    ("I cannot tell from the image", UNKNOWN),
    ("", UNKNOWN),
    ("   ", UNKNOWN),
    ("???", UNKNOWN),
    ("asdf qwer", UNKNOWN),
    # substring traps: the official `"yes" in answer` / `"no" in answer` get these wrong
    ("The dog's eyes are brown.", UNKNOWN),  # "yes" in "eyes"
    ("Eyes: brown", UNKNOWN),
    ("The snout is long and narrow.", UNKNOWN),  # "no" in "snout"
    ("Its nose is black.", UNKNOWN),  # "no" in "nose"
    ("Noticeably, the dog has long ears.", UNKNOWN),  # starts with "no" letters
    ("Now I see a dog", UNKNOWN),
    ("I know it is a dog", UNKNOWN),
    ("It is a dog, not a cat.", UNKNOWN),  # negation outside the first clause
    ("The image shows a cat.", UNKNOWN),  # says nothing about the asked label
    # a verdict after a leading clause or sentence (rule 5)
    ("Looking at the image, yes, there is a dog.", YES),
    ("The image shows a beach. No, there is no dog.", NO),
    ("Based on the picture, the answer is no.", NO),
    ("Looking closely, I would say yes.", YES),
    ("Hmm, I think so.", YES),
    ("Well, I don't think so.", NO),
    ("From this angle, it is hard to say.", UNKNOWN),
    ("It shows a cat, no collar.", UNKNOWN),  # "no" + a noun is not a verdict there
]


def test_answer_table_is_large_enough():
    assert len(ANSWERS) >= 30


@pytest.mark.parametrize("answer, expected", ANSWERS)
def test_parse_yes_no(answer, expected):
    v = parse_yes_no(answer)
    assert v.value == expected, (answer, v)
    assert v.reason


def test_unknown_says_why():
    assert parse_yes_no("").reason == "empty answer"
    assert "hedged" in parse_yes_no("yes and no").reason
    assert "no leading" in parse_yes_no("The snout is long").reason


def test_lemmatiser():
    assert "retriever" in lemma_candidates("retrievers")
    assert "puppy" in lemma_candidates("puppies")
    assert "box" in lemma_candidates("boxes")
    assert "wolf" in lemma_candidates("wolves")
    assert "knife" in lemma_candidates("knives")
    assert "mouse" in lemma_candidates("mice")
    assert "woman" in lemma_candidates("women")
    assert "glass" in lemma_candidates("glasses")
    assert lemma_candidates("bass") == {"bass"}  # "-ss" is not a plural
    assert lemma_candidates("bus") == {"bus"}  # no candidate shorter than 3 letters
    assert tokens("A man-eater, the dog's snout") == ["man", "eater", "dog", "snout"]


def test_label_names_from_imagenet_lemmas():
    assert label_names("great white shark") == (
        "great white shark",
        "white shark",
        "man-eater",
        "man-eating shark",
        "Carcharodon carcharias",
    )
    assert label_names("crane (n02012849)") == ("crane",)  # the bird, WNID from the suffix
    assert label_names("tabby, tabby cat") == ("tabby", "tabby cat")
    assert label_names("my own class") == ("my own class",)  # not ImageNet: the name only
    assert label_names("hammerhead", wnid="n01494475") == ("hammerhead", "hammerhead shark")


@pytest.mark.parametrize(
    "description, names, expected",
    [
        ("Two golden retrievers play in the grass.", ("golden retriever",), "golden retriever"),
        ("A Golden-Retriever puppy.", ("golden retriever",), "golden retriever"),
        ("A golden sunset over a retriever.", ("golden retriever",), None),  # not a phrase
        ("A retriever on a beach.", ("golden retriever",), None),  # left to the judge
        ("A man eating shark swims", label_names("great white shark"), "man-eating shark"),
        ("Several wolves in the snow", ("timber wolf", "wolf"), "wolf"),
        ("The dog's eyes are brown", ("yes",), None),  # tokens, not substrings
        ("A beagle snouts around", ("no",), None),
        ("Knives on a table", ("knife",), "knife"),
        ("A white shark", ("white shark",), "white shark"),
    ],
)
def test_keyword_match(description, names, expected):
    assert keyword_match(description, names) == expected


def test_keyword_match_any_token_is_the_official_rule():
    assert keyword_match("A golden sunset", ("golden retriever",), any_token=True)
    assert keyword_match("A golden sunset", ("golden retriever",)) is None


class FakeAsk:
    """A judge LLM that records its calls and says yes iff the prompt mentions 'retriever'."""

    def __init__(self):
        self.calls = []

    def __call__(self, prompts):
        self.calls.append(list(prompts))
        return ["Yes." if "retriever" in p.split('"')[1] else "No, it is not." for p in prompts]


def _samples():
    return [
        Sample("a", "golden retriever", ["A golden retriever.", "A dog on grass."], ["Yes", "yes"]),
        Sample("b", "golden retriever", ["A retriever on grass.", "A cat."], ["No.", "Yes"]),
        Sample("c", "golden retriever", ["A cat.", "A tabby cat."], ["No", "eyes"]),
        Sample("d", "beagle", ["A beagle.", "Beagles."], ["Yes", "Yes"]),
    ]


def test_judge_only_sees_undecided_descriptions_in_one_batch():
    ask = FakeAsk()
    res = score_samples(_samples(), judge=llm_judge(ask, batch_size=64))
    assert len(ask.calls) == 1  # one batch
    sent = [p.split('"')[1] for p in ask.calls[0]]
    # keyword hits ("A golden retriever.", "A beagle.", "Beagles.") never reach the judge
    assert sent == ["A dog on grass.", "A retriever on grass.", "A cat.", "A cat.", "A tabby cat."]
    assert [r.consistent for r in res] == [
        [True, False, True, True],
        [True, False, False, True],
        [False, False, False, False],
        [True, True, True, True],
    ]
    assert res[1].how[0].startswith("no keyword; yes (judge:")
    assert res[0].how[0] == "keyword 'golden retriever'"
    assert [r.score for r in res] == [0.75, 0.5, 0.0, 1.0]


def test_judge_batches_and_no_judge():
    ask = FakeAsk()
    score_samples(_samples(), judge=llm_judge(ask, batch_size=2))
    assert [len(c) for c in ask.calls] == [2, 2, 1]
    res = score_samples(_samples())  # no judge: undecided descriptions are inconsistent
    assert [r.score for r in res] == [0.75, 0.25, 0.0, 1.0]


def test_embedding_judge():
    vocab = ["retriever", "cat", "grass"]
    embed = lambda texts: np.array([[float(w in t) for w in vocab] for t in texts]) + 1e-3
    judge = embedding_judge(embed, threshold=0.5)
    v = judge(["A retriever on grass.", "A cat."], ["retriever", "retriever"])
    assert [x.value for x in v] == [YES, NO]
    assert v[0].reason.startswith("embedding cos 0.7")
    assert judge([], []) == []


def test_threshold_and_metrics_on_a_hand_made_example():
    scores = [0.75, 0.5, 0.0, 1.0, 0.25, 0.625]
    dirty = [False, True, True, False, False, True]
    flagged = flag_dirty(scores)  # dirty iff score < 0.5
    np.testing.assert_array_equal(flagged, [False, False, True, False, True, False])
    m = detection_metrics(flagged, dirty)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (1, 1, 2, 2)
    assert m["tpr"] == pytest.approx(1 / 3)
    assert m["fpr"] == pytest.approx(1 / 3)
    assert m["precision"] == pytest.approx(1 / 2)
    assert m["f1"] == pytest.approx(2 * 0.5 * (1 / 3) / (0.5 + 1 / 3))
    # the paper's "score <= 0.5" for 8 questions is any threshold in (0.5, 0.625]
    np.testing.assert_array_equal(flag_dirty(scores, 0.5 + 1 / 16), np.asarray(scores) <= 0.5)
    empty = detection_metrics([False, False], [False, False])
    assert math.isnan(empty["tpr"]) and empty["fpr"] == 0.0 and math.isnan(empty["f1"])
    with pytest.raises(ValueError, match="shape"):
        detection_metrics([True], [True, False])


def test_judge_decisions_are_kept_for_the_report():
    # The judge's per-description decisions travel with the result (scoring -> judgements.jsonl)
    # and the HTML report shows them instead of recomputing "judge" placeholders.
    from vdc_jax.protocol import OURS
    from vdc_jax.report_html import verdicts

    res = score_samples(_samples(), judge=llm_judge(FakeAsk(), batch_size=64))
    assert [(d, c) for d, c, _ in res[1].judged] == [
        ("A retriever on grass.", True),
        ("A cat.", False),
    ]
    assert res[3].judged == []  # keyword hits never reach the judge
    records = {(r.id, d): (c, why) for r in res for d, c, why in r.judged}
    s = _samples()[1]
    answers = {"b": [{"kind": "describe", "question": "Describe.", "answer": d} for d in s.descriptions]
               + [{"kind": "yes_no", "question": "Is it a golden retriever?", "answer": a}
                  for a in s.yes_no]}  # fmt: skip
    for recorded, pending in ((records, 0), ({}, 2)):
        rows = [{"id": "b", "class": "golden retriever"}]
        qa = verdicts(rows, answers, OURS, judged=True, judgements=recorded)["b"]
        assert rows[0]["pending"] == pending
        if recorded:
            assert [v for _, _, v, _ in qa] == ["yes", "no", "no", "yes"]
            assert rows[0]["recount"] == sum(res[1].consistent)
        else:
            assert [v for _, _, v, _ in qa][:2] == ["judge", "judge"]
