"""Parity of our LLaVA (CLIP or SigLIP tower + Llama/Qwen2 decoder) and SigLIP tower with
transformers on tiny random checkpoints, in every checkpoint key layout we read.

Tolerance: fp32, atol 1e-4 on logits of real tokens and on hidden states (observed ~1e-6).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from jax.sharding import PartitionSpec as P

from vl_jax import parallel
from vl_jax.checkpoints import CheckpointError, SafetensorsReader, save_safetensors
from vl_jax.models import get_model_module, llava, siglip

ATOL = 1e-4
CLIP_VISION = dict(model_type="clip_vision_model", hidden_size=32, intermediate_size=37,
                   num_hidden_layers=3, num_attention_heads=4, image_size=30, patch_size=6,
                   hidden_act="quick_gelu")  # fmt: skip
# As llava-hf/llava-interleave-qwen-0.5b-hf: SigLIP without its pooling head, last layer, "full".
SIGLIP_VISION = dict(model_type="siglip_vision_model", hidden_size=24, intermediate_size=40,
                     num_hidden_layers=2, num_attention_heads=3, image_size=24, patch_size=6,
                     vision_use_head=False)  # fmt: skip
LLAMA = dict(model_type="llama", vocab_size=99, hidden_size=32, intermediate_size=40,
             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)  # fmt: skip
QWEN2 = dict(model_type="qwen2", vocab_size=101, hidden_size=48, intermediate_size=40,
             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             tie_word_embeddings=True)  # fmt: skip

CONFIGS = {
    # llava-1.5: CLIP penultimate layer, class token dropped.
    "clip_llama": dict(vision_config=CLIP_VISION, text_config=LLAMA, image_token_index=98),
    "siglip_qwen2": dict(
        vision_config=SIGLIP_VISION, text_config=QWEN2, image_token_index=100,
        vision_feature_layer=-1, vision_feature_select_strategy="full",
    ),
    # Newer configs: several feature layers concatenated; also no projector bias, other act.
    "clip_multilayer": dict(
        vision_config=CLIP_VISION, text_config=LLAMA, image_token_index=98,
        vision_feature_layer=[-3, -1], vision_feature_select_strategy="full",
        multimodal_projector_bias=False, projector_hidden_act="gelu_pytorch_tanh",
    ),
}  # fmt: skip

_call = jax.jit(lambda m, ids, px, mask: m(ids, px, mask))


def make_hf(name: str, seed: int = 0):
    torch.manual_seed(seed)
    model = transformers.LlavaForConditionalGeneration(
        transformers.LlavaConfig(**CONFIGS[name])
    ).eval()
    with torch.no_grad():  # non-trivial norms and biases, so that a swapped key would show
        for pname, p in model.named_parameters():
            if "norm" in pname or pname.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """name -> (HF model, saved directory), built on first use."""
    cache = {}

    def get(name):
        if name not in cache:
            ref = make_hf(name)
            path = tmp_path_factory.mktemp(name)
            ref.save_pretrained(path)
            cache[name] = ref, str(path)
        return cache[name]

    return get


def prompts(cfg: llava.LLaVAConfig, rows: int = 3, seed: int = 1):
    """Right-padded ids: some text, P image tokens, more text (as the processor expands them)."""
    p, vocab = cfg.num_image_tokens, cfg.text.vocab_size
    rng = np.random.RandomState(seed)
    ids = rng.randint(0, vocab - 2, size=(rows, p + 9)).astype(np.int32)
    mask = np.ones_like(ids)
    for row in range(rows):
        start = 1 + row % 3
        ids[row, start : start + p] = cfg.image_token_id
        mask[row, ids.shape[1] - 2 * row :] = 0  # row 0 full length
    return ids, mask


def images(cfg: llava.LLaVAConfig, n: int, seed: int = 2):
    s = cfg.vision.image_size
    return np.random.RandomState(seed).randn(n, s, s, 3).astype(np.float32)


def hf_logits(ref, ids, pixels, mask):
    with torch.no_grad():
        return ref(
            input_ids=torch.from_numpy(ids).long(),
            pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2),
            attention_mask=torch.from_numpy(mask).long(),
        ).logits.numpy()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_logits_match_hf(checkpoints, name):
    ref, path = checkpoints(name)
    # transformers 5 save_pretrained layout (see test_key_layouts for the others)
    assert llava.detect_layout(SafetensorsReader.from_dir(path)) == SAVED
    model = llava.from_pretrained(path)
    assert model.config.vision_type == name.split("_")[0]
    assert (model.language_model.lm_head is None) == (name == "siglip_qwen2")
    ids, mask = prompts(model.config)
    pixels = images(model.config, len(ids))
    got = np.asarray(_call(model, ids, pixels, mask))
    real = mask.astype(bool)
    np.testing.assert_allclose(got[real], hf_logits(ref, ids, pixels, mask)[real], atol=ATOL)


@jax.jit
def _shared(model, ids, pixels, image_index, mask):
    """The engine's path: encode each image once, splice into rows, run the decoder."""
    x = model.embed_inputs(ids, model.encode_images(pixels), image_index)
    positions = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
    hidden, _ = model.language_model.forward(x, positions, mask)
    return x, model.language_model.logits(hidden)


