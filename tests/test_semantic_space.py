"""Semantic spaces (SIC, TAC, MCLA) on a synthetic noun table with planted structure.

Every noun embedding is ``normalize(0.8 o + s_w)`` with a shared offset ``o`` (like CLIP's common
"a photo of a" direction) and a specific part ``s_w``. Images cluster around 4 "true" nouns; the
table also holds general hypernyms, a near-duplicate, a homonym (same lemma, same text), a noun
equal to the offset (close to the mean text: SIC's uniqueness filter must drop it), and 200
distractors under a broad subtree.
"""

import numpy as np
import pytest

import configs.mcla as mcla_configs
from mcla_jax import semantic_space as ss
from mcla_jax.wordnet import Noun, WordNetNouns

E = 64
TRUE = ["golden retriever", "pug", "tabby", "siamese"]


def _table(spec):
    """spec: list of (name, lemma, parent name or None) -> WordNetNouns with consistent columns."""
    wnid = {name: f"n{i:08d}" for i, (name, _, _) in enumerate(spec)}
    parent = {name: p for name, _, p in spec}
    path = {}
    for name, _, _ in spec:  # parents come first in spec
        path[name] = (*path[parent[name]], wnid[name]) if parent[name] else (wnid[name],)
    desc = {name: sum(wnid[name] in path[o][:-1] for o in path) for name in path}
    kids = {name: sum(p == name for p in parent.values()) for name in path}
    return WordNetNouns(
        Noun(
            wnid=wnid[name],
            lemma=lemma,
            depth=len(path[name]) - 1,
            n_hyponyms=kids[name],
            n_descendants=desc[name],
            tag_count=0,
            lexname="noun.Tops",
            instance=False,
            hypernyms=(wnid[parent[name]],) if parent[name] else (),
            path=path[name],
            lemmas=(lemma,),
            gloss="",
        )
        for name, lemma, _ in spec
    )


@pytest.fixture(scope="module")
def world():
    rng = np.random.default_rng(0)
    unit = lambda v: v / np.linalg.norm(v, axis=-1, keepdims=True)
    spec = [
        ("root", "entity", None),
        ("A", "animal", "root"),
        ("B0", "dog", "A"),
        ("B1", "cat", "A"),
        ("t0", TRUE[0], "B0"),
        ("t1", TRUE[1], "B0"),
        ("t2", TRUE[2], "B1"),
        ("t3", TRUE[3], "B1"),
        ("d0", "yellow retriever", "B0"),  # near-duplicate sibling of t0
        ("X", "thing", "root"),
        ("Y", "object", "X"),
        ("d1", TRUE[1], "Y"),  # homonym of t1: same lemma, same text, elsewhere in the tree
        ("g", "stuff", "Y"),  # the offset itself: close to the mean text
        *[(f"r{i}", f"distractor {i}", "Y") for i in range(200)],
    ]
    names = [n for n, _, _ in spec]
    o = unit(rng.normal(size=E))
    s = {n: unit(rng.normal(size=E)) for n in names}
    s["A"] = unit(s["t0"] + s["t1"] + s["t2"] + s["t3"])
    s["B0"], s["B1"] = unit(s["t0"] + s["t1"]), unit(s["t2"] + s["t3"])
    s["d0"] = unit(s["t0"] + 0.1 * rng.normal(size=E) / np.sqrt(E))
    s["d1"] = s["t1"]
    emb = unit(np.stack([0.8 * o + s[n] for n in names])).astype(np.float32)
    emb[names.index("g")] = o
    true = np.array([names.index(n) for n in ("t0", "t1", "t2", "t3")])
    labels = np.repeat(np.arange(4), 100)
    img = unit(emb[true][labels] + 0.4 * rng.normal(size=(400, E)) / np.sqrt(E))
    centres = unit(np.stack([img[labels == c].mean(0) for c in range(4)]))
    return dict(
        wn=_table(spec), emb=emb, img=img.astype(np.float32), centres=centres, true=true,
        row={n: i for i, n in enumerate(names)},
    )  # fmt: skip


