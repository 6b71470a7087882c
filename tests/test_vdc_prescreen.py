"""The CLIP pre-screen (vdc_jax.prescreen), the fusion and side-by-side metrics
(vdc_jax.fusion) and the comparison's targets and peer (vdc_jax.compare)."""

import os
import sys

import numpy as np
import pytest

from vdc_jax import compare, fusion, prescreen
from vdc_jax.detection import detection_metrics
from vdc_jax.scoring import Table
from vdc_jax.vqa import Item

DEMO_CLIP = os.path.join(os.path.dirname(prescreen.__file__), "..", "vl_jax", "assets", "demo",
                         "clip")  # fmt: skip


def _view(n=40, k=2, seed=0):
    """Two tight clusters (class 0: rows < n/2, class 1: the rest) and zero-shot probabilities
    that agree with the cluster, except where the test edits them."""
    rng = np.random.default_rng(seed)
    truth = (np.arange(n) >= n // 2).astype(int)
    centres = np.eye(8)[:k]
    feats = centres[truth] + rng.normal(size=(n, 8)) * 0.05
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    zs = np.full((n, k), 0.02)
    zs[np.arange(n), truth] = 0.98
    # the view lists positions 0..n-1 except 7 (an image CLIP could not read)
    keep = np.flatnonzero(np.arange(n) != 7)
    return prescreen.ClipView(
        keep, feats[keep].astype(np.float32), zs[keep].astype(np.float32)
    ), truth


def test_decide_follows_the_stated_rule(mesh8):
    view, truth = _view()
    labels = truth.copy()
    labels[3] = 1  # a relabelled sample: zero-shot disagrees
    view.zeroshot[view.index == 5] = [0.85, 0.15]  # top-1 but p < 0.9
    items = [Item(i, f"s{i}", int(labels[i])) for i in range(len(labels))]
    s = prescreen.decide(view, items, mesh=mesh8)
    expect = np.ones(len(items), bool)
    expect[[3, 5, 7]] = False  # relabelled / not confident / not read by CLIP
    np.testing.assert_array_equal(s.skip, expect)
    assert s.agree[25] == 1.0 and s.label_prob[7] == 0.0 and not s.top1[3]
    assert [it.index for it in s.asked] == [3, 5, 7]
    # neighbours: a whole cluster relabelled keeps zero-shot's veto
    assert not prescreen.decide(view, [Item(i, "", 1 - int(truth[i])) for i in range(40)],
                                mesh=mesh8).skip.any()  # fmt: skip


def test_merge_puts_skipped_samples_back_with_score_one():
    items = [Item(i, f"s{i}", i % 2) for i in range(6)]
    skip = np.array([True, False, False, True, True, False])
    s = prescreen.Screen(items, skip, np.ones(6), np.ones(6, bool), np.ones(6))
    asked = s.asked
    t = Table(index=np.array([it.index for it in asked]), ids=[it.id for it in asked],
              labels=np.array([it.label for it in asked]), class_names=["a", "b"],
              score=np.array([0.2, 0.8, 0.4]), flagged=np.array([True, False, True]),
              consistent=np.array([1, 4, 2]), total=np.array([5, 5, 5]), n=6,
              dropped=np.zeros(3, np.int64))  # fmt: skip
    m = s.merge(t)
    np.testing.assert_array_equal(m.index, np.arange(6))
    assert m.ids == [f"s{i}" for i in range(6)]
    np.testing.assert_allclose(m.score, [1.0, 0.2, 0.8, 1.0, 1.0, 0.4])
    np.testing.assert_array_equal(m.flagged, [False, True, False, False, False, True])
    np.testing.assert_array_equal(m.total, [0, 5, 5, 0, 0, 5])
    np.testing.assert_array_equal(m.labels, [0, 1, 0, 1, 0, 1])
    assert prescreen.summary(s) == {"enabled": True, "samples": 6, "skipped": 3, "asked": 3}
    assert prescreen.summary(None) == {"enabled": False}


def test_fuse_modes():
    v = np.array([1.0, 0.4, 0.8, 0.2, 1.0])
    p = np.array([0.9, 0.95, 0.1, 0.3, 0.05])
    issue = np.array([False, False, True, True, True])
    mean = fusion.fuse(v, p, issue, mode="mean")
    np.testing.assert_allclose(mean.score, (v + p) / 2)
    # flagged iff v < 1 - p: the confident probe vetoes VDC's doubt at 0.4, and rescues 0.8
    np.testing.assert_array_equal(mean.flags, [False, False, True, True, False])
    union = fusion.fuse(v, p, issue, mode="union")
    np.testing.assert_array_equal(union.flags, [False, True, True, True, True])
    np.testing.assert_allclose(union.score, np.minimum(v, p))
    with pytest.raises(ValueError, match="fusion mode"):
        fusion.fuse(v, p, issue, mode="max")


def test_side_by_side_blocks_equal_detection_metrics():
    rng = np.random.default_rng(0)
    dirty = rng.random(200) < 0.3
    kinds = np.where(dirty, np.where(rng.random(200) < 0.5, "badnets", "noise_sym"), "")
    score = rng.random(200)
    det = {"a": fusion.Detector(score, score < 0.4)}
    t = fusion.side_by_side(det, dirty, kinds, {"a": 12})
    want = detection_metrics(score < 0.4, dirty)
    assert {k: t["a"]["overall"][k] for k in want} == want
    sel = ~dirty | (kinds == "badnets")
    assert t["a"]["per_kind"]["badnets"]["tp"] == int(((score < 0.4) & dirty & sel).sum())
    assert t["a"]["mllm_calls"] == 12
    assert "badnets" in fusion.format_table(t) and "MLLM calls" in fusion.format_table(t)


def _entry(tpr, fpr, calls=0, poison=None):
    e = {"overall": {"tpr": tpr, "fpr": fpr}, "per_kind": {}, "mllm_calls": calls}
    if poison is not None:
        e["per_kind"]["badnets"] = {"tpr": poison}
    return e


def test_targets_compare_the_right_numbers():
    t = {
        "cleanlab": _entry(0.93, 0.001, poison=0.77),
        "vdc": _entry(0.95, 0.008, 5000, poison=0.80),
        "prescreened_vdc": _entry(0.945, 0.005, 1400, poison=0.80),
        "ours_cl": _entry(0.94, 0.001, poison=0.78),
        "fused": _entry(0.96, 0.006, 1400, poison=0.85),
    }
    g = compare.targets(t, "badnets")
    assert g["prescreen_calls_saved"] == {"value": 0.72, "met": True}
    assert g["prescreen_tpr_delta"]["met"] and g["prescreen_fpr_delta"]["met"]
    assert g["fused_tpr_vs_best"] == {"value": 0.96, "best": 0.95, "met": True}
    assert g["fused_fpr_vs_vdc"]["met"] and g["fused_poison_tpr_vs_vdc"]["met"]
    t["fused"]["overall"]["fpr"] = 0.009
    t["prescreened_vdc"]["overall"]["tpr"] = 0.93
    g = compare.targets(t, "badnets")
    assert not g["fused_fpr_vs_vdc"]["met"] and not g["prescreen_tpr_delta"]["met"]


def test_cleanlab_peer_is_optional(monkeypatch):
    monkeypatch.setitem(sys.modules, "cleanlab", None)  # import cleanlab -> ImportError
    assert compare.cleanlab_peer(np.zeros((4, 2)), np.array([0, 1, 0, 1]), 2, 0) is None


@pytest.mark.slow  # loads the demo CLIP and transformers
def test_zero_shot_equals_transformers_on_the_demo_clip(tmp_path, mesh8):
    """ClipView's zero-shot probabilities equal transformers' CLIPModel softmax(logits) on the
    same preprocessed pixels (atol 1e-4), features L2-normalised."""
    import torch
    import transformers

    from vdc_jax.inputs import write_shapes_folder
    from vl_jax.data.files import FileSource
    from vl_jax.models.loaded import ClipCheckpoint

    write_shapes_folder(str(tmp_path / "img"), per_class=3, size=64)
    src = FileSource.from_folder(str(tmp_path / "img"), labelled_only=True)
    names = ["circle", "rectangle", "triangle"]
    view = prescreen.clip_view(src, names, DEMO_CLIP, mesh8, batch_size=8)
    np.testing.assert_allclose(np.linalg.norm(view.features, axis=1), 1.0, atol=1e-5)
    pre = ClipCheckpoint(DEMO_CLIP).preprocess
    pixels = np.stack([pre(np.asarray(src[int(i)]["image"])) for i in view.index])
    hf = transformers.CLIPModel.from_pretrained(DEMO_CLIP).eval()
    tok = transformers.AutoTokenizer.from_pretrained(DEMO_CLIP)
    enc = tok([f"a photo of a {n}" for n in names], padding=True, return_tensors="pt")
    with torch.no_grad():
        out = hf(pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2), **enc)
    want = out.logits_per_image.softmax(-1).numpy()
    np.testing.assert_allclose(view.zeroshot, want, atol=1e-4)


def test_run_off_by_default_and_needs_a_clip(tmp_path):
    from configs.vdc.common import vdc_config
    from vl_jax.errors import ConfigError

    cfg = vdc_config().prescreen
    assert not cfg.enabled  # every existing config cleans without it
    assert prescreen.run(cfg, None, [], [], None, str(tmp_path)) is None
    assert prescreen.run(None, None, [], [], None, str(tmp_path)) is None
    cfg.enabled = True
    with pytest.raises(ConfigError, match=r"prescreen\.clip"):
        prescreen.run(cfg, None, [], [], None, str(tmp_path))
    assert not os.listdir(tmp_path)
