"""Parity of our InstructBLIP (EVA-style vision tower, Q-Former, Vicuna/Llama decoder) with
transformers' `InstructBlipForConditionalGeneration` on tiny random checkpoints.

Tolerance: fp32, atol 1e-4 on logits of real tokens and on Q-Former features (observed ~1e-6).
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers

from vl_jax import parallel
from vl_jax.checkpoints import CheckpointError, SafetensorsReader, save_safetensors
from vl_jax.errors import ConfigError, UserError
from vl_jax.models import get_model_module, instructblip

ATOL = 1e-4

CONFIGS = {
    # Cross-attention in every Q-Former layer, a GQA decoder; saved fp32 in several shards.
    "gqa_sharded": dict(
        vision_config=dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                           num_attention_heads=4, image_size=16, patch_size=8),
        qformer_config=dict(vocab_size=50, hidden_size=24, num_hidden_layers=2,
                            num_attention_heads=2, intermediate_size=40,
                            max_position_embeddings=32, cross_attention_frequency=1),
        text_config=dict(model_type="llama", vocab_size=60, hidden_size=32, intermediate_size=40,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
        num_query_tokens=4, image_token_index=59,
    ),
    # Cross-attention every 2nd layer (0, 2), other widths and query count; stored bfloat16.
    "mha_bf16": dict(
        vision_config=dict(hidden_size=24, intermediate_size=40, num_hidden_layers=3,
                           num_attention_heads=3, image_size=18, patch_size=6,
                           hidden_act="gelu_new"),
        qformer_config=dict(vocab_size=40, hidden_size=32, num_hidden_layers=3,
                            num_attention_heads=4, intermediate_size=48,
                            max_position_embeddings=16, cross_attention_frequency=2),
        text_config=dict(model_type="llama", vocab_size=70, hidden_size=24, intermediate_size=36,
                         num_hidden_layers=2, num_attention_heads=2),
        num_query_tokens=3, image_token_index=69,
    ),
}  # fmt: skip

_call = jax.jit(lambda m, ids, px, qids, qmask, mask: m(ids, px, qids, qmask, mask))


def make_hf(name: str, seed: int = 0):
    torch.manual_seed(seed)
    config = transformers.InstructBlipConfig(**CONFIGS[name])
    model = transformers.InstructBlipForConditionalGeneration(config).eval()
    with torch.no_grad():  # non-trivial norms, biases and queries, so that a swapped key shows
        for pname, p in model.named_parameters():
            if "norm" in pname or pname.endswith("bias") or pname == "query_tokens":
                p.add_(0.1 * torch.randn_like(p))
        c = config.vision_config.hidden_size
        for layer in model.vision_model.encoder.layers:  # k bias: zero, as checkpoints hold it
            layer.self_attn.qkv.bias[c : 2 * c] = 0
    return model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """name -> (HF model with the stored weights, saved directory), built on first use."""
    cache = {}

    def get(name):
        if name not in cache:
            ref = make_hf(name)
            path = str(tmp_path_factory.mktemp(name))
            if name == "mha_bf16":
                ref.to(torch.bfloat16).save_pretrained(path)
                ref = transformers.InstructBlipForConditionalGeneration.from_pretrained(
                    path, dtype=torch.float32
                ).eval()
            else:
                ref.save_pretrained(path, max_shard_size="40KB")
            cache[name] = ref, path
        return cache[name]

    return get


def inputs(cfg: instructblip.InstructBLIPConfig, rows: int = 3, seed: int = 1):
    """As the processor lays them out: P image tokens first, then the left-padded prompt (rows of
    different lengths); right-padded Q-Former instructions of different lengths; images."""
    p, vocab = cfg.num_image_tokens, cfg.text.vocab_size
    rng = np.random.RandomState(seed)
    ids = rng.randint(1, vocab - 1, size=(rows, p + 8)).astype(np.int32)
    mask = np.ones_like(ids)
    ids[:, :p] = cfg.image_token_id
    for row in range(rows):
        mask[row, p : p + 2 * row] = 0
        ids[row, p : p + 2 * row] = 0
    qids = rng.randint(1, cfg.qformer.vocab_size, size=(rows, 7)).astype(np.int32)
    qmask = np.ones_like(qids)
    for row in range(rows):
        qmask[row, 7 - 2 * row :] = 0
        qids[row, 7 - 2 * row :] = 0
    s = cfg.vision.image_size
    pixels = rng.randn(rows, s, s, 3).astype(np.float32)
    return ids, pixels, qids, qmask, mask


def hf_logits(ref, ids, pixels, qids, qmask, mask):
    t = lambda a: torch.from_numpy(np.asarray(a)).long()
    with torch.no_grad():
        return ref(
            input_ids=t(ids),
            pixel_values=torch.from_numpy(pixels).permute(0, 3, 1, 2),
            qformer_input_ids=t(qids),
            qformer_attention_mask=t(qmask),
            attention_mask=t(mask),
        ).logits.numpy()


def check_logits(model, ref, batch):
    got = np.asarray(_call(model, *batch))
    real = batch[-1].astype(bool)
    np.testing.assert_allclose(got[real], hf_logits(ref, *batch)[real], atol=ATOL)
    return got


@pytest.mark.slow  # its compile is the fast tier's in test_separate_q_v_bias_keys
def test_logits_match_hf_sharded_fp32(checkpoints):
    ref, path = checkpoints("gqa_sharded")
    assert os.path.exists(f"{path}/model.safetensors.index.json")  # read across shards
    model = instructblip.from_pretrained(path)
    assert model.config.num_image_tokens == 4 and model.config.image_token_id == 59
    check_logits(model, ref, inputs(model.config))


@pytest.mark.slow
def test_logits_match_hf_bf16_stored(checkpoints):
    ref, path = checkpoints("mha_bf16")
    model = instructblip.from_pretrained(path)  # bf16 on disk -> fp32 compute
    assert model.language_model.layers[0].attn.q[...].dtype == jnp.float32
    batch = inputs(model.config, rows=4)
    want = check_logits(model, ref, batch)
    # bfloat16 compute (the accelerator setting) stays close to the float32 logits.
    half = instructblip.from_pretrained(path, dtype=jnp.bfloat16)
    assert half.query_tokens[...].dtype == jnp.float32  # kept float32, as HF keeps them
    got = np.asarray(_call(half, *batch))
    real = batch[-1].astype(bool)
    np.testing.assert_allclose(got[real], want[real], atol=0.05 * np.abs(want).max())


@jax.jit
def _features(model, pixels, image_index, qids, qmask):
    embeds = model.encode_images(pixels)
    return embeds, model.query_features(embeds, image_index, qids, qmask)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_query_features_per_question(checkpoints, name):
    """Several questions about each image: the image is encoded once, each row's queries read
    its own instruction; = HF's per-row vision + Q-Former + projection."""
    ref, path = checkpoints(name)
    model = instructblip.from_pretrained(path)
    cfg = model.config
    _, pixels, qids, qmask, _ = inputs(cfg, rows=5, seed=4)
    image_index = np.array([1, 0, 1, 1, 0], np.int32)
    embeds, feats = _features(model, pixels[:2], image_index, qids, qmask)
    with torch.no_grad():
        out = ref.get_image_features(
            torch.from_numpy(pixels[image_index]).permute(0, 3, 1, 2),
            qformer_input_ids=torch.from_numpy(qids).long(),
            qformer_attention_mask=torch.from_numpy(qmask).long(),
        )
    want_embeds = out.vision_outputs.last_hidden_state.numpy()
    np.testing.assert_allclose(np.asarray(embeds)[image_index], want_embeds, atol=ATOL)
    assert feats.shape == (5, cfg.num_image_tokens, cfg.text.hidden_size)
    np.testing.assert_allclose(np.asarray(feats), out.pooler_output.numpy(), atol=ATOL)
    # embed_inputs: rows share feature rows through feature_index; a text-only row is unchanged.
    ids = inputs(cfg, rows=3)[0]
    ids[2] = np.where(ids[2] == cfg.image_token_id, 5, ids[2])
    x = np.asarray(model.embed_inputs(ids, feats, np.array([3, 1, 0], np.int32)))
    p = cfg.num_image_tokens
    np.testing.assert_allclose(x[0, :p], np.asarray(feats[3]), atol=1e-6)
    np.testing.assert_allclose(x[1, :p], np.asarray(feats[1]), atol=1e-6)
    np.testing.assert_array_equal(x[2], np.asarray(model.language_model.embed(ids[2])))