# ------------------------------------------------------------------------ numpy transcriptions
def _order(rows, score):
    o = np.lexsort((rows, -score))
    return rows[o], score[o]


def ref_margin_lists(centres, emb, r):
    """Each noun to its nearest centre; per centre its r nouns of largest top-1 minus top-2
    cosine (lists may be shorter than r)."""
    sims = centres @ emb.T  # [K, M]
    top = np.sort(sims, axis=0)
    margin, assign = top[-1] - top[-2], sims.argmax(0)  # argmax: lowest centre on ties
    idx = []
    for k in range(len(centres)):
        mine = np.flatnonzero(assign == k)
        idx.append(mine[np.argsort(-margin[mine], kind="stable")[:r]])
    return idx, margin


def ref_sic_lists(img_centres, emb, gamma_r, rule="nearest"):
    sims = img_centres @ emb.T  # [K, M] -- fine at test size
    idx = np.argsort(-sims, axis=1, kind="stable")[:, :gamma_r]
    if rule == "margin":
        idx, margin = ref_margin_lists(img_centres, emb, gamma_r)
        sims = np.broadcast_to(margin, sims.shape)  # a noun's score is its margin
    best = {}
    for k in range(len(sims)):
        for r in idx[k]:
            best[r] = max(best.get(r, -np.inf), sims[k, r])
    mean = emb.mean(0)
    uniq = emb @ (mean / np.linalg.norm(mean))
    return idx, best, uniq


def ref_sic(img_centres, emb, gamma_r, gamma_u):
    _, best, uniq = ref_sic_lists(img_centres, emb, gamma_r)
    rows = np.array([r for r in best if uniq[r] < 1 - gamma_u])
    return _order(rows, np.array([best[r] for r in rows]))


def ref_tac(centres, emb, per_centre, temperature=1.0):
    logits = centres @ emb.T / temperature
    p = np.exp(logits - logits.max(0))
    p /= p.sum(0)
    assign, conf = logits.argmax(0), p.max(0)
    rows = []
    for c in range(len(centres)):
        mine = np.flatnonzero(assign == c)
        rows += list(mine[np.argsort(-conf[mine], kind="stable")[:per_centre]])
    rows = np.array(rows)
    return _order(rows, conf[rows])


def dup(emb, wn, v, w, dup_cos, dup_hops):
    a, b = wn.nouns[w], wn.nouns[v]
    lca = len([1 for x, y in zip(a.path, b.path) if x == y])  # tree paths: a shared prefix
    close = max(len(a.path), len(b.path)) - lca <= dup_hops
    return emb[v] @ emb[w] >= dup_cos and (a.lemma == b.lemma or close)


def ref_mcla(
    centres, emb, wn, gamma_r, gamma_u, keep, min_depth, max_desc, dup_cos, dup_hops,
    rule="nearest",
):  # fmt: skip
    idx, best, uniq = ref_sic_lists(centres, emb, gamma_r, rule)
    cand = [r for r in best if uniq[r] < 1 - gamma_u]
    cand = [r for r in cand if wn.depth[r] >= min_depth and wn.n_descendants[r] <= max_desc]
    # subsumed: a hyponym among the candidates scoring at least as well
    cand = [
        w
        for w in cand
        if not any(
            wn.is_a(wn.wnids[v], wn.wnids[w]) and v != w and best[v] >= best[w] for v in cand
        )
    ]
    cand.sort(key=lambda r: (-best[r], r))
    kept = []
    for w in cand:
        if not any(dup(emb, wn, v, w, dup_cos, dup_hops) for v in kept):
            kept.append(w)
    rows = {r for k in range(len(idx)) for r in [r for r in idx[k] if r in kept][:keep]}
    rows = np.array(sorted(rows))
    return _order(rows, np.array([best[r] for r in rows]))


MCLA_KW = dict(gamma_r=20, keep_per_centre=3, min_depth=2, max_descendants=50)


