"""vl_jax.generate against transformers' `generate`: greedy and beam search token for token on tiny
random Llama (GQA), Qwen2 (tied) and LLaVA (CLIP + Llama) models saved and loaded through our
loaders; batching, stop tokens, sampling seeds, compile-once buckets, sharding, image sharing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from vl_jax import generate as gen
from vl_jax import parallel
from vl_jax.models import llava, llm

PAD, EOS, BOS, IMG = 1, 2, 3, 96
V = 97
L = 10
# Larger-than-default init: logits spread out, so argmax/top-k ties between fp32 implementations
# are unlikely.
TEXT = dict(
    vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
    initializer_range=0.3, pad_token_id=PAD, eos_token_id=EOS, bos_token_id=BOS,
)  # fmt: skip


def _save_load(hf_model, tmp_path_factory, name, loader):
    d = tmp_path_factory.mktemp(name)
    hf_model.save_pretrained(d)
    return loader(str(d))


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(**TEXT)).eval()
    return hf, _save_load(hf, tmp_path_factory, "llama", llm.from_pretrained)


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    torch.manual_seed(1)
    cfg = transformers.Qwen2Config(**{**TEXT, "tie_word_embeddings": True})
    hf = transformers.Qwen2ForCausalLM(cfg).eval()
    with torch.no_grad():  # non-zero q/k/v biases
        for n, p in hf.named_parameters():
            if n.endswith("bias"):
                p.normal_(0, 0.3)
    return hf, _save_load(hf, tmp_path_factory, "qwen", llm.from_pretrained)


def prompts(lengths, seed=0, image_tokens=0):
    """Left-padded [B, T] ids/mask; row i has lengths[i] text tokens (+ image tokens after BOS)."""
    rng = np.random.default_rng(seed)
    rows = []
    for n in lengths:
        text = rng.integers(4, IMG, n)
        rows.append(np.concatenate([[BOS], [IMG] * image_tokens, text]))
    t = max(map(len, rows))
    ids = np.full((len(rows), t), PAD, np.int64)
    mask = np.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, t - len(r) :], mask[i, t - len(r) :] = r, 1
    return ids, mask


def hf_generate(hf, ids, mask, n=L, **kw):
    """HF new tokens [B, n] (its output is prompt + new, cut at the longest row: pad it back)."""
    with torch.no_grad():
        out = hf.generate(
            torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=n,
            do_sample=False, pad_token_id=PAD, **kw,
        )  # fmt: skip
    new = out[:, ids.shape[1] :].numpy()
    return np.pad(new, ((0, 0), (0, n - new.shape[1])), constant_values=PAD)


def frequent_token(hf, ids, mask):
    """A token HF's greedy run emits early in some row but not first: a stop token that fires."""
    out = hf_generate(hf, ids, mask, eos_token_id=None)
    return int(out[0, 2])


@pytest.mark.parametrize("family", ["llama", "qwen"])
def test_greedy_equals_hf_left_padded_mixed_lengths(family, request):
    hf, ours = request.getfixturevalue(family)
    ids, mask = prompts([5, 11, 2, 8])
    for eos in (EOS, frequent_token(hf, ids, mask)):
        want = hf_generate(hf, ids, mask, eos_token_id=eos)
        got = gen.generate(ours, ids, mask, max_new_tokens=L, eos_token_id=eos, pad_token_id=PAD)
        np.testing.assert_array_equal(got, want)
        assert got.dtype == np.int32 and got.shape == (4, L)


@pytest.mark.parametrize(
    "kw",
    [
        dict(length_penalty=0.6, repetition_penalty=1.4),
        dict(length_penalty=1.7, repetition_penalty=1.2, early_stopping=True),
        dict(length_penalty=1.3, early_stopping="never"),
    ],
)
def test_beam_search_equals_hf(llama, kw):
    hf, ours = llama
    ids, mask = prompts([6, 3, 9, 14], seed=1)
    # Two stop tokens (HF keeps (1 + #eos) * K candidates) that fire mid-sequence.
    eos = [EOS, frequent_token(hf, ids, mask)]
    want = hf_generate(hf, ids, mask, num_beams=3, eos_token_id=eos, **kw)
    got = gen.generate(
        ours, ids, mask, max_new_tokens=L, num_beams=3, eos_token_id=eos, pad_token_id=PAD, **kw
    )
    np.testing.assert_array_equal(got, want)