def test_image_token_count_is_checked(checkpoints):
    _, path = checkpoints("gqa_sharded")
    model = instructblip.from_pretrained(path)
    cfg = model.config
    ids, pixels, qids, qmask, mask = inputs(cfg)
    ids[1, 0] = 5
    with pytest.raises(ValueError, match=r"row 1 of input_ids has 3 image tokens .*expected 4"):
        model(ids, pixels, qids, qmask, mask)
    with pytest.raises(ValueError, match="5 tokens per row, expected 4"):
        model.embed_inputs(ids, jnp.zeros((3, 5, cfg.text.hidden_size)))
    with pytest.raises(ValueError, match=r"\[B, 16, 16, 3\] \(NHWC\)"):
        model.encode_images(np.zeros((1, 3, 16, 16), np.float32))
    with pytest.raises(ValueError, match="instruction of 40 tokens exceeds its 32 position"):
        model.query_features(jnp.zeros((1, 5, 32)), [0], np.zeros((1, 40), np.int32))


@pytest.mark.slow
@pytest.mark.parametrize("mesh_name", ["mesh8", "mesh_4x2"])
def test_sharded_equals_one_device(checkpoints, request, mesh_name):
    """Parameters placed on the mesh as they are read (heads split over `model` on 4x2), the
    batch split over `data`: the logits of 8 rows equal the single-device ones."""
    mesh = request.getfixturevalue(mesh_name)
    _, path = checkpoints("gqa_sharded")
    one = instructblip.from_pretrained(path)
    batch = inputs(one.config, rows=8, seed=5)
    want = np.asarray(_call(one, *batch))
    model = instructblip.from_pretrained(path, mesh=mesh)
    q = model.qformer.layers[0].attention.query.kernel[...]
    assert q.sharding.mesh.shape == mesh.shape
    if mesh_name == "mesh_4x2":
        assert q.sharding.spec[1] == parallel.MODEL
    put = lambda x: jax.device_put(x, parallel.batch_sharding(mesh, x.ndim))
    got = np.asarray(_call(model, *[put(a) for a in batch]))
    real = batch[-1].astype(bool)
    np.testing.assert_allclose(got[real], want[real], atol=1e-5)


