"""VQG — visual question generation for VDC (Zhu et al., ICLR 2024, §3.1).

Every sample is asked the same 2 *general* questions (a detailed description, label-independent)
plus N *label-specific* yes/no questions of its class, whose expected answer is always "yes".
The label-specific questions are written once per class by a text LLM, parsed robustly, and
cached in ``questions.json``; without an LLM they come from templates that name the class.

    ask = functools.partial(generate_text, model, tokenizer, chat=True, max_new_tokens=256)
    qs = load_or_generate("runs/dogs/questions.json", class_names, ask=ask, n=6)
    qs.general                  # ("Describe the image in detail.", ...)
    qs.specific["beagle"]       # 6 questions, expected answer "yes"
    qs.report["beagle"]         # {"source": "llm", "attempts": 1, "padded": 0, "rejected": [...]}

The LLM is any callable ``ask(prompts: list[str]) -> list[str]`` (one reply per prompt), so tests
pass a fake and production passes ``generate_text``. Nothing here imports jax.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from collections.abc import Callable, Sequence

from vl_jax.errors import UserError
from vl_jax.fileio import atomic_open

log = logging.getLogger(__name__)

Ask = Callable[[list[str]], list[str]]
FORMAT_VERSION = 1

# Two label-independent prompts that ask for a detailed description (paper: "general questions").
GENERAL_QUESTIONS = (
    "Describe the image in detail.",
    "What is the main object in this image? Describe it in detail.",
)

# Fallback when no LLM is configured, and padding when the LLM gives too few questions. Every
# template names the class, so a clean sample answers "yes" to each (existence / type first, the
# order in which they are used for padding).
TEMPLATES = (
    "Is there a {} in the image?",
    "Is the main object in the image a {}?",
    "Does the image show a {}?",
    "Is the object in the image a kind of {}?",
    "Would you call the main object in this image a {}?",
    "Does this image contain a {}?",
    "Is a {} visible in this picture?",
    "Is this a photo of a {}?",
)

# Paraphrase of the paper's VQG prompt, with one worked example (as in the paper).
PROMPT = """\
The questions you write will be asked to a vision-language model that looks at an image, to \
check whether the image's label is correct. Write the {n} most insightful questions that verify \
that the image shows a "{label}". Every question must be answered with yes or no, and the \
answer must be "yes" if the image really shows a {label}. About half of the questions should \
check existence or type (is there a {label}, is it a kind of ...); the rest should check typical \
attributes, parts, habitat or behaviour of a {label}. Write one question per line, numbered, \
and nothing else.

Example for the label "cat" with 4 questions:
1. Is there a cat in the image?
2. Is the animal in the image a kind of feline?
3. Does the animal have whiskers and pointed ears?
4. Does the animal have retractable claws?