def test_min_new_tokens_equals_hf(llama):
    """HF's `min_new_tokens`: a stop token that would fire early is banned until then."""
    hf, ours = llama
    ids, mask = prompts([5, 11, 2, 8])
    eos = frequent_token(hf, ids, mask)  # emitted at step 2 of row 0 without a minimum
    for kw in (dict(), dict(num_beams=3, repetition_penalty=1.4)):
        want = hf_generate(hf, ids, mask, eos_token_id=eos, min_new_tokens=4, **kw)
        got = gen.generate(ours, ids, mask, max_new_tokens=L, min_new_tokens=4, eos_token_id=eos,
                           pad_token_id=PAD, **kw)  # fmt: skip
        np.testing.assert_array_equal(got, want)
        assert not (got[:, :4] == eos).any()
    with pytest.raises(ValueError, match="min_new_tokens"):
        gen.generate(ours, ids, mask, max_new_tokens=2, min_new_tokens=3)


@pytest.mark.slow
def test_penalty_on_new_tokens_only_equals_hf_inputs_embeds(llama):
    """penalize_prompt=False is HF `generate(inputs_embeds=...)` without input_ids (LAVIS's
    InstructBLIP call, one unpadded row per call): the repetition penalty sees only the
    generated tokens. Rows of equal length: with left padding HF would also skip the first
    `padding length` generated tokens (its `prompt_ignore_length` counts prompt slots that an
    inputs_embeds-only call does not have)."""
    hf, ours = llama
    ids, mask = prompts([7, 7, 7], seed=8)
    kw = dict(max_new_tokens=L, do_sample=False, pad_token_id=PAD, eos_token_id=EOS,
              repetition_penalty=1.5)  # fmt: skip
    for beams in (1, 3):
        with torch.no_grad():
            embeds = hf.get_input_embeddings()(torch.tensor(ids))
            out = hf.generate(inputs_embeds=embeds, attention_mask=torch.tensor(mask),
                              num_beams=beams, **kw).numpy()  # fmt: skip
        want = np.pad(out, ((0, 0), (0, L - out.shape[1])), constant_values=PAD)
        got = gen.generate(ours, ids, mask, num_beams=beams, penalize_prompt=False, **kw)
        np.testing.assert_array_equal(got, want)
        with_prompt = gen.generate(ours, ids, mask, num_beams=beams, **kw)
        assert not np.array_equal(with_prompt, got)  # the setting matters on these prompts


@pytest.mark.slow
def test_batch_equals_one_by_one_and_stops_at_eos(llama):
    hf, ours = llama
    ids, mask = prompts([4, 12, 7, 1], seed=2)
    eos = frequent_token(hf, ids, mask)
    # (Sizes and settings shared with the tests above: the engine's compilations are reused.)
    beam = dict(num_beams=3, length_penalty=0.6, repetition_penalty=1.4, eos_token_id=[EOS, eos])
    for kw in (beam, dict(eos_token_id=eos)):
        batch = gen.generate(ours, ids, mask, max_new_tokens=L, pad_token_id=PAD, **kw)
        for i in range(len(ids)):
            one = gen.generate(ours, ids[i : i + 1], mask[i : i + 1], max_new_tokens=L,
                               pad_token_id=PAD, **kw)  # fmt: skip
            np.testing.assert_array_equal(one[0], batch[i])
    # Greedy: the stop token is kept, everything after it is padding.
    stopped = 0
    for row in batch:
        hit = np.flatnonzero(row == eos)
        if len(hit):
            stopped += 1
            assert (row[hit[0] + 1 :] == PAD).all()
    assert stopped >= 1
    # Right padding is accepted and re-packed to the left.
    right = np.stack([np.roll(r, -int((m == 0).sum())) for r, m in zip(ids, mask)])
    right_mask = np.stack([np.roll(m, -int((m == 0).sum())) for m in mask])
    np.testing.assert_array_equal(
        gen.generate(ours, right, right_mask, max_new_tokens=L, eos_token_id=eos, pad_token_id=PAD),
        batch,
    )