# ---- checkpoint layouts and errors -------------------------------------------------------------


def _rewrite(src: str, dst, edit) -> str:
    """Copies a checkpoint directory with its tensors passed through `edit(dict) -> dict`."""
    dst.mkdir()
    reader = SafetensorsReader.from_dir(src)
    save_safetensors(edit({k: np.array(reader[k]) for k in reader}), str(dst / "model.safetensors"))
    with open(f"{src}/config.json") as f:
        (dst / "config.json").write_text(f.read())
    return str(dst)


def test_checkpoint_errors_are_named(checkpoints, tmp_path):
    _, path = checkpoints("gqa_sharded")
    key = "qformer.encoder.layer.1.crossattention.attention.value.weight"
    drop = lambda t: {k: v for k, v in t.items() if k != key}
    with pytest.raises(CheckpointError, match=f"missing key '{key}'"):
        instructblip.from_pretrained(_rewrite(path, tmp_path / "missing", drop))
    k = "vision_model.encoder.layers.1.self_attn.qkv.weight"
    shrink = lambda t: {**t, k: t[k][:-1]}
    with pytest.raises(CheckpointError, match=rf"'{k}' has shape \(95, 32\), expected \(96, 32\)"):
        instructblip.from_pretrained(_rewrite(path, tmp_path / "shape", shrink))
    extra = lambda t: {**t, "qformer.encoder.layer.1.crossattention.extra": np.zeros(2, np.float32)}
    with pytest.raises(CheckpointError, match=r"unexpected key 'qformer\.encoder\.layer\.1\.cross"):
        instructblip.from_pretrained(_rewrite(path, tmp_path / "extra", extra))


def test_separate_q_v_bias_keys(checkpoints, tmp_path):
    """The vision attention's biases stored as LAVIS names them (`q_bias`, `v_bias`; k zero).

    The fast tier's logits parity (the module end to end, fp32, atol 1e-4)."""
    ref, path = checkpoints("gqa_sharded")
    c = CONFIGS["gqa_sharded"]["vision_config"]["hidden_size"]

    def split(t):
        out = {}
        for key, v in t.items():
            if key.endswith("self_attn.qkv.bias"):
                assert not v[c : 2 * c].any()
                stem = key.removesuffix("qkv.bias")
                out[f"{stem}q_bias"], out[f"{stem}v_bias"] = v[:c], v[2 * c :]
            else:
                out[key] = v
        return out

    model = instructblip.from_pretrained(_rewrite(path, tmp_path / "lavis", split))
    check_logits(model, ref, inputs(model.config))


@pytest.mark.slow
def test_table_covers_the_vicuna_7b_layout():
    """The real checkpoint's widths, query count and cross-attention pattern (fewer layers): the
    table's keys and shapes are exactly those of transformers' model (built on the meta device,
    no memory)."""
    from flax import nnx

    from vl_jax.checkpoints.mapping import _expected_source_shapes, _flat

    config = transformers.InstructBlipConfig(  # instructblip-vicuna-7b, 2/4/2 layers
        vision_config=dict(num_hidden_layers=2),
        qformer_config=dict(num_hidden_layers=4),
        text_config=dict(model_type="llama", vocab_size=32001, hidden_size=4096,
                         intermediate_size=11008, num_hidden_layers=2, num_attention_heads=32),
        image_token_index=32000,
    )  # fmt: skip
    with torch.device("meta"):
        ref = transformers.InstructBlipForConditionalGeneration(config)
    theirs = {k: tuple(v.shape) for k, v in ref.state_dict().items()}
    cfg = instructblip.InstructBLIPConfig.from_hf(config)
    assert (cfg.num_image_tokens, cfg.qformer.cross_attention_frequency) == (32, 2)
    assert (cfg.vision.image_size, cfg.vision.patch_size, cfg.vision.encoder.width) == (
        224,
        14,
        1408,
    )
    model = nnx.eval_shape(lambda: instructblip.InstructBLIP(cfg, rngs=nnx.Rngs(0)))
    targets = _flat(nnx.state(model))
    ours = {}
    for rule in instructblip.hf_rules(cfg):
        spec = targets[rule.target].get_value()
        shapes = _expected_source_shapes(rule, spec.shape, spec.dtype)
        ours.update(zip(rule.sources, shapes))
    assert ours == theirs