@pytest.mark.parametrize("name", ["clip_llama", "siglip_qwen2"])
def test_embed_inputs_shares_images_across_rows(checkpoints, name):
    ref, path = checkpoints(name)
    model = llava.from_pretrained(path)
    cfg = model.config
    ids, mask = prompts(cfg, rows=5)
    ids[4] = np.where(ids[4] == cfg.image_token_id, 7, ids[4])  # a text-only row
    image_index = np.array([1, 0, 0, 1, 0], np.int32)
    pixels = images(cfg, 2)
    x, got = _shared(model, ids, pixels, image_index, mask.astype(bool))
    # HF with the images repeated per row (rows with images only).
    want = hf_logits(ref, ids[:4], pixels[image_index[:4]], mask[:4])
    real = mask[:4].astype(bool)
    np.testing.assert_allclose(np.asarray(got)[:4][real], want[real], atol=ATOL)
    np.testing.assert_array_equal(np.asarray(x[4]), np.asarray(model.language_model.embed(ids[4])))


def test_image_token_count_is_checked(checkpoints):
    _, path = checkpoints("clip_llama")
    model = llava.from_pretrained(path)
    cfg = model.config
    p = cfg.num_image_tokens
    ids, mask = prompts(cfg)
    ids[1, np.argmax(ids[1] == cfg.image_token_id)] = 5
    with pytest.raises(
        ValueError, match=rf"row 1 of input_ids has {p - 1} image tokens .*expected {p}"
    ):
        model(ids, images(cfg, 3), mask)
    with pytest.raises(ValueError, match=rf"row 1 .* {p - 1} image tokens"):
        model.embed_inputs(ids, jnp.zeros((2, p, cfg.text.hidden_size)), np.zeros(3, np.int32))
    with pytest.raises(ValueError, match=f"{p + 1} tokens per image, expected {p}"):
        model.embed_inputs(ids, jnp.zeros((2, p + 1, cfg.text.hidden_size)))
    with pytest.raises(ValueError, match=r"\[B, 30, 30, 3\] \(NHWC\)"):
        model.encode_images(np.zeros((1, 3, 30, 30), np.float32))  # NCHW by mistake


# ---- checkpoint layouts and errors -------------------------------------------------------------


def _rewrite(src: str, dst, edit) -> str:
    """Copies a checkpoint directory with its tensors passed through `edit(dict) -> dict`."""
    dst.mkdir()
    reader = SafetensorsReader.from_dir(src)
    save_safetensors(edit({k: np.array(reader[k]) for k in reader}), str(dst / "model.safetensors"))
    with open(f"{src}/config.json") as f:
        (dst / "config.json").write_text(f.read())
    return str(dst)


def _to_hub_layout(tensors: dict) -> dict:
    """transformers 5 save_pretrained -> the hub's llava-hf layout (vision_tower.vision_model.*)."""
    rename = lambda k: k.replace("vision_tower.", "vision_tower.vision_model.", 1)
    return {rename(k): v for k, v in tensors.items()}


# llava-hf/* on the hub (transformers 4 era).
HUB = llava.Layout(
    "language_model.model.",
    "language_model.lm_head.weight",
    "vision_tower.vision_model.",
    "multi_modal_projector.",
)
# transformers 5 save_pretrained: its CLIP/SigLIP vision models lost the `vision_model` level.
SAVED = llava.Layout(
    "language_model.model.",
    "language_model.lm_head.weight",
    "vision_tower.",
    "multi_modal_projector.",
)
# transformers 5 module names (a plain safetensors dump of `state_dict()`).
STATE_DICT = llava.Layout(
    "model.language_model.", "lm_head.weight", "model.vision_tower.", "model.multi_modal_projector."
)


