"""vl_jax.generate on InstructBLIP against transformers' `InstructBlipForConditionalGeneration`:
greedy and 5-beam search (repetition penalty 1.5, length penalty != 1) token for token, several
questions per image with the vision tower run once per distinct image, mixed prompt and
instruction lengths, LAVIS's call (inputs_embeds only, min length 1), 8 fake devices, and no
recompilation within a bucket. Tiny random checkpoints built with transformers, loaded with our
`instructblip.from_pretrained`."""

import numpy as np
import pytest
import torch
import transformers

from vl_jax import generate as gen
from vl_jax.models import instructblip

PAD, EOS, BOS, IMG = 1, 2, 3, 96
V, QV = 97, 50  # decoder vocabulary (the last id is <image>), Q-Former vocabulary
P, SIZE = 4, 16  # query tokens, image size (2 x 2 patches of 8 px)
L = 10
CONFIG = dict(
    vision_config=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                       num_attention_heads=4, image_size=SIZE, patch_size=8),
    qformer_config=dict(vocab_size=QV, hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=40, max_position_embeddings=32,
                        cross_attention_frequency=1, pad_token_id=0),
    text_config=dict(model_type="llama", vocab_size=V, hidden_size=32, intermediate_size=64,
                     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                     max_position_embeddings=256, pad_token_id=PAD, eos_token_id=EOS,
                     bos_token_id=BOS),
    num_query_tokens=P, image_token_index=IMG,
)  # fmt: skip
# A second shape: other widths, an MHA decoder, a gelu_new tower, 9 patches, cross-attention
# every 2nd Q-Former layer (0, 2), 3 queries; <image> is again the decoder's last id.
V2, QV2, P2, SIZE2 = 70, 40, 3, 18
CONFIG2 = dict(
    vision_config=dict(hidden_size=24, intermediate_size=40, num_hidden_layers=3,
                       num_attention_heads=3, image_size=SIZE2, patch_size=6,
                       hidden_act="gelu_new"),
    qformer_config=dict(vocab_size=QV2, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                        intermediate_size=48, max_position_embeddings=16,
                        cross_attention_frequency=2, pad_token_id=0),
    text_config=dict(model_type="llama", vocab_size=V2, hidden_size=24, intermediate_size=36,
                     num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=256,
                     pad_token_id=PAD, eos_token_id=EOS, bos_token_id=BOS),
    num_query_tokens=P2, image_token_index=V2 - 1,
)  # fmt: skip


def build(config: dict, directory):
    """(HF model, ours, pixels [3, S, S, 3]): the same random weights on both sides."""
    torch.manual_seed(0)
    hf = transformers.InstructBlipForConditionalGeneration(
        transformers.InstructBlipConfig(**config)
    ).eval()
    with torch.no_grad():
        for name, p in hf.named_parameters():
            if "norm" in name or name.endswith("bias") or name == "query_tokens":
                p.add_(0.1 * torch.randn_like(p))  # a swapped key would show
            if "embed_tokens" in name or "lm_head" in name:
                p.normal_(0, 0.3)  # spread-out logits: fp32 argmax / top-k ties are unlikely
    hf.save_pretrained(directory)
    ours = instructblip.from_pretrained(str(directory))
    s = config["vision_config"]["image_size"]
    pixels = np.random.default_rng(5).standard_normal((3, s, s, 3)).astype(np.float32)
    return hf, ours, pixels


@pytest.fixture(scope="module")
def blip(tmp_path_factory):
    """`build(CONFIG)`: (HF model, ours, pixels [3, 16, 16, 3])."""
    return build(CONFIG, tmp_path_factory.mktemp("instructblip"))


@pytest.fixture(scope="module")
def blip2(tmp_path_factory):
    """`build(CONFIG2)`: (HF model, ours, pixels [3, 18, 18, 3])."""
    return build(CONFIG2, tmp_path_factory.mktemp("instructblip2"))


def requests(lengths, q_lengths, seed=0, p=P, img=IMG, qv=QV):
    """As InstructBlipProcessor lays rows out: p image tokens (id `img`), the left padding,
    BOS + text (ids, mask [B, T]); the Q-Former instructions (ids < `qv`) right-padded
    (q_ids, q_mask [B, Qt])."""
    rng = np.random.default_rng(seed)
    t, qt = max(lengths) + 1, max(q_lengths)
    ids = np.full((len(lengths), p + t), PAD, np.int64)
    mask = np.zeros_like(ids)
    ids[:, :p], mask[:, :p] = img, 1
    q_ids = np.zeros((len(lengths), qt), np.int64)
    q_mask = np.zeros_like(q_ids)
    for r, (n, q) in enumerate(zip(lengths, q_lengths, strict=True)):
        ids[r, p + t - n - 1 :] = [BOS, *rng.integers(4, img, n)]
        mask[r, p + t - n - 1 :] = 1
        q_ids[r, :q], q_mask[r, :q] = rng.integers(1, qv, q), 1
    return ids, mask, q_ids, q_mask