@pytest.mark.slow
def test_sampling_is_seeded(llama):
    _, ours = llama
    ids, mask = prompts([5, 8, 3, 11], seed=3)
    kw = dict(max_new_tokens=L, do_sample=True, temperature=1.5, top_p=0.9, eos_token_id=EOS)
    a = gen.generate(ours, ids, mask, seed=7, **kw)
    np.testing.assert_array_equal(a, gen.generate(ours, ids, mask, seed=7, **kw))
    assert not np.array_equal(a, gen.generate(ours, ids, mask, seed=8, **kw))
    # Row r's stream is keyed by (seed, r, step): it does not depend on the rows after it.
    np.testing.assert_array_equal(a[:2], gen.generate(ours, ids[:2], mask[:2], seed=7, **kw))
    # top_p -> 0 keeps only the most likely token: sampling becomes greedy.
    greedy = gen.generate(ours, ids, mask, max_new_tokens=L, eos_token_id=EOS)
    nucleus = gen.generate(ours, ids, mask, **{**kw, "top_p": 1e-6})
    np.testing.assert_array_equal(nucleus, greedy)


def test_no_recompilation_within_a_bucket(llama):
    _, ours = llama
    g = gen.Generator(ours)
    assert gen.bucket(9) == gen.bucket(10) == 10 and gen.bucket(17) == gen.bucket(20) == 20
    g(*prompts([17] * 9), max_new_tokens=4)
    warm = g.run._cache_size()
    for b, n, seed in [(10, 16, 1), (9, 18, 2), (10, 19, 3)]:  # prompts of 17-20 tokens (+BOS)
        lengths = np.random.default_rng(seed).integers(n - 3, n + 1, b)
        out = g(*prompts(lengths, seed=seed), max_new_tokens=4)
        assert out.shape == (b, 4)
    assert g.run._cache_size() == warm == 1


@pytest.mark.slow
def test_sharded_over_8_devices_equals_unsharded(llama, mesh8):
    _, ours = llama
    ids, mask = prompts([5, 11, 2], seed=4)
    for kw in (
        dict(eos_token_id=EOS),
        dict(num_beams=3, length_penalty=0.6, repetition_penalty=1.4, eos_token_id=[EOS, 5]),
    ):
        want = gen.generate(ours, ids, mask, max_new_tokens=L, **kw)
        got = gen.generate(ours, ids, mask, max_new_tokens=L, mesh=mesh8, **kw)
        np.testing.assert_array_equal(got, want)
    assert gen.generator_for(ours, mesh8).data == 8


