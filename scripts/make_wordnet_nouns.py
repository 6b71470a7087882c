"""Generate ``mcla_jax/assets/wordnet_nouns.tsv.gz`` (+ ``WORDNET_LICENSE``): every WordNet 3.0 noun.

Usage (needs only the Debian ``wordnet-base`` and ``wordnet-sense-index`` packages)::

    apt-get install wordnet-base wordnet-sense-index
    python scripts/make_wordnet_nouns.py [--wordnet_dir /usr/share/wordnet]
    python scripts/make_wordnet_nouns.py --verify_nltk   # optional cross-check, needs `nltk`

The database files are parsed directly, like ``scripts/make_wnid_names.py`` reads ``data.noun``
(``wndb(5WN)``: ``offset lex_filenum ss_type w_cnt (word lex_id)* p_cnt (symbol offset pos
src/tgt)* | gloss``, ``w_cnt`` in hex, WNID = ``n%08d`` of the byte offset), so neither this script
nor the runtime needs NLTK or a corpus download. One row per noun synset (82,115), in WNID order,
tab-separated with a header line; list fields are ``;``-joined (no lemma contains ``;``, checked):

==============  ==============================================================================
wnid            ``n%08d``
lemma           first lemma (WordNet's most frequent name), ``_`` -> space
depth           shortest hypernym distance to ``entity`` (n00001740, depth 0) = NLTK min_depth
n_hyponyms      direct hyponyms, instance hyponyms included (``~`` and ``~i`` pointers)
n_descendants   distinct synsets in the transitive hyponym closure (self excluded)
tag_count       SemCor tag count of the synset (sum over its lemmas, from ``index.sense``)
lexname         lexicographer file (``noun.animal``, ``noun.artifact``, ...)
instance        1 if the synset is an instance (``@i`` pointer: people, places, ...), else 0
hypernyms       direct hypernym WNIDs (``@`` and ``@i``), sorted
path            hypernym path root -> synset inclusive, WNIDs. With several paths (multiple
                inheritance) the rule is: among the *shortest* paths (length depth + 1), the one
                whose WNID sequence, read from the root, is lexicographically smallest
lemmas          all lemmas in WordNet order, ``_`` -> space
gloss           definition and examples, as in ``data.noun``
==============  ==============================================================================
"""

from __future__ import annotations

import argparse
import collections
import gzip
import io
import os
import re
import sys

_ASSETS = os.path.join(os.path.dirname(__file__), os.pardir, "mcla_jax", "assets")
ROOT = "n00001740"  # entity.n.01
COLUMNS = (
    "wnid lemma depth n_hyponyms n_descendants tag_count lexname instance hypernyms path "
    "lemmas gloss"
).split()
# Noun lexicographer files 03..28 (``lexnames(5WN)``; Debian omits the ``lexnames`` file).
NOUN_LEXNAMES = dict(
    enumerate(
        "Tops act animal artifact attribute body cognition communication event feeling food "
        "group location motive object person phenomenon plant possession process quantity "
        "relation shape state substance time".split(),
        start=3,
    )
)

Synset = collections.namedtuple("Synset", "wnid lexname words pointers gloss")


def parse_data_noun(path: str) -> dict[str, Synset]:
    """All noun synsets of ``data.noun`` keyed by WNID, in file (= WNID) order.

    ``pointers`` are ``(symbol, target WNID)`` for noun targets only.
    """
    out = {}
    with open(path, "rb") as f:
        offset = 0
        for raw in f:
            line, offset, start = raw.decode("utf-8"), offset + len(raw), offset
            if line.startswith("  "):  # license header
                continue
            head, _, gloss = line.partition(" | ")
            fields = head.split()
            if int(fields[0]) != start or fields[2] != "n":
                raise ValueError(f"{path}: line at byte {start} is not noun synset {fields[0]}")
            n_words = int(fields[3], 16)
            words = tuple(fields[4 : 4 + 2 * n_words : 2])
            k = 4 + 2 * n_words
            ptrs = fields[k + 1 : k + 1 + 4 * int(fields[k])]
            pointers = tuple(
                (ptrs[i], f"n{ptrs[i + 1]}") for i in range(0, len(ptrs), 4) if ptrs[i + 2] == "n"
            )
            wnid = f"n{start:08d}"
            lexname = f"noun.{NOUN_LEXNAMES[int(fields[1])]}"
            out[wnid] = Synset(wnid, lexname, words, pointers, gloss.strip())
    return out


