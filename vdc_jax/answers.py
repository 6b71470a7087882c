"""VAE — visual answer evaluation for VDC (Zhu et al., ICLR 2024, §3.3).

Each answer of the MLLM is judged *consistent* with the sample's label or not:

* yes/no (label-specific) answers: :func:`parse_yes_no` reads the leading verdict, aware of
  negation; consistent iff it is "yes" (every expected answer is "yes").
* description (general) answers: :func:`keyword_match` looks for one of the class's names
  (class name, plus the WordNet synset lemmas of its WNID for ImageNet classes) as a whole
  lemmatised phrase; the undecided ones go, batched, to a judge (:func:`llm_judge` or
  :func:`embedding_judge`).

These are *our* rules (``config.protocol = "ours"``, the default); the official VDC code's
rules are `vdc_jax.official`, and `vdc_jax.protocol` bundles either set into one `Rules`
object that :func:`score_samples` takes (``rules=``).

The score of a sample is the fraction of its questions answered consistently (every question
weighted equally); a sample is dirty iff ``score < threshold`` (default 0.5). The per-dataset
aggregation over the stored answers is :mod:`vdc_jax.scoring`; the thresholding and the
detection metrics (TPR, FPR, F1, AUROC) are :mod:`vdc_jax.detection`.

    res = score_samples(samples, judge=llm_judge(ask))        # samples: list[Sample]
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Sequence

import numpy as np

YES, NO, UNKNOWN = "yes", "no", "unknown"

# Leading words/phrases, matched against the first words of the normalised answer. Longest
# phrases first: "no doubt" is a yes, "absolutely not" a no, "yes and no" neither.
_HEDGE = (
    "yes and no",
    "yes or no",
    "i don't know",
    "i do not know",
    "i'm not sure",
    "i am not sure",
    "not sure",
    "it is unclear",
    "it's unclear",
    "unclear",
    "hard to say",
    "hard to tell",
    "it is hard to",
    "it's hard to",
    "it is difficult to",
    "it's difficult to",
    "difficult to",
    "it is impossible to",
    "it's impossible to",
    "i cannot tell",
    "i can't tell",
    "i cannot say",
    "i can't say",
    "i cannot determine",
    "i can't determine",
    "i am unable to",
    "i'm unable to",
    "maybe",
    "perhaps",
    "possibly",
    "probably",
    "unknown",
    "uncertain",
)
_NO_PHRASES = ("i don't think so", "i do not think so", "i don't believe so", "not really")
_NO_PHRASES += ("of course not", "certainly not", "absolutely not", "definitely not")
_NO_PHRASES += ("surely not", "not at all", "i doubt it")
_YES_PHRASES = ("no doubt", "of course", "i think so", "i believe so", "that's right")
_YES_WORDS = {"yes", "yeah", "yep", "yup", "yea", "correct", "certainly", "absolutely", "sure"}
_YES_WORDS |= {"definitely", "indeed", "affirmative", "true", "exactly", "surely"}
_NO_WORDS = {"no", "nope", "nah", "not", "never", "incorrect", "false", "negative", "none"}
_NO_WORDS |= {"nothing", "neither", "nobody", "nowhere", "wrong"}
# Negation anywhere in the first sentence of an answer without a leading verdict.
_NEGATION = _NO_WORDS - {"incorrect", "false", "negative", "wrong"} | {"nor", "cannot"}
# "The answer is yes", "Answer: no", "ASSISTANT: yes": a prefix to drop before reading the verdict.
_PREFIX = re.compile(
    r"^(?:(?:assistant|answer|a|response)\s*:\s*"
    r"|(?:the|my)\s+answer(?:\s+to\s+(?:your|the|this)\s+question)?\s+is\s*:?\s*"
    r"|(?:i\s+would|i'd|i\s+can|i)\s+(?:say|confirm|answer)(?:\s+that)?\s*:?\s*)+",
    re.I,
)


# ---- names and a small rule-based lemmatiser (no NLTK at runtime) ----

# Function words dropped from descriptions AND names before matching (so "man of war" still
# matches "a man of war"); content words are never dropped.
STOPWORDS = frozenset(
    "a an the of and or in on at to with for from by as is are was were be been being this "
    "that these those it its there here which who what some any very".split()
)
# Plural nouns that the suffix rules cannot undo (WordNet's noun.exc, the common part).
_IRREGULAR = {
    "mice": "mouse",
    "lice": "louse",
    "geese": "goose",
    "feet": "foot",
    "teeth": "tooth",
    "children": "child",
    "people": "person",
    "oxen": "ox",
    "dice": "die",
    "cacti": "cactus",
    "fungi": "fungus",
    "larvae": "larva",
    "antennae": "antenna",
    "vertebrae": "vertebra",
}
# WordNet morphy's noun suffix rules (plus -ves): each gives a candidate base form.
_SUFFIXES = (
    ("ses", "s"),
    ("xes", "x"),
    ("zes", "z"),
    ("ches", "ch"),
    ("shes", "sh"),
    ("men", "man"),
    ("ies", "y"),
    ("ves", "f"),
    ("ves", "fe"),
    ("s", ""),
)
_WNID_SUFFIX = re.compile(r"^(.*?)\s*\((n\d{8})\)\s*$")


def tokens(text: str) -> list[str]:
    """Lower-case words of ``text`` (split on anything but letters/digits), stopwords and
    one-letter tokens (the "s" of "dog's") dropped. "man-eater" -> ["man", "eater"]."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    return [w for w in words if len(w) > 1 and w not in STOPWORDS]