# ------------------------------------------------------------------------ tests
@pytest.mark.parametrize("block", [1, 7, 64, 4096])
def test_topk_nouns_matches_numpy_for_any_block(world, block):
    q, t = world["centres"], world["emb"]
    vals, idx = ss.topk_nouns(q, t, 10, block=block)
    ref = np.argsort(-(q @ t.T), axis=1, kind="stable")[:, :10]
    np.testing.assert_array_equal(idx, ref)
    np.testing.assert_allclose(vals, np.take_along_axis(q @ t.T, ref, 1), atol=1e-6)


def test_sic_matches_numpy_transcription(world):
    space = ss.sic_space(
        world["img"], world["emb"], n_clusters=4, centres=world["centres"], gamma_r=20
    )
    rows, score = ref_sic(world["centres"], world["emb"], 20, 0.05)
    np.testing.assert_array_equal(space.indices, rows)
    np.testing.assert_allclose(space.scores, score, atol=1e-6)


def test_tac_matches_numpy_transcription(world):
    space = ss.tac_space(world["img"], world["emb"], centres=world["centres"])
    rows, score = ref_tac(world["centres"], world["emb"], 5)
    np.testing.assert_array_equal(space.indices, rows)
    np.testing.assert_allclose(space.scores, score, atol=1e-6)


def test_mcla_matches_numpy_transcription(world):
    space = ss.mcla_space(
        world["img"], world["emb"], world["wn"], n_clusters=4, centres=world["centres"], **MCLA_KW
    )
    rows, score = ref_mcla(world["centres"], world["emb"], world["wn"], 20, 0.05, 3, 2, 50, 0.95, 2)
    np.testing.assert_array_equal(space.indices, rows)
    np.testing.assert_allclose(space.scores, score, atol=1e-6)


@pytest.mark.slow
def test_methods_recover_true_nouns_from_kmeans(world):
    """End to end: centres from k-means of the images, not given."""
    img, emb, true = world["img"], world["emb"], set(world["true"].tolist())
    sic = ss.sic_space(img, emb, n_clusters=4, gamma_r=20, n_init=3)
    tac = ss.tac_space(img, emb, n_centres=4, n_init=3)
    mcla = ss.mcla_space(img, emb, world["wn"], n_clusters=4, n_init=3, **MCLA_KW)
    for space in (sic, tac, mcla):
        assert true <= set(space.indices.tolist()), space.method
    assert len(tac) <= 5 * 4
    assert len(mcla) <= 3 * 4 < len(sic)
    # SIC: each true noun is the nearest noun of its centre. (Not so for TAC: its softmax
    # confidence may favour the near-duplicate, whose cosines to the *other* centres are lower.)
    top = {int(c): int(r) for r, c in zip(sic.indices[::-1], sic.columns["centre"][::-1])}
    assert set(top.values()) == true


def test_filters_remove_planted_nouns(world):
    img, emb, row, c = world["img"], world["emb"], world["row"], world["centres"]
    planted = {row[n] for n in ("A", "B0", "B1", "d0", "d1")}
    sic = set(ss.sic_space(img, emb, n_clusters=4, centres=c, gamma_r=20).indices.tolist())
    assert planted <= sic  # SIC keeps general nouns and duplicates...
    assert row["g"] not in sic  # ...but its uniqueness filter drops the mean-like noun
    no_uniq = ss.sic_space(img, emb, n_clusters=4, centres=c, gamma_r=20, gamma_u=-1.0)
    assert row["g"] in set(no_uniq.indices.tolist())
    mcla = ss.mcla_space(img, emb, world["wn"], n_clusters=4, centres=c, **MCLA_KW)
    assert not (planted | {row["g"]}) & set(mcla.indices.tolist())
    assert set(world["true"].tolist()) <= set(mcla.indices.tolist())
    # the subsumption rule alone (no depth / breadth / duplicate / size limits):
    loose = ss.mcla_space(
        img, emb, world["wn"], n_clusters=4, centres=c, gamma_r=20, keep_per_centre=20,
        min_depth=0, max_descendants=10**6, dup_cos=2.0,
    )  # fmt: skip
    kept = set(loose.indices.tolist())
    assert {row["d0"], row["d1"]} <= kept  # no duplicate rule (dup_cos > 1)
    assert not {row["A"], row["B0"], row["B1"]} & kept  # subsumed by a better hyponym