def hf_generate(hf, pixels, ids, mask, q_ids, q_mask, n=L, **kw):
    """transformers' new tokens [B, n] (one image per row, as it takes them)."""
    t = lambda a: torch.from_numpy(np.asarray(a)).long()
    with torch.no_grad():
        out = hf.generate(
            pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2), qformer_input_ids=t(q_ids),
            qformer_attention_mask=t(q_mask), input_ids=t(ids), attention_mask=t(mask),
            max_new_tokens=n, do_sample=False, pad_token_id=PAD, **kw,
        ).numpy()  # fmt: skip
    new = out[:, ids.shape[1] :]
    return np.pad(new, ((0, 0), (0, n - new.shape[1])), constant_values=PAD)


# 3 images x 2-3 questions; prompts of 2-11 tokens, instructions of 3-9.
INDEX = np.array([0, 0, 0, 1, 1, 2, 2], np.int32)
LENGTHS, Q_LENGTHS = [5, 11, 2, 8, 3, 6, 9], [3, 9, 5, 4, 7, 6, 8]


@pytest.fixture(scope="module")
def vision_calls(blip):
    """Records the batch size of every `encode_images` trace (the vision tower's work)."""
    calls = []
    cls = type(blip[1])
    original = cls.encode_images

    def counting(self, pixel_values):
        calls.append(pixel_values.shape[0])
        return original(self, pixel_values)

    cls.encode_images = counting
    yield calls
    cls.encode_images = original


@pytest.mark.parametrize(
    "kw",
    [
        dict(),
        pytest.param(
            dict(num_beams=5, repetition_penalty=1.5, length_penalty=1.3), marks=pytest.mark.slow
        ),
    ],
    ids=["greedy", "beam5"],
)
def test_equals_hf_several_questions_per_image(blip, vision_calls, kw):
    hf, ours, pixels = blip
    ids, mask, q_ids, q_mask = requests(LENGTHS, Q_LENGTHS, seed=1)
    want = hf_generate(hf, pixels[INDEX], ids, mask, q_ids, q_mask, eos_token_id=EOS, **kw)
    engine = gen.Generator(ours)  # a fresh engine: its trace shows the vision tower's batch
    got = engine(ids, mask, pixel_values=pixels, image_index=INDEX, qformer_input_ids=q_ids,
                 qformer_attention_mask=q_mask, max_new_tokens=L, eos_token_id=EOS,
                 pad_token_id=PAD, **kw)  # fmt: skip
    np.testing.assert_array_equal(got, want)
    assert vision_calls[-1] == 3  # the 3 distinct images, not the 7 rows
    assert len(set(map(tuple, got))) > 1  # the rows differ: per-row queries are used


@pytest.mark.slow
@pytest.mark.parametrize(
    "kw", [dict(), dict(num_beams=5, repetition_penalty=1.5)], ids=["greedy", "beam5"]
)
def test_second_shape_equals_hf(blip2, kw):
    """`CONFIG2` (cross-attention every 2nd layer, 3 queries, MHA decoder): the same request
    kinds, token for token, 5 beams with the paper's repetition penalty."""
    hf, ours, pixels = blip2
    ids, mask, q_ids, q_mask = requests(LENGTHS, Q_LENGTHS, seed=7, p=P2, img=V2 - 1, qv=QV2)
    want = hf_generate(hf, pixels[INDEX], ids, mask, q_ids, q_mask, eos_token_id=EOS, **kw)
    got = gen.generate(ours, ids, mask, pixel_values=pixels, image_index=INDEX,
                       qformer_input_ids=q_ids, qformer_attention_mask=q_mask, max_new_tokens=L,
                       eos_token_id=EOS, pad_token_id=PAD, **kw)  # fmt: skip
    np.testing.assert_array_equal(got, want)
    assert len(set(map(tuple, got))) > 1