# ---- LLaVA -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory):
    vision = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                  num_attention_heads=4, image_size=30, patch_size=6)  # fmt: skip
    cfg = transformers.LlavaConfig(
        vision_config=transformers.CLIPVisionConfig(**vision),
        text_config=transformers.LlamaConfig(**TEXT),
        image_token_index=IMG,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    torch.manual_seed(2)
    hf = transformers.LlavaForConditionalGeneration(cfg).eval()
    ours = _save_load(hf, tmp_path_factory, "llava", llava.from_pretrained)
    pixels = np.random.default_rng(5).standard_normal((2, 30, 30, 3)).astype(np.float32)
    return hf, ours, pixels, ours.config.num_image_tokens


def test_llava_greedy_equals_hf(tiny_llava):
    hf, ours, pixels, p = tiny_llava
    ids, mask = prompts([4, 9], seed=6, image_tokens=p)
    with torch.no_grad():
        out = hf.generate(
            torch.tensor(ids), attention_mask=torch.tensor(mask),
            pixel_values=torch.tensor(pixels.transpose(0, 3, 1, 2)), max_new_tokens=L,
            do_sample=False, num_beams=1, pad_token_id=PAD, eos_token_id=EOS,
        )  # fmt: skip
    want = out[:, ids.shape[1] :].numpy()
    want = np.pad(want, ((0, 0), (0, L - want.shape[1])), constant_values=PAD)
    got = gen.generate(ours, ids, mask, pixel_values=pixels, image_index=np.arange(2),
                       max_new_tokens=L, eos_token_id=EOS, pad_token_id=PAD)  # fmt: skip
    np.testing.assert_array_equal(got, want)


@pytest.mark.slow
def test_llava_image_sharing_equals_separate_runs(tiny_llava):
    _, ours, pixels, p = tiny_llava
    ids, mask = prompts([3, 7, 5, 6, 2, 8], seed=7, image_tokens=p)  # 2 images x 3 questions
    index = np.array([0, 0, 0, 1, 1, 1], np.int32)
    shared = gen.generate(ours, ids, mask, pixel_values=pixels, image_index=index,
                          max_new_tokens=L)  # fmt: skip
    # Each (image, question) on its own: every row gets its own copy of its image, encoded anew
    # (rows are independent: see test_batch_equals_one_by_one_and_stops_at_eos).
    separate = gen.generate(ours, ids, mask, pixel_values=pixels[index],
                            image_index=np.arange(len(index)), max_new_tokens=L)  # fmt: skip
    np.testing.assert_array_equal(shared, separate)
    one = gen.generate(ours, ids[4:5], mask[4:5], pixel_values=pixels[1:],
                       image_index=np.zeros(1), max_new_tokens=L)  # fmt: skip
    np.testing.assert_array_equal(one[0], shared[4])
    with pytest.raises(ValueError, match="image_index"):
        gen.generate(ours, ids, mask, pixel_values=pixels, image_index=index + 1, max_new_tokens=2)


def test_llava_without_image_index_is_one_image_per_row(tiny_llava):
    """transformers' convention: `pixel_values` alone means row i uses image i."""
    _, ours, pixels, p = tiny_llava
    ids, mask = prompts([4, 9], seed=6, image_tokens=p)
    kw = dict(max_new_tokens=L, eos_token_id=EOS, pad_token_id=PAD)
    got = gen.generate(ours, ids, mask, pixel_values=pixels, **kw)
    want = gen.generate(ours, ids, mask, pixel_values=pixels, image_index=np.arange(2), **kw)
    np.testing.assert_array_equal(got, want)
    swapped = gen.generate(ours, ids, mask, pixel_values=pixels[::-1], **kw)
    np.testing.assert_array_equal(
        swapped, gen.generate(ours, ids, mask, pixel_values=pixels, image_index=[1, 0], **kw)
    )
    with pytest.raises(ValueError, match="one image per row"):
        gen.generate(ours, ids[:1], mask[:1], pixel_values=pixels, max_new_tokens=2)
    with pytest.raises(ValueError, match="without pixel_values"):
        gen.generate(ours, ids, mask, image_index=np.arange(2), max_new_tokens=2)


def test_llava_pixels_already_on_the_mesh_stay_there(tiny_llava, mesh8):
    """An input pipeline's batch (a jax.Array split over `data`) is taken as it is, padded on
    device to the image bucket: the same tokens as the host array."""
    _, ours, pixels, p = tiny_llava
    ids, mask = prompts([4, 9, 6], seed=7, image_tokens=p)
    kw = dict(max_new_tokens=L, eos_token_id=EOS, pad_token_id=PAD, mesh=mesh8)
    index = np.array([1, 0, 1])
    want = gen.generate(ours, ids, mask, pixel_values=pixels, image_index=index, **kw)
    eight = np.concatenate([pixels, np.zeros((6, *pixels.shape[1:]), pixels.dtype)])
    # 8 images split over `data` (no padding); 2 images on one device (padded there to 8)
    for on_mesh in (jax.device_put(eight, parallel.batch_sharding(mesh8, 4)), jnp.asarray(pixels)):
        got = gen.generate(ours, ids, mask, pixel_values=on_mesh, image_index=index, **kw)
        np.testing.assert_array_equal(got, want)


def test_generate_text_with_chat_template(llama):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<unk>": 0, "<pad>": PAD, "</s>": EOS, "<s>": BOS} | {f"w{i}": i for i in range(4, V)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", bos_token="<s>"
    )
    tokenizer.chat_template = (
        "{% for m in messages %}<s> {{ m['content'] }} {% endfor %}"
        "{% if add_generation_prompt %}w5{% endif %}"
    )
    _, ours = llama
    texts = ["w4 w9 w17", "w30"]
    got = gen.generate_text(ours, tokenizer, texts, chat=True, max_new_tokens=L)
    ids = np.array([[BOS, 4, 9, 17, 5], [PAD, PAD, BOS, 30, 5]])  # the template's tokens
    mask = (ids != PAD).astype(np.int32)
    new = gen.generate(ours, ids, mask, max_new_tokens=L, eos_token_id=EOS, pad_token_id=PAD)
    assert got == tokenizer.batch_decode(new, skip_special_tokens=True)
    assert all(isinstance(s, str) and s for s in got)