Label: "{label}"
{n} questions:"""
_EXAMPLE = (
    "Is there a cat in the image?",
    "Is the animal in the image a kind of feline?",
    "Does the animal have whiskers and pointed ears?",
    "Does the animal have retractable claws?",
)

# "1." "1)" "(1)" "Q1:" "Question 1 -" "- " "* " "• " "a)" "#" and markdown bold, at a line start.
_PREFIX = re.compile(
    r"^\s*(?:[-*•·–>#]+\s*|\(?(?:q(?:uestion)?\s*)?\d{1,2}\s*[.):\]\-]+\s*|\(?[a-h][.)]\s+)",
    re.IGNORECASE,
)
_WH = re.compile(r"^(?:what|which|how|why|where|who|whom|whose|when)\b", re.IGNORECASE)
# A yes/no question without its "?" (some LLMs drop it) starts with an auxiliary verb.
_AUX = re.compile(
    r"^(?:is|are|was|were|does|do|did|can|could|has|have|had|will|would|should|may|might)\b",
    re.IGNORECASE,
)
MAX_QUESTION_CHARS = 300


class QuestionsFileError(UserError, ValueError):
    """A questions file (cache or user-supplied) that does not validate; names the file, class,
    question and line."""


@dataclasses.dataclass
class Questions:
    """The question set of one run.

    Attributes:
      general: the label-independent description prompts (answers judged by keywords / a judge).
      specific: class name -> yes/no questions whose expected answer is "yes".
      report: class name -> how its questions were made: ``source`` ("llm", "template", "file"),
        ``attempts`` (LLM calls), ``padded`` (template questions added), ``rejected`` (LLM lines
        dropped, each with a reason).
    """

    general: tuple[str, ...]
    specific: dict[str, list[str]]
    report: dict[str, dict] = dataclasses.field(default_factory=dict)

    def for_class(self, name: str) -> list[str]:
        """All questions asked of a sample labelled ``name``: general first, then specific."""
        return [*self.general, *self.specific[name]]


def vqg_prompt(label: str, n: int) -> str:
    """The VQG prompt for one class (see ``PROMPT``)."""
    return PROMPT.format(label=label, n=n)


def template_questions(label: str, n: int) -> list[str]:
    """``n`` template questions naming ``label`` (cycled if ``n`` > len(TEMPLATES))."""
    return [TEMPLATES[i % len(TEMPLATES)].format(label) for i in range(n)]


def _key(q: str) -> str:
    """Duplicate key: case-, punctuation- and whitespace-insensitive."""
    return " ".join(re.sub(r"[^0-9a-z]+", " ", q.lower()).split())


def parse_questions(
    text: str, banned: Sequence[str] = (), existing: Sequence[str] = ()
) -> tuple[list[str], list[str]]:
    """Questions in an LLM reply, in order, without duplicates.

    Accepts numbering ("1." "1)" "(1)" "Q1:" "Question 1:"), bullets, markdown bold, blank lines,
    several questions on one line, and a missing "?" after an auxiliary verb ("Is it ..").
    Drops preambles ("Here are 6 questions:"), wh-questions (their answer is not "yes"),
    duplicates (also of ``existing``: questions kept from an earlier attempt) and anything in
    ``banned`` (the prompt's worked example echoed back, the general questions).

    Returns:
      (questions, rejected) where each rejected entry is ``"<line>: <reason>"``.
    """
    banned_keys = {_key(b) for b in banned}
    seen = banned_keys | {_key(q) for q in existing}
    out, rejected = [], []
    for raw in text.splitlines():
        line = raw.strip()
        while (m := _PREFIX.match(line)) and m.end() > 0:  # "1. - **Q1:**" -> strip repeatedly
            line = line[m.end() :]
        line = line.replace("**", "").replace("__", "").strip().strip("\"'`“”").strip()
        if not line:
            continue
        parts = [p.strip() + "?" for p in line.split("?")[:-1] if p.strip()]
        if not parts:
            if _AUX.match(line) and not line.endswith((":", ".")):
                parts = [line.rstrip(" .") + "?"]
            else:
                rejected.append(f"{raw.strip()}: not a question")
                continue
        for q in parts:
            q = _PREFIX.sub("", q).strip().strip("\"'`“”").strip()
            q = q[0].upper() + q[1:] if q else q
            k = _key(q)
            reason = _reject_reason(q, k, banned_keys, seen)
            if reason:
                rejected.append(f"{q}: {reason}")
                continue
            seen.add(k)
            out.append(q)
    return out, rejected


def _reject_reason(q: str, key: str, banned: set[str], seen: set[str]) -> str | None:
    if not key:
        return "empty"
    if _WH.match(q):
        return "not a yes/no question"  # its answer cannot be the expected "yes"
    if len(q) > MAX_QUESTION_CHARS:
        return f"longer than {MAX_QUESTION_CHARS} characters"
    if key in banned:
        return "the prompt's example or a general question"
    return "duplicate" if key in seen else None


def generate_questions(
    class_names: Sequence[str],
    ask: Ask | None = None,
    n: int = 6,
    max_attempts: int = 3,
    general: Sequence[str] = GENERAL_QUESTIONS,
) -> Questions:
    """Label-specific questions for every class (``general``: the run's general questions,
    kept in the result and never accepted as a label-specific one).

    With ``ask``: one batched call for all classes, then classes with fewer than ``n`` valid
    questions are asked again (up to ``max_attempts`` calls in all, new questions merged in);
    whatever is still missing is padded from ``TEMPLATES`` and logged as a warning. Without
    ``ask``: templates only. Extra questions beyond ``n`` are dropped (the first ``n`` kept).
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    specific: dict[str, list[str]] = {c: [] for c in class_names}
    report = {
        c: {"source": "template", "attempts": 0, "padded": 0, "rejected": []} for c in specific
    }
    todo = list(specific) if ask is not None else []
    for _ in range(max_attempts):
        if not todo:
            break
        replies = ask([vqg_prompt(c, n) for c in todo])
        if len(replies) != len(todo):
            raise ValueError(f"ask returned {len(replies)} replies for {len(todo)} prompts")
        for c, reply in zip(todo, replies):
            banned = [*general, *(_EXAMPLE if c != "cat" else ())]
            qs, rejected = parse_questions(reply, banned=banned, existing=specific[c])
            specific[c] += qs
            report[c]["source"] = "llm"
            report[c]["attempts"] += 1
            report[c]["rejected"] += rejected
        short = [c for c in todo if len(specific[c]) < n]
        if short:
            log.info("VQG: %d class(es) got fewer than %d questions, asking again", len(short), n)
        todo = short
    for c, qs in specific.items():
        del qs[n:]
        if len(qs) < n:
            keys = {_key(q) for q in qs}
            pad = [t for t in template_questions(c, len(TEMPLATES)) if _key(t) not in keys]
            pad = (pad + template_questions(c, n))[: n - len(qs)]
            report[c]["padded"] = len(pad)
            qs += pad
            if ask is not None:
                log.warning(
                    "VQG: class %r: %d/%d questions from the LLM after %d attempt(s); padded %d "
                    "from templates",
                    c,
                    n - len(pad),
                    n,
                    report[c]["attempts"],
                    len(pad),
                )
    return Questions(tuple(general), specific, report)


def save_questions(path: str | os.PathLike, qs: Questions) -> None:
    """Write ``qs`` as JSON, atomically (a temp file in the same folder, then ``os.replace``)."""
    path = os.fspath(path)
    data = {"version": FORMAT_VERSION, "general": list(qs.general)}
    data |= {"classes": qs.specific, "report": qs.report}
    with atomic_open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.write("\n")


def _line_of(text: str, s: str) -> str:
    i = text.find(json.dumps(s, ensure_ascii=False))
    return f", line {text.count(chr(10), 0, i) + 1}" if i >= 0 else ""


def load_questions(
    path: str | os.PathLike,
    class_names: Sequence[str] | None = None,
    source: str = "file",
    general: Sequence[str] | None = None,
) -> Questions:
    """Read and validate a questions file.

    Accepts our format (``{"version", "general", "classes", "report"}``) or a plain mapping
    ``{class name: [question, ...]}`` (a user-written file; the general questions are then
    ``general``, default ``GENERAL_QUESTIONS``). Every question must be a non-empty string ending
    in "?", unique within its class.

    Raises:
      QuestionsFileError: naming the file, the class, the question index and its line.
    """
    path = os.fspath(path)
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise QuestionsFileError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise QuestionsFileError(f"{path}: expected a JSON object, got {type(data).__name__}")
    ours = "classes" in data and "version" in data
    classes = data["classes"] if ours else data
    default = tuple(general) if general is not None else GENERAL_QUESTIONS
    general = tuple(data.get("general", default)) if ours else default
    if not isinstance(classes, dict):
        raise QuestionsFileError(f"{path}: 'classes' must map class names to lists of questions")
    for c, qs in classes.items():
        where = f"{path}: class {c!r}"
        if not isinstance(qs, list) or not qs:
            raise QuestionsFileError(f"{where}: expected a non-empty list of questions")
        seen = set()
        for i, q in enumerate(qs, 1):
            at = f"{where}, question {i}"
            if not isinstance(q, str) or not q.strip():
                raise QuestionsFileError(f"{at}: expected a non-empty string, got {q!r}")
            at += _line_of(text, q)
            if not q.rstrip().endswith("?"):
                raise QuestionsFileError(f"{at}: not a question (must end with '?'): {q!r}")
            if _key(q) in seen:
                raise QuestionsFileError(f"{at}: duplicate question {q!r}")
            seen.add(_key(q))
    if class_names is not None:
        missing = [c for c in class_names if c not in classes]
        if missing:
            raise QuestionsFileError(f"{path}: no questions for class(es) {missing}")
    report = data.get("report", {}) if ours else {}
    report = {c: report.get(c, {"source": source}) for c in classes}
    return Questions(general, {c: list(q) for c, q in classes.items()}, report)


def load_or_generate(
    path: str | os.PathLike,
    class_names: Sequence[str],
    ask: Ask | None = None,
    n: int = 6,
    override: str | os.PathLike | None = None,
    max_attempts: int = 3,
    general: Sequence[str] | None = None,
) -> Questions:
    """The questions of a run, generating and caching only what is missing.

    Order: a user-supplied ``override`` file wins (validated, used as is, never rewritten);
    else the cache at ``path`` is reused for every class that has >= ``n`` questions and was
    not filled purely from templates while an LLM is now configured; the other classes are
    generated and the cache rewritten atomically.

    ``general``: the run's general questions (the protocol's, `vdc_jax.protocol.Rules`); they
    replace the cache's (which is then rewritten). None keeps the cache's, or the defaults. A
    user ``override`` file keeps its own general questions when it lists them.
    """
    if override is not None:
        qs = load_questions(override, class_names, general=general)
        for c in class_names:
            qs.report[c]["source"] = "file"
        return Questions(qs.general, {c: qs.specific[c] for c in class_names}, qs.report)
    cached = load_questions(path) if os.path.exists(path) else Questions(GENERAL_QUESTIONS, {})
    general = cached.general if general is None else tuple(general)
    changed = os.path.exists(path) and general != cached.general
    cached.general = general

    def stale(c: str) -> bool:
        qs, rep = cached.specific.get(c), cached.report.get(c, {})
        return qs is None or len(qs) < n or (ask is not None and rep.get("source") == "template")

    todo = [c for c in class_names if stale(c)]
    if todo:
        new = generate_questions(todo, ask=ask, n=n, max_attempts=max_attempts, general=general)
        cached.specific |= new.specific
        cached.report |= new.report
    if todo or changed:
        save_questions(path, cached)
    specific = {c: cached.specific[c][:n] for c in class_names}
    return Questions(cached.general, specific, {c: cached.report[c] for c in class_names})
