"""VQG: prompt, parsing of messy LLM replies, retries and padding, cache and override files."""

import json
import logging
import os

import pytest

from vdc_jax.questions import (
    GENERAL_QUESTIONS,
    TEMPLATES,
    QuestionsFileError,
    generate_questions,
    load_or_generate,
    load_questions,
    parse_questions,
    save_questions,
    template_questions,
    vqg_prompt,
)

MESSY = """Sure! Here are 6 questions to verify the label:

1. Is there a beagle in the image?
2) Does the dog have long, drooping ears?
Q3: Is the animal a kind of hound?
  - **Does the dog have a white-tipped tail?**
* Is the coat tricolour (black, white and tan)
• is there a BEAGLE in the image
(7) Is the dog small to medium sized? Does it have a short coat?
Question 8 - What colour is the dog?
Is there a cat in the image?

I hope these help!"""


def test_prompt_follows_the_paper():
    p = vqg_prompt("beagle", 6)
    assert '"beagle"' in p and "6 questions" in p and "yes" in p
    assert "one question per line" in p and "Example" in p


def test_parse_messy_reply():
    qs, rejected = parse_questions(MESSY, banned=["Is there a cat in the image?"])
    assert qs == [
        "Is there a beagle in the image?",
        "Does the dog have long, drooping ears?",
        "Is the animal a kind of hound?",
        "Does the dog have a white-tipped tail?",
        "Is the coat tricolour (black, white and tan)?",  # "?" added after an auxiliary verb
        "Is the dog small to medium sized?",  # two questions on one line
        "Does it have a short coat?",
    ]
    reasons = "\n".join(rejected)
    assert "Sure! Here are 6 questions to verify the label:: not a question" in reasons
    assert "Is there a BEAGLE in the image?: duplicate" in reasons  # capitalised, "?" added
    assert "What colour is the dog?: not a yes/no question" in reasons
    assert "Is there a cat in the image?: the prompt's example" in reasons
    assert "I hope these help!: not a question" in reasons


class FakeLLM:
    """Replies from a script per class (last one repeated), recording every batch."""

    def __init__(self, script):
        self.script, self.calls, self.asked = script, [], {}

    def __call__(self, prompts):
        self.calls.append(list(prompts))
        out = []
        for p in prompts:
            label = p.rsplit('Label: "', 1)[1].split('"')[0]
            i = self.asked[label] = self.asked.get(label, -1) + 1
            replies = self.script[label]
            out.append(replies[min(i, len(replies) - 1)])
        return out


def _numbered(*qs):
    return "\n".join(f"{i}. {q}" for i, q in enumerate(qs, 1))


def test_too_few_questions_retry_then_pad_and_report(caplog):
    llm = FakeLLM(
        {
            "beagle": [_numbered("Is it a beagle?", "Is it a hound?", "Is it a dog?")],
            "tabby cat": [
                _numbered("Is it a cat?", "Is it striped?"),
                _numbered("Is it a cat?", "Does it have whiskers?"),  # one duplicate, one new
            ],
        }
    )
    with caplog.at_level(logging.INFO, logger="vdc_jax.questions"):
        qs = generate_questions(["beagle", "tabby cat"], ask=llm, n=3, max_attempts=2)
    assert [len(c) for c in llm.calls] == [2, 1]  # batched; only the short class asked again
    assert qs.specific["beagle"] == ["Is it a beagle?", "Is it a hound?", "Is it a dog?"]
    assert qs.specific["tabby cat"] == ["Is it a cat?", "Is it striped?", "Does it have whiskers?"]
    assert qs.report["tabby cat"]["attempts"] == 2 and qs.report["tabby cat"]["padded"] == 0
    assert any("duplicate" in r for r in qs.report["tabby cat"]["rejected"])

    llm = FakeLLM({"beagle": ["Here you go:\n1. Is it a beagle?", "no idea"]})
    with caplog.at_level(logging.WARNING, logger="vdc_jax.questions"):
        qs = generate_questions(["beagle"], ask=llm, n=4, max_attempts=3)
    assert len(llm.calls) == 3  # bounded retries
    assert qs.specific["beagle"] == [
        "Is it a beagle?",
        "Is there a beagle in the image?",
        "Is the main object in the image a beagle?",
        "Does the image show a beagle?",
    ]
    assert qs.report["beagle"] == {
        "source": "llm",
        "attempts": 3,
        "padded": 3,
        "rejected": ["Here you go:: not a question"] + ["no idea: not a question"] * 2,
    }
    assert "class 'beagle': 1/4 questions from the LLM after 3 attempt(s); padded 3" in caplog.text