def _save_config(tmp_path, **changes) -> str:
    config = transformers.InstructBlipConfig(**{**CONFIGS["gqa_sharded"], **changes})
    config.save_pretrained(tmp_path)
    return str(tmp_path)


def test_flan_t5_is_refused(tmp_path):
    t5 = dict(model_type="t5", vocab_size=60, d_model=32, num_layers=1, num_heads=2)
    path = _save_config(tmp_path, text_config=t5)
    with pytest.raises(ConfigError, match="Flan-T5 language model is not supported; use a Vicuna"):
        instructblip.from_pretrained(path)
    assert issubclass(ConfigError, UserError)  # one line, exit status 2 from the drivers


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(text_config=dict(model_type="gemma")), "architecture 'gemma'"),
        (dict(image_token_index=None), "no image_token_index"),
    ],
)
def test_unsupported_configs_are_named(tmp_path, changes, message):
    with pytest.raises(ValueError, match=message):
        instructblip.from_pretrained(_save_config(tmp_path, **changes))


def test_not_instructblip(tmp_path):
    transformers.LlamaConfig().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="'llama' is not 'instructblip'"):
        instructblip.from_pretrained(str(tmp_path))


def test_registry():
    assert get_model_module("instructblip") is instructblip


# ---- the tiny writer ---------------------------------------------------------------------------


@pytest.mark.slow
def test_tiny_writer_loads_in_transformers_with_the_same_logits(tmp_path):
    """vl_jax.models.tiny.write_instructblip (no torch) writes a checkpoint + processor that
    transformers loads; its logits equal ours on the processor's own inputs, and the pipeline's
    HFImageProcessor over its BLIP image processor gives the processor's pixels."""
    from PIL import Image

    from vl_jax.models import tiny
    from vl_jax.preprocess import HFImageProcessor

    path = tiny.write_instructblip(str(tmp_path / "ib"), seed=3)
    ref = transformers.InstructBlipForConditionalGeneration.from_pretrained(path).eval()
    model, processor = instructblip.from_pretrained(path), instructblip.load_processor(path)
    assert isinstance(processor, transformers.InstructBlipProcessor)
    rng = np.random.RandomState(0)
    pics = [Image.fromarray(rng.randint(0, 256, (40, 50 + 7 * k, 3), np.uint8)) for k in range(2)]
    text = ["Is there a circle in the image?", "Describe the image in detail."]
    enc = processor(images=pics, text=text, padding=True, return_tensors="np")
    ids, mask = enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(np.int32)
    assert (ids[:, : model.config.num_image_tokens] == model.config.image_token_id).all()
    assert mask[1].sum() < mask[0].sum()  # the shorter prompt is left-padded after its images
    pixels = enc["pixel_values"].astype(np.float32).transpose(0, 2, 3, 1)
    qids, qmask = enc["qformer_input_ids"], enc["qformer_attention_mask"]
    check_logits(model, ref, (ids, pixels, qids, qmask, mask))
    transform = HFImageProcessor(processor.image_processor)
    assert transform.output_hw == (32, 32)
    np.testing.assert_allclose(transform(np.asarray(pics[1])), pixels[1], atol=1e-6)
    assert tiny.write_instructblip(path, seed=4) == path  # a complete checkpoint is kept
    # Greedy through the plain forward = HF `generate` (the unpadded row: positions agree).
    one = {k: v[:1] for k, v in enc.items()}
    with torch.no_grad():
        hf_new = ref.generate(
            **{k: torch.from_numpy(v) for k, v in one.items()}, max_new_tokens=3, do_sample=False
        )[0, -3:].numpy()
    t = ids.shape[1]
    grow = np.pad(ids[:1], ((0, 0), (0, 3)))  # right padding: causal, so it changes nothing
    grow_mask = np.pad(mask[:1], ((0, 0), (0, 3)))
    for step in range(3):
        logits = _call(model, grow, pixels[:1], qids[:1], qmask[:1], grow_mask)
        grow[0, t + step] = int(np.argmax(logits[0, t + step - 1]))
        grow_mask[0, t + step] = 1
    np.testing.assert_array_equal(grow[0, t:], hf_new)