def read_tag_counts(index_sense: str) -> dict[str, int]:
    """WNID -> summed SemCor tag counts of its noun senses (``sense_key offset sense_no cnt``)."""
    counts: dict[str, int] = collections.Counter()
    with open(index_sense, encoding="utf-8") as f:
        for line in f:
            key, offset, _, cnt = line.split()
            if key.split("%")[1].startswith("1:"):  # ss_type 1 = noun
                counts[f"n{offset}"] += int(cnt)
    return counts


def build_rows(synsets: dict[str, Synset], tag_counts: dict[str, int]) -> list[dict]:
    """One dict per synset with the columns of ``COLUMNS`` (lists still as lists)."""
    hyper = {
        w: sorted({t for s, t in ss.pointers if s in ("@", "@i")}) for w, ss in synsets.items()
    }
    hypo = {w: sorted({t for s, t in ss.pointers if s in ("~", "~i")}) for w, ss in synsets.items()}
    # WordNet stores both directions of each link; check they agree, so hyponym counts and
    # hypernym paths describe the same graph.
    for w, hs in hyper.items():
        for h in hs:
            assert w in hypo[h], f"{h} lacks the hyponym back-pointer to {w}"
    assert sum(map(len, hyper.values())) == sum(map(len, hypo.values()))
    roots = [w for w, hs in hyper.items() if not hs]
    assert roots == [ROOT], roots

    # Breadth-first from the root visits synsets in order of min depth; a synset's best path is
    # its lexicographically smallest shortest-depth parent's best path + itself (every shortest
    # path has the same length, so comparing the parents' paths decides).
    depth, path = {ROOT: 0}, {ROOT: (ROOT,)}
    frontier = [ROOT]
    while frontier:
        nxt = sorted({c for w in frontier for c in hypo[w] if c not in depth})
        for c in nxt:
            depth[c] = depth[frontier[0]] + 1
        for c in nxt:
            best = min(path[h] for h in hyper[c] if depth.get(h) == depth[c] - 1)
            path[c] = (*best, c)
        frontier = nxt
    assert len(depth) == len(synsets), "some synset is unreachable from entity"

    desc: dict[str, frozenset] = {}
    for w in sorted(synsets, key=depth.get, reverse=True):  # the deepest are leaves or done
        if w not in desc:
            desc[w] = _descendants(w, hypo, desc)

    rows = []
    for w, ss in synsets.items():
        names = [x.replace("_", " ") for x in ss.words]
        assert not any(c in n for n in names for c in ";\t\n"), names
        rows.append(
            dict(
                wnid=w,
                lemma=names[0],
                depth=depth[w],
                n_hyponyms=len(hypo[w]),
                n_descendants=len(desc[w]),
                tag_count=tag_counts.get(w, 0),
                lexname=ss.lexname,
                instance=int(any(s == "@i" for s, _ in ss.pointers)),
                hypernyms=hyper[w],
                path=list(path[w]),
                lemmas=names,
                gloss=" ".join(ss.gloss.split()),  # no tabs/newlines inside a TSV field
            )
        )
    return rows


def _descendants(w, hypo, memo) -> frozenset:
    """Transitive hyponyms of ``w`` (memoised; the hierarchy is a DAG at most ~20 deep)."""
    if w not in memo:
        out = set(hypo[w])
        for c in hypo[w]:
            out |= _descendants(c, hypo, memo)
        memo[w] = frozenset(out)
    return memo[w]


def to_tsv(rows: list[dict]) -> bytes:
    buf = io.StringIO()
    buf.write("\t".join(COLUMNS) + "\n")
    for r in rows:
        cells = [";".join(v) if isinstance(v, list) else str(v) for v in map(r.get, COLUMNS)]
        buf.write("\t".join(cells) + "\n")
    return buf.getvalue().encode("utf-8")