def lemma_candidates(word: str) -> frozenset[str]:
    """``word`` and every base form the rules allow: "retrievers" -> {retrievers, retriever}.

    Like WordNet's morphy, but without its dictionary check: instead of keeping only candidates
    that are WordNet lemmas, two words match when their candidate sets intersect. Over-generated
    candidates ("boxes" -> "boxe") are harmless because they are only ever compared with a
    label's names. Candidates shorter than 3 letters and "-ss" -> "-s" are not generated.
    """
    out = {word}
    if word in _IRREGULAR:
        out.add(_IRREGULAR[word])
    for suffix, repl in _SUFFIXES:
        if word.endswith(suffix) and not (suffix == "s" and word.endswith("ss")):
            base = word[: -len(suffix)] + repl
            if len(base) >= 3:
                out.add(base)
    return frozenset(out)


def label_names(label: str, wnid: str | None = None) -> tuple[str, ...]:
    """The names a description may use for a class: the class name (split on commas) and, for an
    ImageNet-1k class, its synset's WordNet lemmas.

    The WNID comes from ``wnid``, from a ``"crane (n02012849)"`` suffix (how
    ``vl_jax.data.wordnet_ids.class_names`` disambiguates), or from the class name when it is
    the first lemma of exactly one ImageNet-1k synset ("golden retriever" -> n02099601).
    """
    from vl_jax.data.wnid_names import WNID_LEMMAS  # lazy: a 1000-entry table

    m = _WNID_SUFFIX.match(label)
    if m:
        label, wnid = m.group(1), wnid or m.group(2)
    names = [n.strip() for n in label.split(",") if n.strip()]
    if wnid is None:
        hits = [w for w, lem in WNID_LEMMAS.items() if _canon(lem[0]) == _canon(label)]
        wnid = hits[0] if len(hits) == 1 else None
    names += [lem.replace("_", " ") for lem in WNID_LEMMAS.get(wnid, ())]
    seen, out = set(), []
    for n in names:
        if _canon(n) not in seen:
            seen.add(_canon(n))
            out.append(n)
    return tuple(out)


def _canon(name: str) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", name.lower()))


@dataclasses.dataclass(frozen=True)
class Verdict:
    """A parsed yes/no answer: ``value`` in {"yes", "no", "unknown"} and why."""

    value: str
    reason: str


def _normalise(text: str) -> str:
    t = text.strip().lower().replace("’", "'").replace("‘", "'").replace("`", "'")
    t = re.sub(r"^[\s\"'*_#>\-•(\[]+", "", t)  # markdown / quotes / bullets before the verdict
    t = _PREFIX.sub("", t)
    return re.sub(r"\s+", " ", re.sub(r"[\"*_]+", "", t)).strip()


def _words(text: str) -> list[str]:
    """Whole words; "n't" and "cannot" expanded so negation is a word of its own."""
    text = re.sub(r"\bcan't\b|\bcannot\b", "can not", text)
    text = re.sub(r"\bwon't\b", "will not", text)
    text = re.sub(r"n't\b", " not", text)
    return re.findall(r"[a-z0-9]+(?:'[a-z]+)?", text)


def _starts_with(text: str, phrase: str) -> bool:
    """Whole-word prefix test ("no" starts "no, ..." but not "nose" or "now")."""
    return text.startswith(phrase) and not text[len(phrase) : len(phrase) + 1].isalnum()


