"""WordNet 3.0 nouns shipped with the package: lookup, hypernym/hyponym closure, filters.

The semantic space of SIC / TAC / MCLA is WordNet's 82,115 noun synsets. Their table is generated
once by ``scripts/make_wordnet_nouns.py`` from Debian's WordNet files and shipped as
``mcla_jax/assets/wordnet_nouns.tsv.gz`` (4 MB; license in ``assets/WORDNET_LICENSE``), so
neither NLTK nor a corpus download is needed at runtime. The column meanings (and the rule that
picks one hypernym path under multiple inheritance) are documented in that script.

    wn = load()                      # cached; rows in WNID order
    wn["n02099601"].lemma            # 'golden retriever'
    wn["n02099601"].path             # ('n00001740', ..., 'n02099601'), root first
    wn.ancestors("n02084071")        # all hypernyms over every path (dog: canine AND domestic animal)
    keep = wn.mask(min_depth=6, max_descendants=50, instances=False)   # bool [N]
    nouns = [wn.lemmas[i] for i in np.flatnonzero(keep)]
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import gzip
from collections.abc import Iterable
from importlib import resources

import numpy as np

ASSET = "wordnet_nouns.tsv.gz"
ROOT = "n00001740"  # entity.n.01, the root of every noun hierarchy (depth 0)
NUM_NOUNS = 82115  # noun synsets in WordNet 3.0


@dataclasses.dataclass(frozen=True)
class Noun:
    """One noun synset (one row of the shipped table)."""

    wnid: str  # "n%08d" of the synset's offset in data.noun
    lemma: str  # first (most frequent) lemma, "_" -> " "
    depth: int  # shortest hypernym distance to ROOT
    n_hyponyms: int  # direct hyponyms, instance hyponyms included
    n_descendants: int  # distinct synsets below it (transitive hyponyms)
    tag_count: int  # SemCor sense-tag count (0 for most rare nouns)
    lexname: str  # lexicographer file, e.g. "noun.animal"
    instance: bool  # an instance (a named person, place, ...) rather than a class
    hypernyms: tuple[str, ...]  # direct hypernym WNIDs (class and instance), sorted
    path: tuple[str, ...]  # ROOT -> self inclusive: the lexicographically smallest shortest path
    lemmas: tuple[str, ...]  # all lemmas, WordNet order
    gloss: str


class WordNetNouns:
    """All noun synsets, indexable by WNID, with columnar arrays for vectorised filtering.

    Attributes (all of length N = 82,115, in WNID order, row ``i`` <-> ``wnids[i]``):
      wnids, lemmas: tuples of str (``lemmas[i]`` is the first lemma of row i).
      depth, n_hyponyms, n_descendants, tag_count: int32 arrays [N].
      instance: bool array [N].
    """

    def __init__(self, nouns: Iterable[Noun]):
        self.nouns: tuple[Noun, ...] = tuple(nouns)
        self.wnids = tuple(n.wnid for n in self.nouns)
        self.lemmas = tuple(n.lemma for n in self.nouns)
        self.index = {w: i for i, w in enumerate(self.wnids)}
        col = lambda name, dtype: np.array([getattr(n, name) for n in self.nouns], dtype)
        self.depth = col("depth", np.int32)
        self.n_hyponyms = col("n_hyponyms", np.int32)
        self.n_descendants = col("n_descendants", np.int32)
        self.tag_count = col("tag_count", np.int32)
        self.instance = col("instance", bool)
        children = collections.defaultdict(list)
        for n in self.nouns:
            for h in n.hypernyms:
                children[h].append(n.wnid)
        self._hyponyms = {w: tuple(sorted(c)) for w, c in children.items()}

    def __len__(self) -> int:
        return len(self.nouns)

    def __contains__(self, wnid: str) -> bool:
        return wnid in self.index

    def __getitem__(self, wnid: str) -> Noun:
        """The row of ``wnid``; KeyError names an unknown (or non-noun) WNID."""
        try:
            return self.nouns[self.index[wnid]]
        except KeyError:
            raise KeyError(f"{wnid!r} is not a WordNet 3.0 noun synset id (n%08d)") from None

    def rows(self, wnids: Iterable[str]) -> np.ndarray:
        """Row indices [len(wnids)] int64 of the given WNIDs, in their order."""
        return np.array([self.index[self[w].wnid] for w in wnids], np.int64).reshape(-1)

    def hypernyms(self, wnid: str) -> tuple[str, ...]:
        """Direct hypernyms (one level up; several under multiple inheritance)."""
        return self[wnid].hypernyms

    def hyponyms(self, wnid: str) -> tuple[str, ...]:
        """Direct hyponyms (one level down), sorted."""
        self[wnid]  # validate
        return self._hyponyms.get(wnid, ())

    def ancestors(self, wnid: str) -> frozenset[str]:
        """Every hypernym of ``wnid`` over all its paths to ROOT (``wnid`` itself excluded)."""
        return self._closure(wnid, self.hypernyms)

    def descendants(self, wnid: str) -> frozenset[str]:
        """Every transitive hyponym of ``wnid`` (itself excluded); size = ``n_descendants``."""
        return self._closure(wnid, self.hyponyms)

    def is_a(self, wnid: str, ancestor: str) -> bool:
        """True if ``wnid`` is ``ancestor`` or lies below it on any hypernym path."""
        return wnid == ancestor or ancestor in self.ancestors(wnid)

    def ancestor_at_depth(self, wnid: str, depth: int) -> str:
        """The node at ``depth`` on ``wnid``'s stored path (itself if it is shallower), e.g. to
        group nouns by subtree."""
        path = self[wnid].path
        return path[min(depth, len(path) - 1)]

    def mask(
        self,
        *,
        min_depth: int | None = None,
        max_depth: int | None = None,
        max_hyponyms: int | None = None,
        max_descendants: int | None = None,
        min_tag_count: int | None = None,
        instances: bool = True,
        under: Iterable[str] | None = None,
        lexnames: Iterable[str] | None = None,
    ) -> np.ndarray:
        """Rows that pass every given condition, as bool [N] (None = no condition).

        Args:
          min_depth, max_depth: inclusive bounds on ``depth`` (small depth = general noun).
          max_hyponyms, max_descendants: drop broad nouns with many (transitive) hyponyms.
          min_tag_count: drop nouns rarer than this in SemCor.
          instances: False drops instances (proper nouns: people, cities, ...).
          under: keep only these WNIDs and their descendants (a union of subtrees).
          lexnames: keep only these lexicographer files (e.g. ``["noun.animal"]``).
        """
        keep = np.ones(len(self), bool)
        if min_depth is not None:
            keep &= self.depth >= min_depth
        if max_depth is not None:
            keep &= self.depth <= max_depth
        if max_hyponyms is not None:
            keep &= self.n_hyponyms <= max_hyponyms
        if max_descendants is not None:
            keep &= self.n_descendants <= max_descendants
        if min_tag_count is not None:
            keep &= self.tag_count >= min_tag_count
        if not instances:
            keep &= ~self.instance
        if under is not None:
            keep &= self.subtree_mask(under)
        if lexnames is not None:
            names = set(lexnames)
            keep &= np.array([n.lexname in names for n in self.nouns])
        return keep

    def subtree_mask(self, roots: Iterable[str]) -> np.ndarray:
        """bool [N]: True for each root and every descendant of any root."""
        out = np.zeros(len(self), bool)
        for r in roots:
            out[self.rows([r, *self.descendants(r)])] = True
        return out

    @staticmethod
    def _closure(start: str, step) -> frozenset[str]:
        seen: set[str] = set()
        todo = list(step(start))
        while todo:
            w = todo.pop()
            if w not in seen:
                seen.add(w)
                todo.extend(step(w))
        return frozenset(seen)


def _split(cell: str) -> tuple[str, ...]:
    return tuple(cell.split(";")) if cell else ()


def parse_table(text: str) -> WordNetNouns:
    """The table from the TSV text written by ``scripts/make_wordnet_nouns.py``."""
    lines = text.splitlines()
    header = lines[0].split("\t")
    expected = [f.name for f in dataclasses.fields(Noun)]
    if sorted(header) != sorted(expected):
        raise ValueError(f"{ASSET}: columns {header}, expected {expected}")
    ints = {"depth", "n_hyponyms", "n_descendants", "tag_count"}
    lists = {"hypernyms", "path", "lemmas"}
    nouns = []
    for line in lines[1:]:
        row = dict(zip(header, line.split("\t")))
        for k in ints:
            row[k] = int(row[k])
        for k in lists:
            row[k] = _split(row[k])
        row["instance"] = row["instance"] == "1"
        nouns.append(Noun(**row))
    return WordNetNouns(nouns)


@functools.lru_cache(maxsize=1)
def load() -> WordNetNouns:
    """The shipped WordNet 3.0 noun table (parsed once per process, ~1 s)."""
    # Via the package, not "mcla_jax.assets": the assets folder is data, not a package.
    with resources.files("mcla_jax").joinpath("assets", ASSET).open("rb") as f:
        return parse_table(gzip.decompress(f.read()).decode("utf-8"))


POOLS = ("synsets", "lemmas")


@dataclasses.dataclass(frozen=True)
class NounPool:
    """The texts a semantic space is chosen from, each tied to its synset.

    Attributes:
      kind: ``"synsets"`` | ``"lemmas"`` (see ``noun_pool``).
      texts: ``[P]`` the noun texts to embed.
      rows: int64 ``[P]`` the table row (synset) of each text.
    """

    kind: str
    texts: tuple[str, ...]
    rows: np.ndarray

    def __len__(self) -> int:
        return len(self.texts)


def noun_pool(kind: str = "synsets", table: WordNetNouns | None = None) -> NounPool:
    """The noun texts of a semantic space.

    ``"synsets"``: the first lemma of every synset (82,115 texts, "_" written as " "; SIC's and
    MCLA's pool, row ``i`` = synset ``i``). ``"lemmas"``: every lemma of every synset, synsets in
    WNID order and lemmas in WordNet's order (146,347 texts), spelt as WordNet spells them, with
    "_" -- TAC's noun list (``WordNetNouns.csv`` of its official code: ``entity,
    physical_entity, abstraction, abstract_entity, ...``), which TAC embeds as written.
    """
    wn = load() if table is None else table
    if kind == "synsets":
        return NounPool(kind, wn.lemmas, np.arange(len(wn), dtype=np.int64))
    if kind != "lemmas":
        raise ValueError(f"unknown noun pool {kind!r}; known: {POOLS}")
    texts, rows = [], []
    for i, n in enumerate(wn.nouns):
        texts.extend(lemma.replace(" ", "_") for lemma in n.lemmas)
        rows.extend([i] * len(n.lemmas))
    return NounPool(kind, tuple(texts), np.asarray(rows, np.int64))
