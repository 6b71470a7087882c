"""TrojanNN (optimised against a tiny random CLIP vision tower) and SSBA-style triggers."""

import numpy as np
import pytest
from PIL import Image

from vdc_jax import corrupt
from vdc_jax.corrupt import CorruptedSource, CorruptionSpec
from vl_jax.models import clip
from vl_jax.models import tiny as tiny_models

# 32x32 input, 8x8 patches; size_frac 0.5 makes the square mask 16x16 = 4 of the 16 patches.
FAST = dict(mask="square", stamp="replace", size_frac=0.5, num_neurons=2, steps=60, lr=8.0)


@pytest.fixture(scope="module")
def tiny():
    cfg = tiny_models.clip_config(
        image_size=32, patch_size=8, width=32, text_layers=0, embed_dim=16
    )
    return clip.init(cfg, seed=0)


class ListSource:
    """In-memory RandomAccessSource; images of varying sizes."""

    name, split = "list", None

    def __init__(self, per_class, k, seed=0):
        rng = np.random.default_rng(seed)
        self.class_names = [f"c{i}" for i in range(k)]
        self._labels = np.repeat(np.arange(k), per_class).astype(np.int32)
        sizes = [(32, 32), (40, 25), (24, 36)]
        self._images = [
            rng.integers(0, 256, (*sizes[i % 3], 3), dtype=np.uint8)
            for i in range(len(self._labels))
        ]

    def __len__(self):
        return len(self._labels)

    def __getitem__(self, i):
        return {"image": self._images[i], "label": self._labels[i], "id": f"s{i}"}

    def labels(self):
        return self._labels.copy()

    def ids(self):
        return [f"s{i}" for i in range(len(self))]


def _mask(h, w, size_frac):
    p = corrupt.badnets_patch_side(h, w, size_frac)
    m = np.zeros((h, w), bool)
    m[h - p :, w - p :] = True
    return m, p


def _photo(size):
    import skimage.data

    return np.asarray(Image.fromarray(skimage.data.astronaut()).resize(size))


# ------------------------------------------------------------------ TrojanNN


def test_select_neurons_is_trojannn_weight_rule(tiny):
    mlp = tiny.vision.encoder.layers[1].mlp
    fc1, fc2 = np.asarray(mlp.fc1.kernel[...]), np.asarray(mlp.fc2.kernel[...])
    got = corrupt.select_neurons(tiny, -1, "in", 3)
    np.testing.assert_array_equal(got, np.argsort(-np.abs(fc1).sum(0))[:3])  # from the previous
    got = corrupt.select_neurons(tiny, 1, "out", 2)
    np.testing.assert_array_equal(got, np.argsort(-np.abs(fc2).sum(1))[:2])  # to the next layer
    proj = np.asarray(tiny.vision.proj.kernel[...])
    got = corrupt.select_neurons(tiny, "embedding", "in", 1)
    np.testing.assert_array_equal(got, [np.argmax(np.abs(proj).sum(0))])
    with pytest.raises(ValueError, match="no next layer"):
        corrupt.select_neurons(tiny, "embedding", "out")
    with pytest.raises(ValueError, match="block index"):
        corrupt.select_neurons(tiny, 5)


@pytest.mark.parametrize("layer", [-1, "embedding"])
@pytest.mark.slow
def test_optimised_trigger_excites_selected_neurons(tiny, layer):
    r = corrupt.generate_trigger(tiny, layer=layer, seed=1, **FAST)
    assert r.trigger.shape == (16, 16, 3) and r.trigger.dtype == np.uint8
    rand = np.random.default_rng(7).integers(0, 256, (32, 16, 16, 3), dtype=np.uint8)
    rand_act = corrupt.neuron_activations(tiny, rand, r.neurons, layer).mean(1)
    # well above random patches (and the seeded start, itself a random patch)
    assert r.activation_final > rand_act.max()
    assert r.activation_final - rand_act.mean() > 8 * rand_act.std()
    assert r.activation_final - r.activation_init > 8 * rand_act.std()
    again = corrupt.neuron_activations(tiny, r.trigger[None], r.neurons, layer).mean()
    np.testing.assert_allclose(again, r.activation_final, rtol=1e-5)