def parse_yes_no(answer: str, question: str | None = None) -> Verdict:
    """The verdict of a yes/no answer, read from its start — never a substring test.

    A substring test (the official code's ``"yes" in answer``) counts "The dog's eyes are brown"
    as yes and, the other way round, "no" occurs in "snout", "nose" and "know". Rules, in order:

    1. empty / no words -> unknown;
    2. a hedge at the start ("yes and no", "maybe", "I'm not sure", "hard to say") -> unknown;
    3. a leading phrase or word: "I don't think so", "not really", "absolutely not" -> no;
       "of course", "I think so", "no doubt" -> yes; "yes"/"yeah"/"correct"/... -> yes, unless
       directly followed by "not" ("certainly not") -> no; "no"/"nope"/"not"/"none"/... -> no.
       The leading verdict wins over the rest ("Yes, but the ears are not visible" -> yes);
    4. no leading verdict: a negation in the first clause ("There is no dog", "It is not a
       dog", "The image doesn't show a dog") -> no; "It is a dog, not a cat" is not a no;
    5. a verdict that opens a later clause or sentence ("Looking at the image, yes, ...", "The
       image shows a beach. No, there is no dog.") -> that verdict; a hedge there -> unknown;
    6. with the ``question``: a declarative answer that states the question's content words
       (:func:`question_terms`: "Is there a dog in the image?" -> dog) in one sentence -> yes
       ("There is a dog in the image.", "The animal is a golden retriever."), or no when a
       negation precedes one of them in its clause ("The animal is a cat, not a dog.");
       a hedge word in that sentence ("There might be a dog") -> unknown;
    7. otherwise -> unknown ("The image shows a cat" does not say whether a dog is there).
    """
    t = _normalise(answer)
    words = _words(t)
    if not words:
        return Verdict(UNKNOWN, "empty answer" if not t else "no words")
    for h in _HEDGE:
        if _starts_with(t, h):
            return Verdict(UNKNOWN, f"hedged: {h!r}")
    for p in _NO_PHRASES:
        if _starts_with(t, p):
            return Verdict(NO, f"leading {p!r}")
    for p in _YES_PHRASES:
        if _starts_with(t, p):
            return Verdict(YES, f"leading {p!r}")
    first = words[0]
    if first in _YES_WORDS:
        if len(words) > 1 and words[1] == "not":
            return Verdict(NO, f"leading '{first} not'")
        return Verdict(YES, f"leading {first!r}")
    if first in _NO_WORDS:
        return Verdict(NO, f"leading {first!r}")
    # First clause only: "It is a dog, not a cat" must not read as a "no".
    sentence = _words(re.split(r"[.,!?;:\n]| but ", t, maxsplit=1)[0])
    neg = [w for w in sentence if w in _NEGATION]
    if neg:
        return Verdict(NO, f"negated statement ({neg[0]!r})")
    later = _later_verdict(t)
    if later is not None:
        return later
    if question:
        stated = _declarative(t, question_terms(question))
        if stated is not None:
            return stated
    return Verdict(UNKNOWN, "no leading yes/no and no negation")


# A verdict that opens a later clause: the strong words only ("It is a dog, not a cat" must not
# read as "no"), and "no" only alone or before a new clause's subject ("No, there is no dog").
_LATE_YES = {"yes", "yeah", "yep", "yup"}
_LATE_NO = {"no", "nope"}
_SUBJECTS = {"there", "it", "this", "that", "the", "i", "we", "they", "he", "she", "its"}
_CLAUSES = re.compile(r"[.,!?;:\n]+|\s+-\s+|\bbut\b")
# Words of a question that do not name what it asks about ("Is there a dog in the image?").
_QUESTION_WORDS = frozenset(
    "is are was were do does did can could has have had will would should shall may might must "
    "there image picture photo photograph object main kind type sort visible shown show shows "
    "contain contains depicted depict see seen appear appears present animal thing item "
    "subject you your".split()
)
_PRONOUNS = {"it", "its", "it's", "they", "their", "he", "his", "she", "her"}
_HEDGE_WORDS = {"maybe", "perhaps", "possibly", "probably", "might", "unclear", "uncertain"}
_HEDGE_WORDS |= {"whether", "unsure"}


def question_terms(question: str) -> list[frozenset[str]]:
    """The content words a yes/no question asks about, as lemma-candidate sets: tokens minus
    question and image words. "Does the dog have long drooping ears?" -> dog, long, drooping,
    ears; "Is there a dog in the image?" -> dog."""
    return [lemma_candidates(w) for w in tokens(question) if w not in _QUESTION_WORDS]