@pytest.mark.slow
def test_shared_image_prefix_equals_separate_runs_and_hf(tiny_llava):
    """VDC's layout: one "<bos> <image> ..." prefix per image, a different question per row. The
    engine prefills each image's prefix once and copies its KV cache to the image's rows."""
    hf, ours, pixels, p = tiny_llava
    rng = np.random.default_rng(11)
    head = [BOS, *([IMG] * p), 5, 6]  # the shared prefix of every row
    qs = [rng.integers(4, IMG, size=n).tolist() for n in (3, 7, 5, 6, 2, 8)]
    rows = [head + q for q in qs]
    t = max(map(len, rows))
    ids = np.array([[PAD] * (t - len(r)) + r for r in rows], np.int32)
    mask = (np.arange(t)[None] >= (t - np.array([len(r) for r in rows]))[:, None]).astype(np.int32)
    index = np.array([0, 0, 0, 1, 1, 1], np.int32)
    assert gen.shared_prefix(ids, mask, index, ours.config.image_token_id) == len(head)
    for beams in (1, 3):
        kw = dict(max_new_tokens=L, num_beams=beams, eos_token_id=EOS, pad_token_id=PAD,
                  repetition_penalty=1.3)  # fmt: skip
        shared = gen.generate(ours, ids, mask, pixel_values=pixels, image_index=index, **kw)
        separate = gen.generate(ours, ids, mask, pixel_values=pixels[index],
                                image_index=np.arange(6), **kw)  # fmt: skip
        np.testing.assert_array_equal(shared, separate)
    with torch.no_grad():  # and the shared path equals HF, row by row
        for r in (0, 4):
            out = hf.generate(
                torch.tensor(ids[r : r + 1]), attention_mask=torch.tensor(mask[r : r + 1]),
                pixel_values=torch.tensor(pixels[index[r] : index[r] + 1].transpose(0, 3, 1, 2)),
                max_new_tokens=L, do_sample=False, num_beams=1, pad_token_id=PAD,
                eos_token_id=EOS, repetition_penalty=1.3,
            )  # fmt: skip
            want = out[0, ids.shape[1] :].numpy()
            got = gen.generate(ours, ids, mask, pixel_values=pixels, image_index=index,
                               max_new_tokens=L, eos_token_id=EOS, pad_token_id=PAD,
                               repetition_penalty=1.3)[r]  # fmt: skip
            np.testing.assert_array_equal(got[: len(want)], want)