def test_extra_questions_are_cut_and_templates_without_llm():
    llm = FakeLLM({"dog": [_numbered(*(f"Is it dog {i}?" for i in range(9)))]})
    assert len(generate_questions(["dog"], ask=llm, n=6).specific["dog"]) == 6
    qs = generate_questions(["dog", "cat"], n=6)
    assert qs.specific["cat"] == template_questions("cat", 6)
    assert all("cat" in q for q in qs.specific["cat"])
    assert qs.report["cat"] == {"source": "template", "attempts": 0, "padded": 6, "rejected": []}
    assert len(template_questions("x", 10)) == 10 and len(TEMPLATES) >= 6
    assert qs.for_class("cat")[:2] == list(GENERAL_QUESTIONS)
    with pytest.raises(ValueError, match="n must be"):
        generate_questions(["dog"], n=0)


def test_cache_round_trip_and_reuse(tmp_path):
    path = tmp_path / "run" / "questions.json"
    llm = FakeLLM({c: [_numbered(f"Is it a {c}?", f"Is the {c} big?")] for c in ("a", "b", "c")})
    qs = load_or_generate(path, ["a", "b"], ask=llm, n=2)
    assert len(llm.calls) == 1 and path.exists()
    assert not [f for f in os.listdir(path.parent) if f.endswith(".tmp")]  # atomic write cleaned up
    again = load_or_generate(path, ["a", "b"], ask=llm, n=2)
    assert len(llm.calls) == 1 and again.specific == qs.specific  # cache hit: no LLM call
    more = load_or_generate(path, ["a", "b", "c"], ask=llm, n=2)
    assert llm.calls[-1] == [vqg_prompt("c", 2)]  # only the missing class is generated
    assert more.specific["c"] == ["Is it a c?", "Is the c big?"]
    assert set(json.loads(path.read_text())["classes"]) == {"a", "b", "c"}
    # a cache filled from templates is regenerated once an LLM is configured
    path2 = tmp_path / "q2.json"
    load_or_generate(path2, ["a"], ask=None, n=2)
    assert load_or_generate(path2, ["a"], ask=llm, n=2).report["a"]["source"] == "llm"
    loaded = load_questions(path)
    assert loaded.report["a"]["source"] == "llm" and loaded.general == GENERAL_QUESTIONS


def test_override_file_wins(tmp_path):
    override = tmp_path / "mine.json"
    override.write_text(json.dumps({"a": ["Is it an apple?"], "b": ["Is it a bee?", "Buzz?"]}))
    llm = FakeLLM({})
    qs = load_or_generate(tmp_path / "cache.json", ["a", "b"], ask=llm, override=override)
    assert llm.calls == [] and not (tmp_path / "cache.json").exists()
    assert qs.specific == {"a": ["Is it an apple?"], "b": ["Is it a bee?", "Buzz?"]}
    assert qs.report["a"]["source"] == "file"
    with pytest.raises(QuestionsFileError, match=r"no questions for class\(es\) \['c'\]"):
        load_or_generate(tmp_path / "cache.json", ["a", "c"], override=override)


@pytest.mark.parametrize(
    "content, match",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"a": []}', "class 'a': expected a non-empty list"),
        ('{"a": ["Is it?", 3]}', "class 'a', question 2: expected a non-empty string"),
        (
            '{\n "a": [\n  "Is it?",\n  "Describe it."\n ]\n}',
            r"class 'a', question 2, line 4: not a question",
        ),
        ('{"b": ["Is it?", "is it"]}', "class 'b', question 2.*not a question"),
        ('{"b": ["Is it?", "IS IT ?"]}', "class 'b', question 2, line 1: duplicate"),
        ('{"version": 1, "classes": 3}', "'classes' must map"),
    ],
)
def test_validation_errors_name_class_and_line(tmp_path, content, match):
    p = tmp_path / "q.json"
    p.write_text(content)
    with pytest.raises(QuestionsFileError, match=match):
        load_questions(p)


def test_save_is_atomic_on_failure(tmp_path):
    path = tmp_path / "q.json"
    qs = generate_questions(["a"], n=2)
    save_questions(path, qs)
    before = path.read_text()
    qs.specific["a"] = [object()]  # not JSON-serialisable: the old file must survive intact
    with pytest.raises(TypeError):
        save_questions(path, qs)
    assert path.read_text() == before
    assert os.listdir(tmp_path) == ["q.json"]


def test_the_run_general_questions_are_kept_and_never_label_specific():
    general = (
        "Describe the image in detail.",
        "Provide a detailed description of the given image.",
    )
    reply = "1. Provide a detailed description of the given image?\n2. Is there a cat?"
    qs = generate_questions(["cat"], ask=lambda ps: [reply] * len(ps), n=1, general=general)
    assert qs.general == general and qs.specific["cat"] == ["Is there a cat?"]
    assert "general question" in qs.report["cat"]["rejected"][0]
