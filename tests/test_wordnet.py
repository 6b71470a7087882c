"""The shipped WordNet 3.0 noun table and its helpers (no NLTK, no corpus)."""

import collections
import gzip
from importlib import resources

import numpy as np
import pytest

from mcla_jax import wordnet

DOG, ENTITY = "n02084071", wordnet.ROOT
MALTESE, GOLDEN = "n02085936", "n02099601"


@pytest.fixture(scope="module")
def wn():
    return wordnet.load()


def test_counts_and_order(wn):
    assert len(wn) == wordnet.NUM_NOUNS == 82115
    assert list(wn.wnids) == sorted(wn.wnids)
    assert len(set(wn.wnids)) == len(wn)
    assert wordnet.load() is wn  # cached
    assert (wn.depth == 0).sum() == 1 and wn[ENTITY].depth == 0


def test_known_rows(wn):
    root = wn[ENTITY]
    assert (root.lemma, root.path, root.hypernyms) == ("entity", (ENTITY,), ())
    assert root.n_descendants == len(wn) - 1
    m = wn[MALTESE]
    assert m.lemmas == ("Maltese dog", "Maltese terrier", "Maltese")
    assert (m.lemma, m.depth, m.lexname, m.instance) == ("Maltese dog", 10, "noun.animal", False)
    assert m.hypernyms == ("n02085374",)  # toy dog
    g = wn[GOLDEN]
    assert (g.lemma, g.depth, g.n_hyponyms) == ("golden retriever", 12, 0)
    # entity > physical entity > object > whole > living thing > organism > animal >
    # domestic animal > dog > hunting dog > sporting dog > retriever > golden retriever
    assert g.path == (
        *"n00001740 n00001930 n00002684 n00003553 n00004258 n00004475 n00015388".split(),
        *"n01317541 n02084071 n02087122 n02098550 n02099029 n02099601".split(),
    )
    assert wn["n10954498"].instance  # Einstein (an instance of physicist)
    with pytest.raises(KeyError, match=r"not a WordNet 3\.0 noun"):
        wn["n99999999"]


def test_agrees_with_imagenet_names(wn):
    from vl_jax.data.wnid_names import WNID_LEMMAS

    for w, lemmas in WNID_LEMMAS.items():
        assert wn[w].lemmas == tuple(x.replace("_", " ") for x in lemmas)


def test_table_invariants(wn):
    """depth = 1 + min parent depth; path is a chain of hypernym links of length depth + 1;
    n_hyponyms matches the inverted hypernym links."""
    children = collections.Counter(h for n in wn.nouns for h in n.hypernyms)
    for n in wn.nouns[::7]:  # a spread-out seventh keeps this fast
        assert len(n.path) == n.depth + 1 and n.path[0] == ENTITY and n.path[-1] == n.wnid
        assert all(a in wn[b].hypernyms for a, b in zip(n.path, n.path[1:]))
        if n.hypernyms:
            assert n.depth == 1 + min(wn[h].depth for h in n.hypernyms)
        assert n.n_hyponyms == children[n.wnid] == len(wn.hyponyms(n.wnid))


def test_closure_helpers(wn):
    anc = wn.ancestors(DOG)
    assert {"n02083346", "n01317541", ENTITY} <= anc  # canine and domestic animal: two paths
    assert set(wn[DOG].path[:-1]) < anc
    desc = wn.descendants(DOG)
    assert len(desc) == wn[DOG].n_descendants == 189
    assert {MALTESE, GOLDEN} <= desc and DOG not in desc
    assert wn.is_a(GOLDEN, DOG) and wn.is_a(DOG, DOG) and not wn.is_a(DOG, GOLDEN)
    assert wn.ancestor_at_depth(GOLDEN, 8) == DOG and wn.ancestor_at_depth(DOG, 99) == DOG
    assert GOLDEN not in wn.hyponyms(DOG) and "n02087122" in wn.hyponyms(DOG)
    np.testing.assert_array_equal(wn.rows([GOLDEN, ENTITY]), [wn.index[GOLDEN], 0])


def test_mask(wn):
    assert wn.mask().all()
    m = wn.mask(min_depth=3, max_depth=5)
    assert m.sum() == ((wn.depth >= 3) & (wn.depth <= 5)).sum() > 0
    assert not wn.mask(instances=False)[wn.index["n10954498"]]
    dogs = wn.mask(under=[DOG])
    assert dogs.sum() == 190 and dogs[wn.index[GOLDEN]] and not dogs[wn.index[ENTITY]]
    leaves = wn.mask(under=[DOG], max_hyponyms=0)
    assert leaves[wn.index[GOLDEN]] and not leaves[wn.index[DOG]]
    animals = wn.mask(lexnames=["noun.animal"])
    assert animals[wn.index[MALTESE]] and not animals[wn.index[ENTITY]]
    assert wn.mask(min_tag_count=1).sum() < len(wn)


def test_asset_is_gzip_tsv_with_license():
    root = resources.files("mcla_jax").joinpath("assets")
    raw = root.joinpath(wordnet.ASSET).read_bytes()
    assert len(raw) < 10 * 2**20
    header = gzip.decompress(raw).split(b"\n", 1)[0].decode().split("\t")
    assert header[:2] == ["wnid", "lemma"]
    assert "WordNet 3.0 Copyright 2006 by Princeton University" in (
        root.joinpath("WORDNET_LICENSE").read_text()
    )


def test_tac_noun_pool_is_every_lemma_of_every_synset(wn):
    # TAC's noun list (its WordNetNouns.csv): every lemma of every noun synset, 146,347 rows,
    # synsets in offset order, lemmas in WordNet's order, spelt with "_"; its first rows:
    tac_head = ["entity", "physical_entity", "abstraction", "abstract_entity", "thing", "object",
                "physical_object", "whole", "unit", "congener", "living_thing", "animate_thing"]  # fmt: skip
    pool = wordnet.noun_pool("lemmas", wn)
    assert len(pool) == 146347 and list(pool.texts[:12]) == tac_head
    assert pool.rows.dtype == np.int64 and np.all(np.diff(pool.rows) >= 0)
    np.testing.assert_array_equal(np.bincount(pool.rows), [len(n.lemmas) for n in wn.nouns])
    i = int(np.flatnonzero(pool.rows == wn.index[MALTESE])[0])
    assert pool.texts[i : i + 3] == ("Maltese_dog", "Maltese_terrier", "Maltese")
    first = wordnet.noun_pool("synsets", wn)  # ours: the first lemma of each synset
    assert first.texts == wn.lemmas and np.array_equal(first.rows, np.arange(len(wn)))
    with pytest.raises(ValueError, match="noun pool"):
        wordnet.noun_pool("words", wn)
