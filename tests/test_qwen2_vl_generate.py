"""Qwen2.5-VL / Qwen2-VL through the generation engine (`vl_jax.generate`) against transformers'
`generate`, token for token, on tiny random checkpoints (`vl_jax.models.tiny.write_qwen2_vl`):
one image size per request, images of different sizes in one request (dynamic resolution: each
image padded to the request's patch bucket, per-image shared prefixes), greedy, 3 beams with a
repetition penalty, text only; padding changes no token; a second request with new image sizes
inside the same buckets does not recompile; 8 fake devices = 1.

Tolerance: tokens exactly equal; the padded vision tower's real tokens within 1e-5 (fp32) of
the unpadded tower's.
"""

import functools

import jax
import numpy as np
import pytest
import torch
import transformers

from vl_jax import generate as engine
from vl_jax.generate_inputs import image_prefixes
from vl_jax.models import qwen2_vl, tiny
from vl_jax.models.qwen2_vl_preprocess import CanvasTransform, canvas, image_sizes

N_NEW = 8


class Tiny:
    """A tiny checkpoint written once: HF reference, our model, processor, chat prompts."""

    def __init__(self, path):
        self.path = path
        self.model, self.proc = qwen2_vl.from_pretrained(path), qwen2_vl.load_processor(path)
        self.eos = self.proc.tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.pad = self.proc.tokenizer.pad_token_id

    @functools.cached_property
    def ref(self):
        arch = transformers.AutoConfig.from_pretrained(self.path).architectures[0]
        return getattr(transformers, arch).from_pretrained(self.path).eval()

    def chat(self, q, image=True):
        content = [{"type": "image"}, {"type": "text", "text": q}] if image else q
        return self.proc.apply_chat_template([{"role": "user", "content": content}],
                                             add_generation_prompt=True)  # fmt: skip

    def hf(self, enc, **kw):
        with torch.no_grad():
            out = self.ref.generate(
                **{k: torch.from_numpy(v) for k, v in enc.items()}, max_new_tokens=N_NEW,
                do_sample=False, **kw,
            )  # fmt: skip
        out = out[:, enc["input_ids"].shape[1] :].numpy()
        out = np.pad(out, ((0, 0), (0, N_NEW - out.shape[1])), constant_values=self.pad)
        # After its stop token a row is padding. HF's beam search fills it with the stop token
        # when the pad id is 0 (`pad_token_id or eos_token_id`), ours with the pad id.
        stopped = np.cumsum(out == self.eos, axis=1) - (out == self.eos) > 0
        return np.where(stopped, self.pad, out)

    def ours(self, enc, pixels, **kw):
        return engine.generate(
            self.model, enc["input_ids"], enc["attention_mask"], pixel_values=pixels,
            max_new_tokens=N_NEW, eos_token_id=self.eos, pad_token_id=self.pad, **kw,
        )  # fmt: skip


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    cache = {}

    def get(version):
        if version not in cache:
            path = tiny.write_qwen2_vl(str(tmp_path_factory.mktemp("q") / version), seed=3,
                                       version=version)  # fmt: skip
            cache[version] = Tiny(path)
        return cache[version]

    return get


def pictures(seed, sizes):
    rng = np.random.RandomState(seed)
    return [rng.randint(0, 256, (*s, 3), np.uint8) for s in sizes]


# ---- dynamic resolution: layout and padding ----------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("version", ["2.5", "2"])
def test_padded_images_equal_each_image_alone(tiny_models, version):
    """Images of three sizes (one cut by the window edge) and an empty padding image in one
    `PaddedImages` batch: each image's tokens equal the tower on that image alone (fp32, atol
    1e-5), its padding tokens follow, nothing is NaN."""
    t = tiny_models(version)
    pics = pictures(0, [(56, 84), (112, 56), (84, 84)])
    resized = [t.proc.image_processor.resize(p) for p in pics]
    batch = canvas(resized, 28)
    px = t.model.image_layout(np.concatenate([batch, np.zeros_like(batch[:1])]))
    np.testing.assert_array_equal(px.hw, [r.shape[:2] for r in resized] + [(0, 0)])
    got = np.asarray(jax.jit(lambda m, x: m.encode_images(x))(t.model, px))
    assert np.isfinite(got).all() and got.shape[1] == px.layout.valid.shape[1] // 4
    for i, r in enumerate(resized):
        alone = np.asarray(t.model.encode_images(r[None]))[0]
        np.testing.assert_allclose(got[i, : len(alone)], alone, atol=1e-5)


def test_canvas_sizes_and_transform(tiny_models):
    """The canvas batch carries each image's size (read back on the host and on device); the
    pipeline transform puts the processor's resized image on a fixed canvas, and scales an
    image too wide for it down to fit; a row of zeros (pipeline padding) is no image."""
    t = tiny_models("2.5")
    pre = t.proc.image_processor
    pics = pictures(1, [(70, 90), (120, 60)])
    resized = [pre.resize(p) for p in pics]
    batch = canvas(resized, 28)
    assert batch.shape == (2, 112, 84, 3)
    np.testing.assert_array_equal(image_sizes(batch, 28), [r.shape[:2] for r in resized])
    transform = CanvasTransform.for_budget(pre)
    assert transform.output_hw == (252, 252)  # sqrt(28 * 28 * 36 * 2) rounded up to 28 px
    out = np.stack([transform(p) for p in pics] + [np.zeros((252, 252, 3), np.float32)])
    for i, r in enumerate(resized):
        np.testing.assert_array_equal(out[i, : r.shape[0], : r.shape[1]], r)
        assert np.isnan(out[i, r.shape[0] :]).all() and np.isnan(out[i, :, r.shape[1] :]).all()
    sizes = image_sizes(out, 28)
    np.testing.assert_array_equal(sizes, [(56, 84), (112, 56), (0, 0)])
    px = t.model.image_layout(jax.device_put(out))  # on device: only the sizes come back
    np.testing.assert_array_equal(px.hw, sizes)
    wide = transform(np.zeros((20, 400, 3), np.uint8))  # 1:20 -> 28 x 560 px > 252: scaled
    np.testing.assert_array_equal(image_sizes(wide[None], 28), [(28, 252)])