def _later_verdict(t: str) -> Verdict | None:
    """Rule 5: the first clause after the first that opens with a verdict (or a hedge)."""
    for clause in _CLAUSES.split(t)[1:]:
        c = _PREFIX.sub("", clause.strip())
        words = _words(c)
        if not words:
            continue
        for h in _HEDGE:
            if _starts_with(c, h):
                return Verdict(UNKNOWN, f"hedged: {h!r} after a leading clause")
        for phrases, value in ((_NO_PHRASES, NO), (_YES_PHRASES, YES)):
            for p in phrases:
                if _starts_with(c, p):
                    return Verdict(value, f"{p!r} after a leading clause")
        first = words[0]
        if first in _LATE_YES and not (len(words) > 1 and words[1] == "not"):
            return Verdict(YES, f"{first!r} after a leading clause")
        if first in _LATE_NO and (len(words) == 1 or words[1] in _SUBJECTS):
            return Verdict(NO, f"{first!r} after a leading clause")
    return None


def _declarative(t: str, terms: list[frozenset[str]]) -> Verdict | None:
    """Rule 6: the first sentence that holds every term of the question decides. A sentence
    that opens with a pronoun stands for the question's first term, its subject ("Its ears
    are floppy." for "Does the dog have floppy ears?"), when other terms remain to match."""
    if not terms:
        return None
    for sentence in re.split(r"[.!?\n]+", t):
        clauses = [_words(c) for c in _CLAUSES.split(sentence)]
        first = clauses[0][0] if clauses and clauses[0] else ""
        need = terms[1:] if len(terms) > 1 and first in _PRONOUNS else terms
        where = []  # (clause, word position) of each term's first occurrence
        for term in need:
            hit = next(((k, i) for k, ws in enumerate(clauses) for i, w in enumerate(ws)
                        if lemma_candidates(w) & term), None)  # fmt: skip
            if hit is None:
                break
            where.append(hit)
        else:
            words = [w for ws in clauses for w in ws]
            hedge = next((w for w in words if w in _HEDGE_WORDS), None)
            if hedge:
                return Verdict(UNKNOWN, f"hedged statement ({hedge!r})")
            for k, i in where:
                neg = next((w for w in clauses[k][:i] if w in _NEGATION), None)
                if neg:
                    return Verdict(NO, f"statement negates the question's terms ({neg!r})")
            return Verdict(YES, "statement of the question's terms")
    return None


def keyword_match(description: str, names: Sequence[str], any_token: bool = False) -> str | None:
    """The first of ``names`` that the description mentions, else None.

    Both sides are tokenised (lower case, split on non-letters, stopwords dropped) and compared
    through :func:`lemma_candidates`, so "retrievers" matches "retriever". A name of several
    words ("golden retriever") must occur as a contiguous phrase. ``any_token=True`` applies the
    official rule instead (`vdc_jax.official.any_token_match`: any single token of any name,
    e.g. "golden" alone) and returns the matching token.
    """
    if any_token:
        from vdc_jax.official import any_token_match, name_tokens  # it builds on this module

        return any_token_match(description, name_tokens(names))
    desc = [lemma_candidates(w) for w in tokens(description)]
    for name in names:
        parts = [lemma_candidates(w) for w in tokens(name)]
        if not parts:
            continue
        k = len(parts)
        for i in range(len(desc) - k + 1):
            if all(parts[j] & desc[i + j] for j in range(k)):
                return name
    return None


# ---- judges: (descriptions, class names) -> list[Verdict], one call for the whole batch ----

Judge = Callable[[Sequence[str], Sequence[str]], list[Verdict]]

JUDGE_PROMPT = (
    'Here is a description of an image:\n"{description}"\n\n'
    'Does this description say that the main object of the image is a "{label}" (or a kind '
    "of {label})? Answer with yes or no."
)


def judge_prompt(description: str, label: str) -> str:
    """Our judge prompt (``JUDGE_PROMPT``) for one description and class name."""
    return JUDGE_PROMPT.format(description=description.strip(), label=label)


def llm_judge(
    ask: Callable[[list[str]], list[str]],
    batch_size: int = 64,
    *,
    prompt: Callable[[str, str], str] = judge_prompt,
    parse: Callable[[str], Verdict] = parse_yes_no,
) -> Judge:
    """A judge that asks a text LLM ``ask(prompts) -> replies`` in chunks of ``batch_size``.

    ``prompt(description, label)`` writes each prompt and ``parse(reply)`` reads each verdict:
    ours by default; `vdc_jax.protocol.OFFICIAL` passes the official code's."""

    def judge(descriptions: Sequence[str], labels: Sequence[str]) -> list[Verdict]:
        prompts = [prompt(d, c) for d, c in zip(descriptions, labels)]
        out = []
        for i in range(0, len(prompts), batch_size):
            chunk = prompts[i : i + batch_size]
            replies = ask(chunk)
            if len(replies) != len(chunk):
                raise ValueError(f"judge returned {len(replies)} replies for {len(chunk)} prompts")
            out += [Verdict(v.value, f"judge: {v.reason}") for v in map(parse, replies)]
        return out

    return judge