@pytest.mark.parametrize("method", ["sic", "tac", "mcla"])
def test_block_size_does_not_change_result(world, method):
    def build(block):
        kw = dict(centres=world["centres"], block=block)
        if method == "sic":
            return ss.sic_space(world["img"], world["emb"], n_clusters=4, gamma_r=20, **kw)
        if method == "tac":
            return ss.tac_space(world["img"], world["emb"], **kw)
        return ss.mcla_space(world["img"], world["emb"], world["wn"], n_clusters=4, **MCLA_KW, **kw)

    a, b = build(5), build(4096)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)
    for k in a.columns:
        np.testing.assert_allclose(a.columns[k], b.columns[k], atol=1e-6)


def test_tsv_round_trip(world, tmp_path):
    space = ss.mcla_space(
        world["img"], world["emb"], world["wn"], n_clusters=4, centres=world["centres"], **MCLA_KW
    )
    path = ss.write_tsv(space, str(tmp_path / "run"), world["wn"])
    assert path.endswith("semantic_space_mcla.tsv")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["semantic_space_mcla.tsv"]
    back, lemmas, wnids = ss.read_tsv(path)
    assert back.method == "mcla"
    np.testing.assert_array_equal(back.indices, space.indices)
    np.testing.assert_array_equal(back.scores, space.scores)  # exact float32 round trip
    assert list(back.columns) == list(space.columns)
    for k in space.columns:
        np.testing.assert_array_equal(back.columns[k], space.columns[k])
        assert back.columns[k].dtype.kind == space.columns[k].dtype.kind
    assert lemmas == [world["wn"].lemmas[i] for i in space.indices]
    assert wnids == [world["wn"].wnids[i] for i in space.indices]
    header = open(path).readline().rstrip("\n").split("\t")
    assert header[:4] == ["lemma", "wnid", "index", "score"]


def test_bad_inputs(world):
    with pytest.raises(ValueError, match="noun embeddings for a table"):
        ss.mcla_space(
            world["img"], world["emb"][:-1], world["wn"], n_clusters=4, centres=world["centres"]
        )
    with pytest.raises(ValueError, match="1 <= k <= M"):
        ss.topk_nouns(world["centres"], world["emb"][:3], 4)
    with pytest.raises(ValueError, match="finite"):
        ss.sic_space(np.full((4, E), np.nan), world["emb"], n_clusters=2)


