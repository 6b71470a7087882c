"""Dirty-sample injection: trigger pixel semantics, selection rules, determinism, manifest."""

import json

import numpy as np
import pytest
from PIL import Image

from vdc_jax import corrupt
from vdc_jax.corrupt import CorruptedSource, CorruptionSpec


class ListSource:
    """Tiny in-memory RandomAccessSource; images of varying sizes."""

    name, split = "list", None

    def __init__(self, labels, num_classes, seed=0):
        rng = np.random.default_rng(seed)
        self.class_names = [f"class{c}" for c in range(num_classes)]
        self._labels = np.asarray(labels, np.int32)
        sizes = [(8, 8), (12, 9), (16, 20), (7, 13)]
        self._images = [
            rng.integers(0, 256, (*sizes[i % len(sizes)], 3), dtype=np.uint8)
            for i in range(len(labels))
        ]

    def __len__(self):
        return len(self._labels)

    def __getitem__(self, i):
        return {"image": self._images[i], "label": self._labels[i], "id": f"img/{i:03d}"}

    def labels(self):
        return self._labels.copy()

    def ids(self):
        return [f"img/{i:03d}" for i in range(len(self))]


def _source(per_class=20, k=4, **kw):
    return ListSource(np.repeat(np.arange(k), per_class), k, **kw)