@pytest.mark.slow
def test_optimised_apple_trigger_for_additive_stamping(tiny):
    """The default mask and stamping: the apple's pixels, optimised on a black canvas."""
    fast = {**FAST, "mask": "apple", "stamp": "add"}
    r = corrupt.generate_trigger(tiny, seed=1, **fast)
    m = corrupt.apple_mask(32, 32)
    rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
    inside = m[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    assert r.trigger.shape == (*inside.shape, 3) and (r.trigger[~inside] == 0).all()
    rand = np.random.default_rng(7).integers(0, 256, (32, *inside.shape, 3), dtype=np.uint8)
    kw = dict(mask="apple", background="black")
    rand_act = corrupt.neuron_activations(tiny, rand, r.neurons, **kw).mean(1)
    assert r.activation_final - rand_act.mean() > 8 * rand_act.std()
    again = corrupt.neuron_activations(tiny, r.trigger[None], r.neurons, **kw).mean()
    np.testing.assert_allclose(again, r.activation_final, rtol=1e-5)


def test_trojannn_cache_determinism_and_checkpoint_path(tiny, tmp_path):
    cache = tmp_path / "cache"
    a = corrupt.TrojanNN(model=tiny, cache_dir=str(cache), seed=3, **FAST)
    assert a.info["source"] == "optimised" and a.info["path"].endswith(".safetensors")
    assert [p.name for p in cache.iterdir()] == [a.info["path"].split("/")[-1]]
    b = corrupt.TrojanNN(model=tiny, cache_dir=str(cache), seed=3, **FAST)
    assert b.info["source"] == "cache"
    np.testing.assert_array_equal(a.trigger, b.trigger)  # reloaded == computed
    np.testing.assert_array_equal(b.info["neurons"], a.info["neurons"])
    fresh = corrupt.generate_trigger(tiny, seed=3, **FAST)  # deterministic by seed
    np.testing.assert_array_equal(fresh.trigger, a.trigger)
    other = corrupt.TrojanNN(model=tiny, cache_dir=str(cache), seed=4, **FAST)
    assert other.info["source"] == "optimised" and not np.array_equal(other.trigger, a.trigger)
    # a checkpoint directory with the same weights hits the same cache entry (content key)
    ckpt = str(tmp_path / "ckpt")
    clip.save_pretrained(tiny, ckpt)
    c = corrupt.TrojanNN(model=ckpt, cache_dir=str(cache), seed=3, **FAST)
    assert c.info["source"] == "cache"
    np.testing.assert_array_equal(c.trigger, a.trigger)


def test_trojannn_without_model_fails_clearly():
    with pytest.raises(ValueError, match="vision model"):
        corrupt.TrojanNN()
    src = ListSource(4, 2)
    with pytest.raises(ValueError, match="vision model"):
        CorruptedSource(src, CorruptionSpec("trojannn", poison_per_class=1), 0)


@pytest.mark.parametrize("suffix", [".png", ".npy"])
def test_trojannn_given_trigger_stamped_only_in_mask(tmp_path, suffix):
    trig = np.random.default_rng(0).integers(0, 256, (20, 20, 3), dtype=np.uint8)
    path = tmp_path / f"trigger{suffix}"
    if suffix == ".png":
        Image.fromarray(trig).save(path)
    else:
        np.save(path, trig)
    attack = corrupt.TrojanNN(trigger=str(path), mask="square", stamp="replace")
    np.testing.assert_array_equal(attack.trigger, trig)
    for h, w in [(32, 32), (40, 25), (224, 224)]:
        x = np.random.default_rng(h).integers(0, 256, (h, w, 3), dtype=np.uint8)
        y = attack(x)
        mask, p = _mask(h, w, attack.size_frac)
        np.testing.assert_array_equal(corrupt.trojan_mask(h, w, "square"), mask)
        np.testing.assert_array_equal(y[~mask], x[~mask])  # outside the mask: untouched
        resized = np.asarray(Image.fromarray(trig).resize((p, p), Image.Resampling.BILINEAR))
        np.testing.assert_array_equal(y[mask].reshape(p, p, 3), resized)
    half = corrupt.trojannn(x, trig, "square", "replace", alpha=0.5)
    expected = np.rint(0.5 * x[mask].astype(float) + 0.5 * resized.reshape(-1, 3))
    np.testing.assert_array_equal(half[mask], expected)


def test_apple_mask_geometry():
    m = corrupt.apple_mask(224, 224)
    rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
    # 7 % of the area, lower right and off-centre: BackdoorBench's apple4.png's place and size
    assert abs(m.mean() - 0.07) < 0.002
    assert (rows[0], rows[-1], cols[0], cols[-1]) == (120, 202, 128, 193)
    np.testing.assert_array_equal(corrupt.trojan_mask(224, 224), m)  # the default mask
    for h, w in [(32, 32), (40, 25), (500, 375)]:
        small = corrupt.apple_mask(h, w)
        assert abs(small.mean() - 0.07) < 0.015  # scales with the image
    given = np.zeros((8, 8), np.uint8)
    given[2:4, 5:7] = 200
    np.testing.assert_array_equal(
        corrupt.trojan_mask(16, 16, given), np.kron(given > 0, np.ones((2, 2), bool))
    )
    with pytest.raises(ValueError, match="mask must be"):
        corrupt.trojan_mask(16, 16, "circle")


def _bb_trojan(img, full_trigger):
    """BackdoorBench's TrojanTrigger.add_trigger: the full-size trigger image (0 outside the
    mask) added, cast to uint8 (sums above 255 wrap around there), then clipped."""
    with np.errstate(invalid="ignore"):
        return np.clip((full_trigger + img.astype(float)).astype("uint8"), 0, 255)


def test_trojannn_default_is_additive_apple_like_backdoorbench():
    m = corrupt.apple_mask(224, 224)
    rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    rng = np.random.default_rng(0)
    full = np.where(m[..., None], rng.integers(0, 200, (224, 224, 3)), 0).astype(np.uint8)
    attack = corrupt.TrojanNN(trigger=full[box])
    assert (attack.mask, attack.stamp) == ("apple", "add")
    x = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    y = attack(x)
    np.testing.assert_array_equal(y[~m], x[~m])
    total = x.astype(int) + full
    fits = total <= 255  # where the sum fits in uint8, BackdoorBench's pixels exactly
    np.testing.assert_array_equal(y[fits], _bb_trojan(x, full)[fits])
    assert (y[~fits] == 255).all() and (~fits).any()  # ours saturates where upstream wraps
    for h, w in [(32, 32), (40, 25)]:  # other sizes: stamped inside the mask only
        x = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        inside = corrupt.apple_mask(h, w)
        y = attack(x)
        np.testing.assert_array_equal(y[~inside], x[~inside])
        assert (y[inside] >= x[inside]).all()
    with pytest.raises(ValueError, match="stamp"):
        corrupt.TrojanNN(trigger=full[box], stamp="blend")


def test_trojannn_mask_image_file(tmp_path):
    """A mask image (BackdoorBench's apple4.png, say): non-zero pixels are the mask."""
    mask = np.zeros((56, 56, 3), np.uint8)
    mask[30:50, 36:52] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    trig = np.full((5, 4, 3), 40, np.uint8)
    attack = corrupt.TrojanNN(trigger=trig, mask=str(tmp_path / "mask.png"))
    x = np.full((112, 112, 3), 100, np.uint8)
    inside = np.zeros((112, 112), bool)
    inside[60:100, 72:104] = True
    y = attack(x)
    np.testing.assert_array_equal(y[~inside], x[~inside])
    assert (y[inside] == 140).all()


def test_trojannn_through_corrupted_source(tiny, tmp_path):
    src = ListSource(per_class=6, k=3)
    spec = CorruptionSpec(
        attack="trojannn",
        attack_kwargs=FAST,
        target=1,
        poison_per_class=2,
        model=tiny,
        cache_dir=str(tmp_path),
    )
    cs = CorruptedSource(src, spec, seed=2)
    orig = src.labels()
    assert cs.attack.kind == "trojannn" and cs.attack.info["source"] == "optimised"
    assert cs.is_poisoned.sum() == 4 and not cs.is_poisoned[orig == 1].any()
    assert [cs.is_poisoned[orig == c].sum() for c in (0, 2)] == [2, 2]
    rows = {r["index"]: r for r in cs.manifest}
    assert set(rows) == set(np.flatnonzero(cs.is_poisoned))
    for i in range(len(cs)):
        ex, ref = cs[i], src[i]
        if i in rows:
            assert rows[i]["kind"] == "trojannn" and rows[i]["new_label"] == ex["label"] == 1
            mask = corrupt.trojan_mask(*ref["image"].shape[:2], "square", FAST["size_frac"])
            np.testing.assert_array_equal(ex["image"][~mask], ref["image"][~mask])
            assert not np.array_equal(ex["image"][mask], ref["image"][mask])
        else:
            assert ex["image"] is ref["image"] and ex["label"] == ref["label"]
    # the same spec again: the trigger comes from the cache, the dataset is identical
    again = CorruptedSource(src, spec, seed=2)
    assert again.attack.info["source"] == "cache" and again.manifest == cs.manifest
    np.testing.assert_array_equal(again.attack.trigger, cs.attack.trigger)


# ------------------------------------------------------------------ SSBA


def test_ssba_invisible_sample_specific_deterministic():
    imgs = [_photo((96, 96)), _photo((64, 80))[::-1].copy()]
    rng = np.random.default_rng(0)
    imgs += [rng.integers(0, 256, (40, 25, 3), dtype=np.uint8), np.full((32, 32, 3), 128, np.uint8)]
    imgs += [np.zeros((16, 16, 3), np.uint8), np.full((16, 16, 3), 255, np.uint8)]
    attack = corrupt.SSBA(seed=5)
    residuals = []
    for x in imgs:
        y = attack(x)
        assert y.shape == x.shape and y.dtype == np.uint8 and not np.array_equal(x, y)
        assert corrupt.psnr(x, y) >= 28.0 >= 27.0  # the bound holds after rounding / clipping
        np.testing.assert_array_equal(y, corrupt.SSBA(seed=5)(x))  # deterministic
        assert not np.array_equal(y, corrupt.SSBA(seed=6)(x))
        residuals.append(y.astype(int) - x)
    # sample-specific: same-sized images get different residuals, shaped by their content
    a = _photo((64, 64))
    b = np.ascontiguousarray(a[::-1])
    ra, rb = attack(a).astype(int) - a, attack(b).astype(int) - b
    assert np.mean(ra != rb) > 0.5
    # the residual concentrates where the image has texture (larger local variation)
    high = np.abs(a.astype(float) - np.roll(a, 1, 0)).sum(-1) > 60
    assert np.abs(ra)[high].mean() > 2 * np.abs(ra)[~high].mean()
    assert corrupt.SSBA(psnr=32.0)(a).astype(int).__sub__(a).std() < ra.std()


def test_ssba_message_decodes_blindly():
    attack = corrupt.SSBA(message="dog", seed=2)
    np.testing.assert_array_equal(attack.bits, np.unpackbits(np.frombuffer(b"dog", np.uint8)))
    for size in [(96, 96), (120, 72)]:
        x = _photo(size)
        np.testing.assert_array_equal(attack.decode(attack(x)), attack.bits)
        assert np.mean(attack.decode(x) == attack.bits) < 0.9  # the clean image carries nothing


def test_ssba_through_corrupted_source():
    src = ListSource(per_class=8, k=4)
    spec = CorruptionSpec(attack="ssba", target=3, poison_per_class=3)
    cs = CorruptedSource(src, spec, seed=9)
    orig = src.labels()
    assert cs.is_poisoned.sum() == 9 and not cs.is_poisoned[orig == 3].any()
    assert (cs.labels()[cs.is_poisoned] == 3).all()
    assert {r["kind"] for r in cs.manifest} == {"ssba"}
    again = CorruptedSource(src, spec, seed=9)
    assert again.attack.seed == cs.attack.seed  # the carrier seed comes from the dataset seed
    for i in range(len(cs)):
        ex, ref = cs[i], src[i]
        if cs.is_poisoned[i]:
            assert ex["label"] == 3 and corrupt.psnr(ref["image"], ex["image"]) >= 28.0
            np.testing.assert_array_equal(ex["image"], again[i]["image"])
        else:
            assert ex["image"] is ref["image"] and ex["label"] == ref["label"]