def license_text(data_noun: str) -> str:
    """WordNet 3.0's license, from the header of ``data.noun`` (line numbers stripped)."""
    lines = []
    with open(data_noun, encoding="utf-8") as f:
        for line in f:
            if not line.startswith("  "):
                break
            lines.append(re.sub(r"^\s+\d+ ?", "", line).rstrip())
    return (
        "mcla_jax/assets/wordnet_nouns.tsv.gz is derived from WordNet 3.0 (data.noun, index.sense\n"
        "as packaged by Debian's wordnet-base and wordnet-sense-index) under this license:\n\n"
        + "\n".join(lines).strip()
        + "\n"
    )


def verify_with_nltk(wordnet_dir: str, rows: list[dict], workdir: str) -> None:
    """Cross-check every row against NLTK 3.x reading the same files (generation-time only)."""
    import shutil

    corpus = os.path.join(workdir, "corpora", "wordnet")
    os.makedirs(corpus, exist_ok=True)
    for name in os.listdir(wordnet_dir):  # NLTK needs real copies, not symlinks
        if os.path.isfile(os.path.join(wordnet_dir, name)):
            shutil.copy(os.path.join(wordnet_dir, name), corpus)
    names = ["adj.all", "adj.pert", "adv.all"] + [f"noun.{n}" for n in NOUN_LEXNAMES.values()]
    names += [
        f"verb.{n}"
        for n in "body change cognition communication competition consumption contact "
        "creation emotion motion perception possession social stative weather".split()
    ]
    names.append("adj.ppl")
    cat = {"adj": 3, "adv": 4, "noun": 1, "verb": 2}
    with open(os.path.join(corpus, "lexnames"), "w") as f:
        f.writelines(f"{i:02d}\t{n}\t{cat[n.split('.')[0]]}\n" for i, n in enumerate(names))
    import nltk

    nltk.data.path.insert(0, workdir)  # NLTK only reads corpora below its data path
    from nltk.corpus import wordnet as wn

    synsets = list(wn.all_synsets("n"))
    assert len(synsets) == len(rows), (len(synsets), len(rows))
    for ss, r in zip(synsets, rows):
        w = f"n{ss.offset():08d}"
        assert w == r["wnid"], (w, r["wnid"])
        assert [n.replace("_", " ") for n in ss.lemma_names()] == r["lemmas"], w
        assert ss.min_depth() == r["depth"], w
        assert len(ss.hyponyms() + ss.instance_hyponyms()) == r["n_hyponyms"], w
        paths = [[f"n{s.offset():08d}" for s in p] for p in ss.hypernym_paths()]
        assert r["path"] == min(p for p in paths if len(p) == r["depth"] + 1), w
        assert ss.lexname() == r["lexname"], w
    print(f"NLTK agrees on all {len(rows)} noun synsets")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--wordnet_dir", default="/usr/share/wordnet")
    parser.add_argument("--out_dir", default=_ASSETS)
    parser.add_argument("--verify_nltk", action="store_true", help="cross-check with NLTK")
    args = parser.parse_args()

    data_noun = os.path.join(args.wordnet_dir, "data.noun")
    synsets = parse_data_noun(data_noun)
    rows = build_rows(synsets, read_tag_counts(os.path.join(args.wordnet_dir, "index.sense")))
    assert len(rows) == 82115, len(rows)  # WordNet 3.0 noun synsets
    # The ImageNet names that scripts/make_wnid_names.py read from the same file must agree.
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), os.pardir))
    from vl_jax.data.wnid_names import WNID_LEMMAS

    by_wnid = {r["wnid"]: r for r in rows}
    for w, lemmas in WNID_LEMMAS.items():
        assert [x.replace("_", " ") for x in lemmas] == by_wnid[w]["lemmas"], w

    if args.verify_nltk:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            verify_with_nltk(args.wordnet_dir, rows, tmp)

    os.makedirs(args.out_dir, exist_ok=True)
    out = os.path.join(args.out_dir, "wordnet_nouns.tsv.gz")
    # mtime=0 and no file name in the gzip header: regenerating gives identical bytes.
    with open(out, "wb") as f, gzip.GzipFile("", "wb", 9, f, mtime=0) as gz:
        gz.write(to_tsv(rows))
    with open(os.path.join(args.out_dir, "WORDNET_LICENSE"), "w") as f:
        f.write(license_text(data_noun))
    print(f"wrote {len(rows)} noun synsets to {os.path.normpath(out)} ({os.path.getsize(out):,} B)")


if __name__ == "__main__":
    main()