def _img(h=32, w=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# ------------------------------------------------------------------ triggers


def _bb_white_square(image_size=32, square_size=3):
    """BackdoorBench's resource/badnet/generate_white_square.py (defaults: 32, 3, 0, 0)."""
    black = np.zeros((image_size, image_size, 3), dtype=np.uint8)
    black[image_size - square_size :, image_size - square_size :, :] = 255
    return black


def _bb_grid(image_size=32, square_size=3):
    """BackdoorBench's resource/badnet/generate_grid.py: dark cells are 1 so that they paste."""
    black = np.zeros((image_size, image_size, 3), dtype=np.uint8)
    for i in range(square_size):
        for j in range(square_size):
            v = 255 if (i + j) % 2 == 0 else 1
            black[image_size - square_size + i, image_size - square_size + j, :] = v
    return black


def _bb_badnets(img, trigger_32):
    """BackdoorBench's BadNets: torchvision Resize (PIL bilinear) of the trigger image to the
    image size, then AddMaskPatchTrigger and npClipAndToUint8."""
    h, w = img.shape[:2]
    t = np.array(Image.fromarray(trigger_32).resize((w, h), Image.Resampling.BILINEAR))
    return np.clip(img * (t == 0) + t * (t > 0), 0, 255).astype(np.uint8)


def _bilinear_resize_float(a, h, w):
    """An independent float bilinear resize (triangle filter at pixel centres, edge taps
    renormalised as PIL does; upsampling only): [H0, W0, C] -> float64 [h, w, C]."""

    def weights(n_out, n_in):
        center = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
        taps = np.arange(n_in)
        m = np.maximum(0.0, 1.0 - np.abs(taps[None, :] - center[:, None]))
        return m / m.sum(1, keepdims=True)

    return np.einsum(
        "hy,yxc,wx->hwc", weights(h, a.shape[0]), a.astype(np.float64), weights(w, a.shape[1])
    )


def test_badnets_default_is_backdoorbench_white_square():
    np.testing.assert_array_equal(corrupt.badnets_trigger(), _bb_white_square())
    np.testing.assert_array_equal(corrupt.badnets_trigger("checkerboard"), _bb_grid())
    attack = corrupt.BadNets()
    assert (attack.pattern, attack.trigger_size) == ("white", 32)
    # 32 px: exactly the white 3x3 square in the bottom-right corner, nothing else
    x = _img(32, 32)
    y = attack(x)
    expected = x.copy()
    expected[29:, 29:] = 255
    np.testing.assert_array_equal(y, expected)
    np.testing.assert_array_equal(corrupt.badnets(x), expected)
    # other sizes: BackdoorBench's resize-and-paste, bit for bit (PIL is its resize library)
    for h, w in [(224, 224), (40, 25), (8, 8), (64, 64)]:
        x = _img(h, w, seed=h + w)
        np.testing.assert_array_equal(attack(x), _bb_badnets(x, _bb_white_square()))
    big = _img(224, 224, seed=3)
    y = attack(big)
    changed = (y != big).any(-1)
    # soft-edged: the 3/32 square (21 px at 224) becomes a white 18-px core with a 6-px
    # bilinear ramp that straddles its edge; everything else is the image
    assert (y[206:, 206:] == 255).all()
    assert not changed[:200].any() and not changed[:, :200].any() and changed[200:, 200:].all()
    ramp = y[200:206, 220, 0].astype(int)
    assert (np.diff(ramp) > 0).all() and 0 < ramp[0] and ramp[-1] < 255
    # the resize is bilinear: an independent float implementation agrees within 1 grey level
    # (PIL computes in 8-bit fixed point); it also fixes which pixels are pasted
    t = np.asarray(
        Image.fromarray(_bb_white_square()).resize((224, 224), Image.Resampling.BILINEAR)
    )
    ref = _bilinear_resize_float(_bb_white_square(), 224, 224)
    assert np.abs(t - ref).max() <= 1
    np.testing.assert_array_equal(changed | (t[..., 0] == 0), True)
    # BackdoorBench's grid trigger and a user trigger image go through the same rule
    grid = corrupt.BadNets(pattern="checkerboard")
    np.testing.assert_array_equal(grid(big), _bb_badnets(big, _bb_grid()))
    own = np.zeros((16, 16, 3), np.uint8)
    own[:4, :4] = (255, 0, 9)
    np.testing.assert_array_equal(corrupt.BadNets(trigger=own)(big), _bb_badnets(big, own))


@pytest.mark.parametrize("h, w", [(32, 32), (224, 224), (40, 25)])
def test_badnets_patch_option_location_and_values(h, w):
    x = _img(h, w)
    y = corrupt.badnets_patch(x)
    np.testing.assert_array_equal(corrupt.BadNets(pattern="checkerboard", trigger_size=None)(x), y)
    p = corrupt.badnets_patch_side(h, w)
    assert p == max(1, round(3 / 32 * min(h, w)))
    r, c = np.indices((p, p))
    expected = np.where((r + c) % 2 == 0, 255, 0)
    np.testing.assert_array_equal(y[h - p :, w - p :], np.repeat(expected[..., None], 3, -1))
    mask = np.zeros((h, w), bool)
    mask[h - p :, w - p :] = True
    np.testing.assert_array_equal(y[~mask], x[~mask])  # nothing outside the patch changes
    assert y.dtype == np.uint8 and y.shape == x.shape
    z = corrupt.badnets_patch(x, pattern="white", corner="top_left", margin=2)
    assert (z[2 : 2 + p, 2 : 2 + p] == 255).all() and (z[:2] == x[:2]).all()
    with pytest.raises(ValueError, match="pattern"):
        corrupt.BadNets(pattern="stripes", trigger_size=None)


def _bb_blended(img, pattern, alpha):
    """BackdoorBench's Blended: the pattern through ToPILImage / Resize / ToTensor * 255
    (float32), blendedImageAttack, npClipAndToUint8."""
    h, w = img.shape[:2]
    t = np.array(Image.fromarray(pattern).resize((w, h), Image.Resampling.BILINEAR))
    target = (t.astype(np.float32) / np.float32(255)) * 255  # ToTensor's division, then * 255
    return np.clip((1 - alpha) * img + alpha * target, 0, 255).astype(np.uint8)


def test_blended_matches_backdoorbench_and_is_a_convex_combination():
    x, p = _img(seed=1), _img(seed=2)
    for alpha in (0.1, 0.2, 0.3):
        y = corrupt.blended(x, p, alpha)
        np.testing.assert_array_equal(y, _bb_blended(x, p, alpha))  # truncation, as upstream
        exact = (1 - alpha) * x.astype(np.float64) + alpha * p.astype(np.float64)
        assert np.abs(y - exact).max() < 1.0 + 1e-9 and (y <= exact + 1e-9).all()
        near = corrupt.blended(x, p, alpha, rounding="nearest")
        assert np.abs(near - exact).max() <= 0.5 + 1e-9
    np.testing.assert_array_equal(corrupt.blended(x, p, 0.0), x)
    # a pattern of another size is resized bilinearly, as upstream
    x2 = _img(10, 14, seed=5)
    np.testing.assert_array_equal(corrupt.blended(x2, p, 0.2), _bb_blended(x2, p, 0.2))
    a, b = corrupt.noise_pattern(3), corrupt.noise_pattern(3)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (224, 224, 3) and not np.array_equal(a, corrupt.noise_pattern(4))
    # the default noise pattern is resized by nearest neighbour: still full-contrast pixel noise
    attack, small = corrupt.Blended(seed=3), _img(32, 32, seed=4)
    nearest = a[np.arange(32) * 7][:, np.arange(32) * 7]
    np.testing.assert_array_equal(attack(small), corrupt.blended(small, nearest, 0.2))
    with pytest.raises(ValueError, match="rounding"):
        corrupt.blended(x, p, 0.2, rounding="up")


def _bb_sig(img, delta=40, f=6):
    """BackdoorBench's sigTriggerAttack.sigTrigger followed by npClipAndToUint8."""
    img = np.float32(img)
    pattern = np.zeros_like(img)
    m = pattern.shape[1]
    for i in range(int(img.shape[0])):
        for j in range(int(img.shape[1])):
            pattern[i, j] = delta * np.sin(2 * np.pi * j * f / m)
    img = np.uint32(img) + pattern
    return np.clip(np.uint8(np.clip(img, 0, 255)), 0, 255).astype(np.uint8)


def test_sig_matches_backdoorbench_defaults_and_formula():
    assert (corrupt.Sig().delta, corrupt.Sig().freq) == (40.0, 6.0)
    for h, w in [(32, 32), (20, 45), (224, 224)]:
        x = _img(h, w, seed=w)
        np.testing.assert_array_equal(corrupt.Sig()(x), _bb_sig(x))
        np.testing.assert_array_equal(corrupt.sig(x, 20, 3), _bb_sig(x, 20, 3))
    x = np.full((16, 30, 3), 128, np.uint8)
    v = 20 * np.sin(2 * np.pi * np.arange(30) * 6 / 30)
    y = corrupt.sig(x, delta=20, freq=6, rounding="nearest")
    np.testing.assert_array_equal(y, np.broadcast_to(np.rint(128 + v)[None, :, None], x.shape))
    assert (y == y[:1]).all()  # identical rows: a horizontal signal
    # clipping at the range ends
    assert corrupt.sig(np.full((4, 30, 3), 250, np.uint8)).max() == 255
    assert corrupt.sig(np.zeros((4, 30, 3), np.uint8)).min() == 0


def test_wanet_identity_smooth_and_small():
    x = _img(32, 32, seed=5)
    grid = corrupt.wanet_noise_grid(0, k=4)
    assert grid.shape == (4, 4, 2) and np.isclose(np.mean(np.abs(grid)), 1.0)
    np.testing.assert_array_equal(corrupt.wanet(x, grid, s=0.0), x)
    y = corrupt.wanet(x, grid, s=0.5)
    assert y.dtype == np.uint8 and y.shape == x.shape and not np.array_equal(x, y)
    for h, w in [(32, 32), (20, 37)]:
        py, px = corrupt.wanet_displacement((h, w), grid, s=0.5)
        dy, dx = py - np.arange(h)[:, None], px - np.arange(w)[None, :]
        # displacement ~ s * noise / 2 pixels: small, and smooth between neighbours away from
        # the border (where WaNet clamps the grid to the image, pulling it back to 0)
        assert np.abs(dy).max() < 0.5 * np.abs(grid).max() and np.abs(dx).max() < 2
        inner = (slice(2, -2), slice(2, -2))
        assert np.abs(np.diff(dx, axis=1)[inner]).max() < 0.2
        assert np.abs(np.diff(dy, axis=0)[inner]).max() < 0.2
        assert np.abs(dx).max() > 0.05  # and not the identity
    # on a linear ramp the warp moves values by at most slope * displacement
    ramp = np.broadcast_to((np.arange(32) * 4)[None, :, None], (32, 32, 3)).astype(np.uint8)
    _, px = corrupt.wanet_displacement((32, 32), grid, s=0.5)
    dx = np.abs(px - np.arange(32)[None, :]).max()
    assert np.abs(corrupt.wanet(ramp, grid).astype(int) - ramp).max() <= 4 * dx + 1


def test_bicubic_upsampling_interpolates_control_points():
    m = corrupt.triggers._bicubic_matrix(10, 4)
    np.testing.assert_allclose(m.sum(1), 1.0)  # partition of unity
    np.testing.assert_allclose(m[[0, 3, 6, 9]], np.eye(4), atol=1e-12)  # align_corners


# ------------------------------------------------------------------ selection


def test_poison_counts_and_target_never_poisoned():
    src = _source(per_class=20, k=4)
    cs = CorruptedSource(src, CorruptionSpec(attack="badnets", target=2, poison_per_class=5), 7)
    orig = src.labels()
    assert cs.is_poisoned.sum() == 15 and cs.is_dirty.sum() == 15
    assert not cs.is_poisoned[orig == 2].any()
    for c in (0, 1, 3):
        assert cs.is_poisoned[orig == c].sum() == 5
    assert (cs.labels()[cs.is_poisoned] == 2).all()
    np.testing.assert_array_equal(cs.labels()[~cs.is_dirty], orig[~cs.is_dirty])
    # poison_rate: fraction of N spread over the K - 1 non-target classes
    cs2 = CorruptedSource(src, CorruptionSpec(attack="sig", poison_rate=0.15), 7)
    assert cs2.is_poisoned.sum() == 12 and not cs2.is_poisoned[orig == 0].any()
    with pytest.raises(ValueError, match="samples left to poison"):
        CorruptedSource(src, CorruptionSpec(attack="sig", poison_per_class=21), 0)


@pytest.mark.parametrize("noise", ["sym", "asym"])
def test_label_noise_semantics(noise):
    k = 5
    src = _source(per_class=20, k=k)
    cs = CorruptedSource(src, CorruptionSpec(noise=noise, noise_rate=0.4), 3)
    orig, new = src.labels(), cs.labels()
    assert cs.is_noisy.sum() == 40 and not cs.is_poisoned.any()
    for c in range(k):
        assert cs.is_noisy[orig == c].sum() == 8
    changed = new != orig
    np.testing.assert_array_equal(changed, cs.is_noisy)  # noise label always != original
    if noise == "asym":
        np.testing.assert_array_equal(new[changed], (orig[changed] + 1) % k)
    else:
        assert len(set(new[changed].tolist())) > 2  # spread over other classes
    for i in np.flatnonzero(cs.is_noisy):
        ex = cs[int(i)]
        assert ex["label"] == new[i] and ex["image"] is src[int(i)]["image"]  # image untouched


def test_hybrid_never_alters_a_sample_twice():
    src = _source(per_class=30, k=4)
    spec = CorruptionSpec(attack="wanet", poison_per_class=6, noise="sym", noise_rate=0.4)
    cs = CorruptedSource(src, spec, 11)
    assert cs.is_noisy.sum() == 48 and cs.is_poisoned.sum() == 18
    assert not (cs.is_noisy & cs.is_poisoned).any()
    # noisy-label choice does not depend on the attack (separate random streams)
    only_noise = CorruptedSource(src, CorruptionSpec(noise="sym", noise_rate=0.4), 11)
    np.testing.assert_array_equal(only_noise.is_noisy, cs.is_noisy)
    np.testing.assert_array_equal(only_noise.labels()[cs.is_noisy], cs.labels()[cs.is_noisy])


def test_determinism_and_seed_dependence():
    src = _source()
    spec = CorruptionSpec(attack="blended", poison_per_class=4, noise="asym", noise_rate=0.2)
    a, b = CorruptedSource(src, spec, 5), CorruptedSource(src, spec, 5)
    assert a.manifest == b.manifest
    for i in range(len(src)):
        np.testing.assert_array_equal(a[i]["image"], b[i]["image"])
        np.testing.assert_array_equal(a[i]["image"], a[i]["image"])  # lazy, per index
    assert CorruptedSource(src, spec, 6).manifest != a.manifest


# TrojanNN needs a vision model to optimise its trigger: tested in test_corrupt_trojannn_ssba.py.
@pytest.mark.parametrize("attack", sorted(set(corrupt.ATTACKS) - {"trojannn"}))
def test_getitem_applies_attack_and_leaves_clean_untouched(attack):
    src = _source(per_class=8, k=3)
    cs = CorruptedSource(src, CorruptionSpec(attack=attack, target=1, poison_per_class=3), 2)
    assert cs.attack.kind == attack
    for i in range(len(cs)):
        ex, ref = cs[i], src[i]
        assert ex["id"] == ref["id"]
        if cs.is_poisoned[i]:
            np.testing.assert_array_equal(ex["image"], cs.attack(ref["image"]))
            assert ex["image"].shape == ref["image"].shape and ex["image"].dtype == np.uint8
            assert not np.array_equal(ex["image"], ref["image"])
            assert ex["label"] == 1
        else:
            assert ex["label"] == ref["label"]
            np.testing.assert_array_equal(ex["image"], ref["image"])  # bitwise equal


def test_attack_instances_and_kwargs(tmp_path):
    src = _source(per_class=6, k=2)
    x = src[0]["image"]
    cs = CorruptedSource(src, CorruptionSpec("blended", {"alpha": 0.1}, poison_per_class=2), 0)
    assert cs.attack.alpha == 0.1
    fixed = corrupt.Blended(alpha=0.2, pattern=np.zeros((4, 4, 3), np.uint8))
    cs2 = CorruptedSource(src, CorruptionSpec(fixed, poison_per_class=2), 0)
    assert cs2.attack is fixed
    np.testing.assert_array_equal(fixed(x), (0.8 * x.astype(np.float64)).astype(np.uint8))
    # a pattern file (BackdoorBench's Hello Kitty, say) is read and resized bilinearly
    Image.fromarray(_img(20, 30, seed=8)).save(tmp_path / "pattern.png")
    spec = CorruptionSpec("blended", {"pattern": str(tmp_path / "pattern.png")}, poison_per_class=2)
    from_file = CorruptedSource(src, spec, 0).attack
    np.testing.assert_array_equal(from_file(x), _bb_blended(x, _img(20, 30, seed=8), 0.2))
    with pytest.raises(ValueError, match="exactly one"):
        CorruptionSpec(attack="sig")
    with pytest.raises(ValueError, match="unknown attack"):
        CorruptionSpec(attack="no_such_attack", poison_per_class=1)


# ------------------------------------------------------------------ manifest


@pytest.mark.parametrize("suffix", [".tsv", ".json"])
def test_manifest_round_trip(tmp_path, suffix):
    src = _source(per_class=10, k=3)
    spec = CorruptionSpec(attack="badnets", poison_per_class=2, noise="sym", noise_rate=0.3)
    cs = CorruptedSource(src, spec, 1)
    rows = cs.manifest
    assert len(rows) == cs.is_dirty.sum() == 4 + 9
    assert [r["index"] for r in rows] == sorted(r["index"] for r in rows)
    for r in rows:
        assert r["id"] == src[r["index"]]["id"] and r["kind"] in corrupt.KINDS
        assert r["original_label"] == src.labels()[r["index"]]
        assert r["new_label"] == cs.labels()[r["index"]] != r["original_label"]
    path = tmp_path / f"manifest{suffix}"
    cs.write_manifest(path)
    assert corrupt.read_manifest(path) == rows
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind
    if suffix == ".json":
        assert json.loads(path.read_text()) == rows
    else:
        assert path.read_text().splitlines()[0] == "index\tid\tkind\toriginal_label\tnew_label"


def test_clean_spec_is_identity():
    from vl_jax.data.protocol import RandomAccessSource

    src = _source(per_class=4, k=2)
    cs = CorruptedSource(src, CorruptionSpec(), 0)
    assert isinstance(cs, RandomAccessSource)
    assert (cs.name, cs.split, cs.ids()) == ("list+corrupt", None, src.ids())
    assert not cs.is_dirty.any() and cs.manifest == []
    assert all(cs[i] is not None and cs[i]["image"] is src[i]["image"] for i in range(len(cs)))


def test_wanet_matches_official_torch_formulation():
    """Parity with WaNet's code, which BackdoorBench runs unchanged: bicubic upsample of the
    grid, ``clamp((identity + s * noise / H) * grid_rescale, -1, 1)``, grid_sample(align_corners
    =True), here with BackdoorBench's defaults k 4, s 0.5, grid_rescale 1."""
    import torch  # the test extra installs it: this reference must run in CI

    f = torch.nn.functional
    grid = corrupt.wanet_noise_grid(0, k=4)
    x, h = _img(32, 32, seed=9), 32
    ins = torch.tensor(grid.transpose(2, 0, 1)[None])
    noise = f.interpolate(ins, size=h, mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
    ar = torch.linspace(-1, 1, h, dtype=torch.float64)
    rows, cols = torch.meshgrid(ar, ar, indexing="ij")
    identity = torch.stack((cols, rows), 2)[None]
    sample_grid = torch.clamp((identity + 0.5 * noise / h) * 1.0, -1, 1)
    img = torch.tensor(x.transpose(2, 0, 1)[None], dtype=torch.float64)
    ref = f.grid_sample(img, sample_grid, align_corners=True)[0].permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(corrupt.wanet(x, grid), np.clip(np.rint(ref), 0, 255))