def test_request_checks(blip):
    _, ours, pixels = blip
    ids, mask, q_ids, _ = requests([3, 4], [2, 3])
    with pytest.raises(ValueError, match="needs qformer_input_ids"):
        gen.generate(ours, ids, mask, pixel_values=pixels[:2], max_new_tokens=2)
    with pytest.raises(ValueError, match=r"need \[B=2, Qt\]"):
        gen.generate(ours, ids, mask, pixel_values=pixels[:2], qformer_input_ids=q_ids[:1],
                     max_new_tokens=2)  # fmt: skip
    with pytest.raises(ValueError, match="query_features"):
        gen.generate(ours.language_model, ids, mask, qformer_input_ids=q_ids, max_new_tokens=2)


@pytest.mark.slow
def test_lavis_call_equals_hf_inputs_embeds(blip):
    """LAVIS's `blip2_vicuna_instruct.generate`, one (image, question) per call: the language
    model's `generate` gets inputs_embeds only ([query outputs; prompt embeddings]), so the
    repetition penalty sees only new tokens, and min_length=1 bans EOS at the first step.
    Ours: penalize_prompt=False, min_new_tokens=1, the whole batch in one call."""
    hf, ours, pixels = blip
    ids, mask, q_ids, q_mask = requests(LENGTHS, Q_LENGTHS, seed=2)
    kw = dict(num_beams=5, repetition_penalty=1.5, length_penalty=1.0, eos_token_id=EOS)
    got = gen.generate(ours, ids, mask, pixel_values=pixels, image_index=INDEX,
                       qformer_input_ids=q_ids, qformer_attention_mask=q_mask, max_new_tokens=L,
                       min_new_tokens=1, penalize_prompt=False, pad_token_id=PAD, **kw)  # fmt: skip
    t = lambda a: torch.from_numpy(np.asarray(a)).long()
    for r in range(len(ids)):
        real, q_real = mask[r].astype(bool), q_mask[r].astype(bool)
        with torch.no_grad():
            feats = hf.get_image_features(
                torch.from_numpy(pixels[INDEX[r] : INDEX[r] + 1]).permute(0, 3, 1, 2),
                qformer_input_ids=t(q_ids[r : r + 1, q_real]),
                qformer_attention_mask=t(q_mask[r : r + 1, q_real]),
            ).pooler_output
            prompt = hf.get_input_embeddings()(t(ids[r : r + 1, real][:, P:]))
            out = hf.language_model.generate(
                inputs_embeds=torch.cat([feats, prompt], 1),
                attention_mask=torch.ones(1, int(real.sum()), dtype=torch.long),
                max_new_tokens=L, min_new_tokens=1, do_sample=False, pad_token_id=PAD, **kw,
            ).numpy()[0]  # fmt: skip
        np.testing.assert_array_equal(got[r, : len(out)], out)
        assert (got[r, len(out) :] == PAD).all()


def ask(engine, request, pixels, index, **kw):
    """`engine` on a `requests()` tuple."""
    ids, mask, q_ids, q_mask = request
    return engine(ids, mask, pixel_values=pixels, image_index=index, qformer_input_ids=q_ids,
                  qformer_attention_mask=q_mask, **kw)  # fmt: skip


@pytest.mark.slow
def test_no_recompilation_within_a_bucket(blip):
    _, ours, pixels = blip
    g = gen.Generator(ours)
    kw = dict(max_new_tokens=3, eos_token_id=EOS, pad_token_id=PAD)
    ask(g, requests([9] * 9, [16] * 9), pixels, np.arange(9) % 3, **kw)
    warm = g.run._cache_size()
    rng = np.random.default_rng(3)
    # 9-10 rows (batch bucket 10), prompts of 10-12 tokens + P (bucket 16), instructions of
    # 13-16 (bucket 16).
    for b, seed in [(10, 4), (9, 5)]:
        lengths, q_lengths = rng.integers(9, 12, b), rng.integers(13, 17, b)
        index = rng.integers(0, 3, b).astype(np.int32)
        out = ask(g, requests(lengths, q_lengths, seed=seed), pixels, index, **kw)
        assert out.shape == (b, 3)
    assert g.run._cache_size() == warm == 1


@pytest.mark.slow
def test_sharded_over_8_devices_equals_one(blip, mesh8):
    _, ours, pixels = blip
    ids, mask, q_ids, q_mask = requests(LENGTHS, Q_LENGTHS, seed=6)
    kw = dict(max_new_tokens=L, num_beams=5, repetition_penalty=1.5, min_new_tokens=1,
              eos_token_id=EOS, pad_token_id=PAD)  # fmt: skip
    one = ask(gen.Generator(ours), (ids, mask, q_ids, q_mask), pixels, INDEX, **kw)
    eight = ask(gen.Generator(ours, mesh8), (ids, mask, q_ids, q_mask), pixels, INDEX, **kw)
    np.testing.assert_array_equal(eight, one)