@pytest.mark.parametrize(
    "name, layout",
    [("clip_llama", "hub"), ("siglip_qwen2", "hub"), ("siglip_qwen2", "state_dict")],
)
def test_key_layouts(checkpoints, tmp_path, name, layout):
    ref, path = checkpoints(name)
    if layout == "hub":
        path, want = _rewrite(path, tmp_path / "hub", _to_hub_layout), HUB
    else:  # includes the tied lm_head.weight, which is ignored
        sd = {k: v.numpy() for k, v in ref.state_dict().items()}
        path, want = _rewrite(path, tmp_path / "sd", lambda _: sd), STATE_DICT
    assert llava.detect_layout(SafetensorsReader.from_dir(path)) == want
    model = llava.from_pretrained(path)
    ids, mask = prompts(model.config)
    pixels = images(model.config, len(ids))
    expected = hf_logits(ref, ids, pixels, mask)
    real = mask.astype(bool)
    got = np.asarray(_call(model, ids, pixels, mask))
    np.testing.assert_allclose(got[real], expected[real], atol=ATOL)
    if layout == "hub":  # transformers itself reads the layout we emulate, to the same model
        again = transformers.LlavaForConditionalGeneration.from_pretrained(path).eval()
        np.testing.assert_allclose(hf_logits(again, ids, pixels, mask), expected, atol=1e-6)


def test_checkpoint_errors_are_named(checkpoints, tmp_path):
    _, path = checkpoints("clip_llama")
    key = "vision_tower.vision_model.encoder.layers.2.mlp.fc1.bias"

    def drop(t):
        t = _to_hub_layout(t)
        del t[key]
        return t

    with pytest.raises(CheckpointError, match=f"missing key '{key}'"):
        llava.from_pretrained(_rewrite(path, tmp_path / "missing", drop))
    extra = lambda t: {**t, "multi_modal_projector.linear_3.weight": np.zeros(3, np.float32)}
    with pytest.raises(CheckpointError, match=r"unexpected key 'multi_modal_projector\.linear_3"):
        llava.from_pretrained(_rewrite(path, tmp_path / "extra", extra))
    k = "multi_modal_projector.linear_1.weight"
    shrink = lambda t: {**t, k: t[k][:, :-1]}
    with pytest.raises(CheckpointError, match=rf"'{k}' has shape \(32, 31\), expected \(32, 32\)"):
        llava.from_pretrained(_rewrite(path, tmp_path / "shape", shrink))


@pytest.mark.parametrize(
    "config, message",
    [
        (dict(CONFIGS["clip_llama"], vision_config=dict(model_type="vit")), "tower 'vit'"),
        (dict(CONFIGS["clip_llama"], text_config=dict(model_type="gemma")), "architecture 'gemma'"),
        (None, "'llama' is not 'llava'"),
    ],
)
def test_unsupported_configs_are_named(tmp_path, config, message):
    if config is None:
        transformers.LlamaConfig().save_pretrained(tmp_path)
    else:
        transformers.LlavaConfig(**config).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=message):
        llava.from_pretrained(str(tmp_path))


def test_registry():
    assert get_model_module("llava") is llava


# ---- SigLIP ------------------------------------------------------------------------------------


@pytest.mark.parametrize("prefixed", [False, True])
def test_siglip_hidden_states_match_hf(tmp_path, prefixed):
    """SiglipVisionModel with its pooling head (ignored), as transformers 5 saves it (no prefix) and
    as hub checkpoints store it (`vision_model.*`)."""
    cfg = transformers.SiglipVisionConfig(
        **{k: v for k, v in SIGLIP_VISION.items() if k not in ("model_type", "vision_use_head")}
    )
    torch.manual_seed(0)
    ref = transformers.SiglipVisionModel(cfg).eval()
    with torch.no_grad():
        for pname, p in ref.named_parameters():
            if "norm" in pname or pname.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    ref.save_pretrained(tmp_path / "saved")
    path = str(tmp_path / "saved")
    if prefixed:
        path = _rewrite(
            path, tmp_path / "hub", lambda t: {f"vision_model.{k}": v for k, v in t.items()}
        )
    assert any(k.startswith("head.") or ".head." in k for k in SafetensorsReader.from_dir(path))
    tower = siglip.from_pretrained(path)
    pixels = np.random.RandomState(3).randn(2, 24, 24, 3).astype(np.float32)
    with torch.no_grad():
        out = ref(
            pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2), output_hidden_states=True
        )
    n = len(out.hidden_states)
    got = jax.jit(lambda t, x: [t.hidden_states(x, num_layers=i) for i in range(n)] + [t(x)])(
        tower, pixels
    )
    for i, want in enumerate([*out.hidden_states, out.last_hidden_state]):
        np.testing.assert_allclose(np.asarray(got[i]), want.numpy(), atol=ATOL, err_msg=f"#{i}")