@pytest.mark.slow
def test_candidates_mask_restricts_every_space():
    rng = np.random.default_rng(5)
    img = rng.normal(size=(60, 8)).astype(np.float32)
    emb = rng.normal(size=(50, 8)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    cand = np.zeros(50, bool)
    cand[::3] = True
    _, rows = ss.topk_nouns(img[:4], emb, 5, candidates=cand)
    assert cand[rows].all()
    want = np.argsort(-(img[:4] @ emb[cand].T), axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(rows, np.flatnonzero(cand)[want])
    sic = ss.sic_space(img, emb, n_clusters=3, gamma_r=4, gamma_u=1.0, candidates=cand, n_init=2)
    tac = ss.tac_space(img, emb, n_centres=3, per_centre=2, candidates=cand, n_init=2)
    assert len(sic) and cand[sic.indices].all() and len(tac) and cand[tac.indices].all()
    with pytest.raises(ValueError, match="candidate"):
        ss.topk_nouns(img[:2], emb, 20, candidates=cand)


# ------------------------------------------------------------------------ space.rule = "margin"
@pytest.mark.parametrize("block", [1, 7, 4096])
def test_margin_nouns_matches_numpy_for_any_block(world, block):
    c, t = world["centres"], world["emb"]
    cand = np.ones(len(t), bool)
    cand[1::4] = False
    for mask in (None, cand):
        vals, idx = ss.margin_nouns(c, t, 6, block=block, candidates=mask)
        sub = np.flatnonzero(cand if mask is not None else np.ones(len(t), bool))
        lists, margin = ref_margin_lists(c, t[sub], 6)
        for k in range(len(c)):
            want = sub[lists[k]]
            np.testing.assert_array_equal(idx[k, : len(want)], want)
            np.testing.assert_allclose(vals[k, : len(want)], margin[lists[k]], atol=1e-6)
            assert (idx[k, len(want) :] == -1).all() and np.isneginf(vals[k, len(want) :]).all()


def test_margin_nouns_pads_a_centre_that_is_nearest_to_few_nouns():
    c = np.eye(3, dtype=np.float32)[:2]  # centres e0, e1
    t = np.array([[1, 0, 0], [0.6, 0.8, 0], [0.8, 0.6, 0], [0, 0, 1.0]], np.float32)
    vals, idx = ss.margin_nouns(c, t, 3)
    # noun 3 ties (0 - 0): it goes to the lower centre with margin 0
    np.testing.assert_array_equal(idx, [[0, 2, 3], [1, -1, -1]])
    np.testing.assert_allclose(vals[0], [1.0, 0.2, 0.0], atol=1e-6)
    np.testing.assert_allclose(vals[1, 0], 0.2, atol=1e-6)
    with pytest.raises(ValueError, match="2 centres"):
        ss.margin_nouns(c[:1], t, 2)


def test_mcla_margin_rule_matches_numpy_transcription(world):
    kw = dict(MCLA_KW, gamma_r=8)
    space = ss.mcla_space(
        world["img"], world["emb"], world["wn"], n_clusters=4, centres=world["centres"],
        rule="margin", **kw,
    )  # fmt: skip
    rows, score = ref_mcla(
        world["centres"], world["emb"], world["wn"], 8, 0.05, 3, 2, 50, 0.95, 2, rule="margin"
    )
    assert len(rows) >= 4
    np.testing.assert_array_equal(space.indices, rows)
    np.testing.assert_allclose(space.scores, score, atol=1e-6)
    with pytest.raises(ValueError, match="unknown noun rule"):
        ss.mcla_space(world["img"], world["emb"], world["wn"], n_clusters=4, rule="far")


def _shapes_and_colours(seed=0, n_per=40):
    """Images of 3 shapes x 4 colours, colour the stronger direction; nouns: the 3 shape words,
    the 4 colour words and "paint" (the mean colour direction). k-means on shapes (K = 3) puts
    every colour in every cluster, so "paint" is the nearest noun of every centre."""
    rng = np.random.default_rng(seed)
    unit = lambda v: v / np.linalg.norm(v, axis=-1, keepdims=True)
    basis = np.linalg.qr(rng.normal(size=(16, 16)))[0]
    shape, colour = basis[:3], basis[3:7]
    paint = unit(colour.sum(0))
    y_s, y_c = np.meshgrid(np.arange(3), np.arange(4), indexing="ij")
    y_s, y_c = np.repeat(y_s.ravel(), n_per), np.repeat(y_c.ravel(), n_per)
    img = unit(0.3 * shape[y_s] + colour[y_c] + 0.02 * rng.normal(size=(len(y_s), 16)))
    emb = np.concatenate([shape, colour, paint[None]]).astype(np.float32)
    spec = [("root", "entity", None), *[(f"w{i}", f"noun {i}", "root") for i in range(8)]]
    wn = _table(spec)
    emb = np.concatenate([unit(rng.normal(size=(1, 16))), emb]).astype(np.float32)  # the root
    return img.astype(np.float32), emb, wn, y_s


def test_margin_rule_keeps_the_nouns_that_tell_clusters_apart():
    img, emb, wn, y = _shapes_and_colours()
    centres = np.stack([img[y == k].mean(0) for k in range(3)])
    kw = dict(n_clusters=3, centres=centres, gamma_r=1, gamma_u=-1.0, min_depth=0)
    near = ss.mcla_space(img, emb, wn, rule="nearest", **kw)
    marg = ss.mcla_space(img, emb, wn, rule="margin", **kw)
    assert set(near.indices.tolist()) == {8}  # "paint": nearest to every centre
    assert set(marg.indices.tolist()) == {1, 2, 3}  # one shape word per centre
    np.testing.assert_array_equal(np.sort(marg.columns["centre"]), [0, 1, 2])


@pytest.mark.slow
def test_experiment_passes_space_rule(world, monkeypatch, tmp_path):
    from mcla_jax import experiment, noun_embeddings, wordnet

    monkeypatch.setattr(wordnet, "load", lambda: world["wn"])
    monkeypatch.setattr(noun_embeddings, "embed_nouns", lambda *a, **k: (world["emb"], None))
    # the planted table is shallower than the default min_depth: relax the hierarchy filter
    shallow = dict(min_depth=2, max_descendants=50)
    build = ss.mcla_space
    monkeypatch.setattr(ss, "mcla_space", lambda *a, **k: build(*a, **k, **shallow))
    cfg = mcla_configs.get("mcla", "easy_vqa_shapes")
    cfg.train.num_clusters, cfg.space.gamma_r = 4, 8
    spaces = {}
    for rule in ("nearest", "margin"):
        cfg.space.rule = rule
        space = experiment.noun_space(cfg, str(tmp_path), "unused", world["img"], None).space
        want = build(world["img"], world["emb"], world["wn"], n_clusters=4, gamma_r=8,
                     rule=rule, **shallow)  # fmt: skip
        spaces[rule] = space.scores
        np.testing.assert_array_equal(space.indices, want.indices)
        np.testing.assert_allclose(space.scores, want.scores, atol=1e-6)
    assert len(spaces["margin"]) and spaces["margin"].max() < spaces["nearest"].max()  # differ
    assert mcla_configs.get("mcla").space.rule == "nearest"  # default unchanged


@pytest.mark.slow
def test_sic_raw_kmeans_clusters_raw_features():
    # SIC's code runs k-means on raw CLIP features: with rows of very different norms the raw
    # centres differ from those of the unit rows; the space is then chosen by the (normalised)
    # raw centres, as the numpy transcription with the same centres.
    from vl_jax.cluster import kmeans

    rng = np.random.default_rng(1)
    emb = rng.normal(size=(300, 16)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    raw = (rng.normal(size=(200, 16)) * rng.uniform(0.2, 5, size=(200, 1))).astype(np.float32)
    space = ss.sic_space(raw, emb, n_clusters=3, gamma_r=10, n_init=2, raw_kmeans=True)
    c = np.asarray(kmeans(raw, 3, n_init=2, seed=0)[0])
    want = ss.sic_space(raw, emb, n_clusters=3, gamma_r=10, centres=c)
    np.testing.assert_array_equal(space.indices, want.indices)
    rows, _ = ref_sic(c / np.linalg.norm(c, axis=1, keepdims=True), emb, 10, 0.05)
    np.testing.assert_array_equal(space.indices, rows)


def test_tac_default_centres_round_n_over_300(monkeypatch):
    # TAC's code uses round(N / 300) centres (STL-10: 5,000 -> 17; ImageNet-10: 13,000 -> 43).
    seen = []
    monkeypatch.setattr(ss, "kmeans", lambda x, k, **kw: (seen.append(k), (x[:k], None, 0))[1])
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(50, 8)).astype(np.float32)
    for n, k in ((5000, 17), (13000, 43), (19500, 65), (100, 1)):
        ss.tac_space(rng.normal(size=(n, 8)).astype(np.float32), emb, per_centre=1)
        assert seen[-1] == k


def test_tsv_of_a_lemma_pool_names_texts_and_synsets(tmp_path):
    from mcla_jax import wordnet

    wn = wordnet.load()
    pool = wordnet.noun_pool("lemmas", wn)
    rows = np.flatnonzero(pool.rows == wn.index["n02085936"])  # Maltese dog's 3 lemmas
    space = ss.SemanticSpace("tac", rows.astype(np.int64), np.array([0.3, 0.2, 0.1], np.float32))
    got, lemmas, wnids = ss.read_tsv(ss.write_tsv(space, str(tmp_path), wn, pool))
    assert lemmas == ["Maltese_dog", "Maltese_terrier", "Maltese"]
    assert wnids == ["n02085936"] * 3
    np.testing.assert_array_equal(got.indices, rows)