# ---- generation --------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("version", ["2.5", "2"])
def test_engine_generation_equals_hf_generate(tiny_models, version):
    """vl_jax.generate = transformers' `generate` token for token with images of one size:
    greedy (one image per row, left-padded chat prompts), greedy with rows sharing an image (the
    engine's shared-prefix path), 3 beams, and text only."""
    t = tiny_models(version)
    qs = ("Is there a circle?", "Describe the image in detail please.", "What is the main object?")
    pics = pictures(0, [(70, 90)] * 3)
    pixels = np.stack([t.proc.image_processor.resize(p) for p in pics])
    enc = t.proc(images=pics, text=[t.chat(q) for q in qs])
    np.testing.assert_array_equal(t.ours(enc, pixels), t.hf(enc))
    np.testing.assert_array_equal(t.ours(enc, pixels, num_beams=3), t.hf(enc, num_beams=3))
    shared = t.proc(images=[pics[0]] * 3, text=[t.chat(q) for q in qs])
    np.testing.assert_array_equal(
        t.ours(shared, pixels[:1], image_index=np.zeros(3, int)), t.hf(shared)
    )
    text = t.proc(text=[t.chat(q, image=False) for q in qs])
    np.testing.assert_array_equal(t.ours(text, None), t.hf(text))


@pytest.mark.slow
def test_mixed_image_sizes_equal_hf_and_do_not_recompile(tiny_models):
    """Two image sizes in one request, on the input pipeline's fixed canvas (`CanvasTransform`),
    two questions each (per-image shared prefixes of different lengths): greedy and 3 beams with
    repetition penalty 1.5 equal transformers'; each image asked alone (unpadded, its own size)
    gives the same tokens; a second request with two new image sizes inside the same buckets
    (patch slots, windows, prefix and suffix lengths) equals transformers' and compiles
    nothing new. Qwen2.5-VL (windows); Qwen2-VL's padded tower: the fast test above."""
    t = tiny_models("2.5")
    transform = CanvasTransform.for_budget(t.proc.image_processor)
    qs = ("Is there a circle?", "What is the main object?")

    def request(sizes, seed, questions):
        pics = pictures(seed, sizes)
        index = [0, 0, 1, 1]
        enc = t.proc(images=[pics[i] for i in index],
                     text=[t.chat(questions[r % 2]) for r in range(4)])  # fmt: skip
        return pics, enc, np.stack([transform(p) for p in pics]), index

    # 4 x 3 and 2 x 5 units of 28 px: 48 and 40 patches (slot bucket 48), 4 and 3 windows.
    pics, enc, px, index = request([(112, 84), (56, 140)], 0, qs)
    prefixes = image_prefixes(enc["input_ids"], enc["attention_mask"], np.array(index),
                              t.model.config.image_token_id)  # fmt: skip
    assert prefixes[0] == prefixes[1] + 2  # the engine shares each image's prefix, 12 vs 10
    got = t.ours(enc, px, image_index=index)
    np.testing.assert_array_equal(got, t.hf(enc))
    beam = dict(num_beams=3, repetition_penalty=1.5)
    np.testing.assert_array_equal(t.ours(enc, px, image_index=index, **beam), t.hf(enc, **beam))
    for i, pic in enumerate(pics):  # each image alone: no padding, its own compiled size
        alone = t.proc(images=[pic] * 2, text=[t.chat(q) for q in qs])
        px_alone = t.proc.image_processor.resize(pic)[None]
        np.testing.assert_array_equal(
            t.ours(alone, px_alone, image_index=[0, 0]), got[2 * i : 2 * i + 2]
        )
    run = engine.generator_for(t.model).run
    compiled = run._cache_size()
    # 3 x 4 and 2 x 6 units: 48 and 48 patches, 4 and 3 windows, the same prompt buckets.
    _, enc2, px2, index = request([(84, 112), (56, 168)], 1, ("Is it a square?", "What is it?"))
    np.testing.assert_array_equal(t.ours(enc2, px2, image_index=index), t.hf(enc2))
    assert run._cache_size() == compiled


@pytest.mark.slow
def test_engine_on_the_mesh_equals_one_device(tiny_models, mesh_4x2):
    """8 fake devices (data 4 x model 2: the batch split, heads split) = one device through the
    engine, images of two sizes, rows sharing an image (the shared-prefix path) and one alone."""
    t = tiny_models("2.5")
    pics = pictures(0, [(70, 90), (120, 60)])
    enc = t.proc(images=[pics[0], pics[0], pics[1]],
                 text=[t.chat("Is there a circle?"), t.chat("What is the main object?"),
                       t.chat("Describe the image.")])  # fmt: skip
    kw = dict(
        pixel_values=[t.proc.image_processor.resize(p) for p in pics], image_index=[0, 0, 1],
        max_new_tokens=N_NEW, pad_token_id=t.pad, eos_token_id=t.eos,
    )  # fmt: skip
    one = engine.generate(t.model, enc["input_ids"], enc["attention_mask"], **kw)
    model = qwen2_vl.from_pretrained(t.path, mesh=mesh_4x2)
    got = engine.generate(model, enc["input_ids"], enc["attention_mask"], mesh=mesh_4x2, **kw)
    np.testing.assert_array_equal(got, one)
    np.testing.assert_array_equal(one, t.hf(enc))