def test_processor_end_to_end(checkpoints, tmp_path):
    """load_processor on a checkpoint directory with processor files (built offline: word-level
    tokenizer, CLIP image processor); its NCHW pixel_values, transposed, give HF's logits."""
    import PIL.Image
    import tokenizers
    from tokenizers import models, pre_tokenizers

    ref, path = checkpoints("clip_llama")
    words = ["<unk>", "<pad>", "USER:", "ASSISTANT:", "what", "is", "this", "?"]
    tok = tokenizers.Tokenizer(
        models.WordLevel({w: i for i, w in enumerate(words)} | {"<image>": 98}, unk_token="<unk>")
    )
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    image_processor = transformers.CLIPImageProcessorPil(
        size={"shortest_edge": 30}, crop_size={"height": 30, "width": 30}
    )
    transformers.LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=6,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's class token
    ).save_pretrained(path)
    processor = llava.load_processor(path)
    rng = np.random.RandomState(0)
    photos = [PIL.Image.fromarray(rng.randint(0, 255, (40, 50, 3), np.uint8)) for _ in range(2)]
    text = ["USER: <image> what is this ? ASSISTANT:", "USER: <image> ? ASSISTANT:"]
    inputs = processor(images=photos, text=text, return_tensors="np", padding=True)
    model = llava.from_pretrained(path)
    assert ((inputs["input_ids"] == 98).sum(1) == model.config.num_image_tokens).all()
    pixels = inputs["pixel_values"].transpose(0, 2, 3, 1)  # NCHW -> NHWC
    ids, mask = inputs["input_ids"].astype(np.int32), inputs["attention_mask"].astype(np.int32)
    llava.check_image_tokens(ids, model.config, allow_empty=False)  # what eager calls check
    got = np.asarray(_call(model, ids, pixels, mask))
    real = mask.astype(bool)
    np.testing.assert_allclose(got[real], hf_logits(ref, ids, pixels, mask)[real], atol=ATOL)


def test_tensor_parallel_load_matches_hf(checkpoints, mesh_4x2):
    """Parameters placed on a (data=4, model=2) mesh while loading: heads of the decoder are split
    over `model`, the batch over `data`, and the logits are unchanged."""
    ref, path = checkpoints("clip_llama")
    model = llava.from_pretrained(path, shardings=lambda s: parallel.param_shardings(s, mesh_4x2))
    q = model.language_model.layers[0].attn.q[...]
    assert q.sharding.spec == P(None, parallel.MODEL, None)
    assert {s.data.shape[1] for s in q.addressable_shards} == {LLAMA["num_attention_heads"] // 2}
    ids, mask = prompts(model.config, rows=4)
    pixels = images(model.config, len(ids))
    put = lambda x: jax.device_put(x, parallel.batch_sharding(mesh_4x2, x.ndim))
    got = np.asarray(_call(model, put(ids), put(pixels), put(mask)))
    real = mask.astype(bool)
    np.testing.assert_allclose(got[real], hf_logits(ref, ids, pixels, mask)[real], atol=ATOL)


def test_tiny_writer_loads_in_transformers_with_the_same_logits(tmp_path):
    """vl_jax.models.tiny.write_llava (no torch) writes a checkpoint + processor that
    transformers loads; its logits equal ours on the processor's own inputs."""
    from PIL import Image

    from vl_jax.models import tiny

    path = tiny.write_llava(str(tmp_path / "llava"), seed=3)
    ref = transformers.LlavaForConditionalGeneration.from_pretrained(path).eval()
    model, processor = llava.from_pretrained(path), llava.load_processor(path)
    rng = np.random.RandomState(0)
    pics = [Image.fromarray(rng.randint(0, 256, (40, 50 + 7 * k, 3), np.uint8)) for k in range(2)]
    text = ["USER: <image>\nIs there a circle in the image? ASSISTANT:",
            "USER: <image>\nDescribe the image. ASSISTANT: a red square"]  # fmt: skip
    inputs = processor(images=pics, text=text, padding=True, return_tensors="np")
    ids, mask = inputs["input_ids"].astype(np.int32), inputs["attention_mask"].astype(np.int32)
    pixels = inputs["pixel_values"].astype(np.float32).transpose(0, 2, 3, 1)
    got = np.asarray(_call(model, ids, pixels, mask))
    real = mask.astype(bool)
    np.testing.assert_allclose(got[real], hf_logits(ref, ids, pixels, mask)[real], atol=ATOL)
    assert tiny.write_llava(path, seed=4) == path  # a complete checkpoint is kept
    assert llava.from_pretrained(path).config == model.config
