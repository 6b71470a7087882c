"""The official VDC code's evaluation rules, reproduced for `config.protocol = "official"`.

These are the rules the paper's numbers were measured with (VDC, Zhu et al., ICLR 2024; the
original research scripts). They are kept apart from our rules (`vdc_jax.answers`) so that each
rule set reads as a whole; `vdc_jax.protocol` picks one of the two once per run.

    substring_yes("The dog's eyes are brown.")             # True: "yes" occurs in "eyes"
    any_token_match("a golden sunset", name_tokens(["golden retriever"]))   # "golden"
    judge_prompt("A dog on a beach.", "golden retriever")   # the official "Caption"/"Labels" form

* **Yes/no answers**: consistent iff "yes" occurs anywhere in the lower-cased answer (a substring
  test: it fires on "eyes" and misses "yeah", "definitely", "correct").
* **Descriptions**: consistent iff any single token of the class-name string (split on commas,
  spaces, hyphens and underscores) is one of the description's words, after the description is
  tokenised, lower-cased, stripped of punctuation and English stop words and lemmatised. Any
  shared word counts: "golden" alone matches "golden retriever", "dog" matches every breed whose
  name holds "dog". Otherwise a judge LLM is asked whether the "Caption" and one of the "Labels"
  refer to the same object; "yes" anywhere in its reply counts as consistent.
* **Empty answers** are dropped: they count neither as consistent nor in the total.

**Lemmatiser.** The official code lemmatises each description word with NLTK's WordNet
``morphy`` (the class-name tokens are not lemmatised). We do not ship NLTK or the WordNet
database; a word matches a class token when the token is among the word's candidate base forms
from `vdc_jax.answers.lemma_candidates` (the word itself, morphy's noun suffix rules -s, -ses,
-xes, -zes, -ches, -shes, -men, -ies, plus -ves -> -f / -fe, and an irregular-plural table). It
differs from morphy in three ways: (1) morphy returns None for a word that is not in WordNet,
so such a word never matches, while we keep the word itself (a class token that is not a WordNet
lemma, e.g. a rare breed spelling, can match here but not there); (2) morphy returns one base
form, the first POS (noun, verb, adjective, adverb) that has one, while we accept any candidate
("shades" -> {shades, shade}); (3) morphy also undoes verb and adjective endings ("-ing", "-ed",
"-er", "-est"), which we do not (class names are nouns). Tokens: the official code splits with
NLTK's ``word_tokenize`` (which keeps "golden-retriever" as one token); we split on anything but
letters and digits, so a hyphenated compound in a description matches its parts. The stop-word
list is NLTK's English list (179 words), written out below as data.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from vdc_jax.answers import lemma_candidates

# NLTK's English stop-word list (the `stopwords.words("english")` corpus the official code
# removes from descriptions). Our tokeniser splits on apostrophes, so only the pieces matter.
NLTK_STOPWORDS = frozenset(
    """i me my myself we our ours ourselves you you're you've you'll you'd your yours yourself
    yourselves he him his himself she she's her hers herself it it's its itself they them their
    theirs themselves what which who whom this that that'll these those am is are was were be
    been being have has had having do does did doing a an the and but if or because as until
    while of at by for with about against between into through during before after above below
    to from up down in out on off over under again further then once here there when where why
    how all any both each few more most other some such no nor not only own same so than too very
    s t can will just don don't should should've now d ll m o re ve y ain aren aren't couldn
    couldn't didn didn't doesn doesn't hadn hadn't hasn hasn't haven haven't isn isn't ma mightn
    mightn't mustn mustn't needn needn't shan shan't shouldn shouldn't wasn wasn't weren weren't
    won won't wouldn wouldn't""".split()
)

# The official judge prompt's form: a "Caption" (the description) and "Labels" (the class-name
# string with its synonyms); the reply counts as consistent when "yes" occurs in it.
JUDGE_PROMPT = (
    "Assume you are a helpful and precise assistant for evaluation. Please judge whether the "
    "'Caption' of an image and one of the 'Labels' refer to the same object. Answer with yes "
    "or no.\n- Caption: [{description}]\n- Labels: [{label}]"
)


def substring_yes(text: str) -> bool:
    """The official yes rule: "yes" occurs in the lower-cased text (answers and judge replies)."""
    return "yes" in text.lower()


def description_words(text: str) -> list[frozenset[str]]:
    """The description's words as candidate base-form sets: lower-cased, split on anything but
    letters and digits, NLTK's English stop words removed (see the module docstring)."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    return [lemma_candidates(w) for w in words if w not in NLTK_STOPWORDS]


def name_tokens(names: Sequence[str]) -> tuple[str, ...]:
    """The single tokens of a class-name string: each comma-separated name split on spaces,
    hyphens and underscores, lower-cased, in order, without repeats.

    ["German shepherd", "German police dog", "alsatian"] -> (german, shepherd, police, dog,
    alsatian)."""
    out: dict[str, None] = {}
    for name in names:
        for part in name.split(","):
            for tok in re.split(r"[\s\-_]+", part.strip().lower()):
                if tok:
                    out[tok] = None
    return tuple(out)


def any_token_match(description: str, tokens: Sequence[str]) -> str | None:
    """The first class-name token that is one of the description's (lemmatised) words, or None.
    `tokens`: `name_tokens(names)`."""
    words = description_words(description)
    for tok in tokens:
        if any(tok in w for w in words):
            return tok
    return None


def judge_prompt(description: str, label: str) -> str:
    """The official judge prompt for one description and the class-name string (synonyms
    joined by ", ")."""
    return JUDGE_PROMPT.format(description=description.strip(), label=label)