def embedding_judge(
    embed: Callable[[list[str]], np.ndarray],
    threshold: float = 0.25,
    template: str = "a photo of a {}.",
) -> Judge:
    """A judge without an LLM: yes iff cos(embed(description), embed(template(label))) >= threshold.

    ``embed(texts) -> [n, E]`` is any text encoder (e.g. CLIP's). The threshold depends on the
    encoder; 0.25 is a starting point for CLIP ViT-B, not a tuned value.
    """

    def judge(descriptions: Sequence[str], labels: Sequence[str]) -> list[Verdict]:
        if not descriptions:
            return []
        n = len(descriptions)
        e = np.asarray(embed([*descriptions, *(template.format(c) for c in labels)]), np.float64)
        e /= np.maximum(np.linalg.norm(e, axis=-1, keepdims=True), 1e-12)
        cos = np.sum(e[:n] * e[n:], axis=-1)
        return [Verdict(YES if c >= threshold else NO, f"embedding cos {c:.3f}") for c in cos]

    return judge


# ---- scoring ----


@dataclasses.dataclass
class Sample:
    """One sample's MLLM answers. ``names``: the label's names (see ``label_names``);
    ``questions``: the yes/no questions, parallel to ``yes_no`` (optional: our rules read a
    declarative answer against its question's content words)."""

    id: str
    label: str
    descriptions: list[str]  # answers to the general questions
    yes_no: list[str]  # answers to the label-specific questions (expected "yes")
    names: tuple[str, ...] = ()
    questions: Sequence[str] = ()


@dataclasses.dataclass
class Result:
    """Per-answer decisions (``how``: why) and the score of one sample. ``dropped``: empty
    answers left out of the score (the official protocol's rule; ours counts them)."""

    id: str
    consistent: list[bool]
    how: list[str]
    dropped: int = 0
    # (description, consistent, the judge's reason) for each description the judge decided
    judged: list[tuple[str, bool, str]] = dataclasses.field(default_factory=list)

    @property
    def score(self) -> float:
        return sum(self.consistent) / len(self.consistent) if self.consistent else math.nan


def score_samples(
    samples: Sequence[Sample], judge: Judge | None = None, any_token: bool = False, rules=None
) -> list[Result]:
    """Judge every answer; undecided descriptions go to ``judge`` in ONE batched call.

    ``rules``: the rule set (`vdc_jax.protocol.Rules`; default ours, `protocol.OURS`);
    ``any_token=True`` with our rules swaps in the official any-token description rule only.
    Without a judge an undecided description counts as inconsistent, as does a yes/no answer
    that parses to "unknown" (the MLLM did not confirm the label).
    """
    if rules is None:
        from vdc_jax.protocol import OURS  # the rule sets build on this module

        rules = OURS
    results, pending = [], []  # pending: (result, answer index, description, judge label)
    for s in samples:
        names = s.names or rules.names(s.label)
        r = Result(s.id, [], [])
        for d in s.descriptions:
            if rules.drop_empty and not d.strip():
                r.dropped += 1
                continue
            hit = rules.describe(d, names, any_token)
            r.consistent.append(hit is not None)
            r.how.append(f"keyword {hit!r}" if hit else "no keyword")
            if hit is None and judge is not None:
                pending.append((r, len(r.consistent) - 1, d, rules.judge_label(s.label, names)))
        questions = list(s.questions) or [None] * len(s.yes_no)
        for a, q in zip(s.yes_no, questions, strict=True):
            if rules.drop_empty and not a.strip():
                r.dropped += 1
                continue
            v = rules.yes_no(a, q)
            r.consistent.append(v.value == YES)
            r.how.append(f"{v.value}: {v.reason}")
        results.append(r)
    if pending:
        verdicts = judge([p[2] for p in pending], [p[3] for p in pending])
        for (r, i, d, _), v in zip(pending, verdicts, strict=True):
            r.consistent[i] = v.value == YES
            r.how[i] = f"no keyword; {v.value} ({v.reason})"
            r.judged.append((d, v.value == YES, v.reason))
    return results
