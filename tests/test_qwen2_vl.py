"""Parity of our Qwen2-VL / Qwen2.5-VL (vision towers, M-RoPE decoder, preprocessing, processor)
with transformers' `Qwen2VLForConditionalGeneration` / `Qwen2_5_VLForConditionalGeneration` on
tiny random checkpoints.

Tolerance: fp32, atol 1e-4 on the logits of real tokens (observed ~2e-7); positions, pixels and
token ids exactly equal.
"""

import itertools
import os

import jax
import numpy as np
import pytest
import torch
import transformers
from PIL import Image

from vl_jax import parallel
from vl_jax.checkpoints import CheckpointError, SafetensorsReader, save_safetensors
from vl_jax.images import ImageError
from vl_jax.models import get_model_module, qwen2_vl
from vl_jax.models.qwen2_vl_preprocess import Qwen2VLPreprocess, Qwen2VLProcessor

ATOL = 1e-4

_TEXT = dict(
    vocab_size=80, bos_token_id=1, eos_token_id=2, pad_token_id=0, hidden_size=40,
    intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    rope_parameters={"rope_type": "default", "mrope_section": [1, 2, 2], "rope_theta": 10000.0},
)  # fmt: skip
_IDS = dict(image_token_id=79, video_token_id=78, vision_start_token_id=76, vision_end_token_id=77)
IMAGE, START, END = 79, 76, 77

CONFIGS = {
    # Windows of 2x2 merged tokens (16 px / merge 2 / patch 4) in blocks 0 and 2, block 1 full;
    # saved fp32 in several shards.
    "qwen2_5_vl": (
        transformers.Qwen2_5_VLConfig,
        transformers.Qwen2_5_VLForConditionalGeneration,
        dict(depth=3, hidden_size=32, intermediate_size=48, num_heads=4, patch_size=4,
             spatial_merge_size=2, temporal_patch_size=2, window_size=16, out_hidden_size=40,
             fullatt_block_indexes=[1]),
    ),
    # LayerNorm / quick_gelu, full attention; stored bfloat16.
    "qwen2_vl": (
        transformers.Qwen2VLConfig,
        transformers.Qwen2VLForConditionalGeneration,
        dict(depth=2, embed_dim=32, hidden_size=40, num_heads=4, patch_size=4, mlp_ratio=2),
    ),
}  # fmt: skip


def make_hf(name: str, seed: int = 0, **text):
    config_cls, model_cls, vision = CONFIGS[name]
    torch.manual_seed(seed)
    config = config_cls(vision_config=vision, text_config={**_TEXT, **text}, **_IDS)
    model = model_cls(config).eval()
    with torch.no_grad():  # non-trivial norms and biases, so that a swapped key would show
        for pname, p in model.named_parameters():
            if "norm" in pname or "ln_q" in pname or pname.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """name -> (HF model with the stored weights, saved directory), built on first use."""
    cache = {}

    def get(name):
        if name not in cache:
            ref = make_hf(name)
            path = str(tmp_path_factory.mktemp(name))
            if name == "qwen2_vl":
                ref.to(torch.bfloat16).save_pretrained(path)
                ref = type(ref).from_pretrained(path, dtype=torch.float32).eval()
            else:
                ref.save_pretrained(path, max_shard_size="40KB")
            cache[name] = ref, path
        return cache[name]

    return get


def batch(sizes, rows, patch_dim: int, seed: int = 1, left: bool = True):
    """input_ids / attention_mask [B, T] from `rows` (lists of items: "n" for n random text
    tokens, an int g for an image of grid sizes[g]: <start> image-tokens <end>), padded with 0 on
    the left (or right); random patches and the grids [N, 3] of the images in order."""
    rng = np.random.RandomState(seed)
    seqs, grids = [], []
    for row in rows:
        seq = []
        for item in row:
            if isinstance(item, str):
                seq += list(rng.randint(3, 70, size=int(item)))
            else:
                g = sizes[item]
                grids.append(g)
                seq += [START] + [IMAGE] * (g[1] * g[2] // 4) + [END]
        seqs.append(seq)
    t = max(map(len, seqs))
    ids, mask = np.zeros((len(rows), t), np.int64), np.zeros((len(rows), t), np.int64)
    for i, s in enumerate(seqs):
        cols = slice(t - len(s), t) if left else slice(0, len(s))
        ids[i, cols], mask[i, cols] = s, 1
    total = sum(g[1] * g[2] for g in grids)
    pixels = rng.randn(total, patch_dim).astype(np.float32)
    return ids, pixels, np.array(grids, np.int64).reshape(-1, 3), mask


# Two image sizes (the first 3x2 windows of 2x2 merged tokens, the second cut by the edge), text
# before, between and after, and a text-only row; left padded as the engine pads.
GRIDS = [(1, 12, 8), (1, 6, 10)]
ROWS = [["2", 0, "5"], ["1", 1, "3"], ["9"], ["1", 0, "2", 1, "1"]]


def hf_forward(ref, ids, pixels, grids, mask):
    t = lambda a: torch.from_numpy(np.asarray(a))
    with torch.no_grad():
        out = ref(
            input_ids=t(ids), attention_mask=t(mask), pixel_values=t(pixels),
            image_grid_thw=t(grids), mm_token_type_ids=t((ids == IMAGE).astype(np.int64)),
        )  # fmt: skip
    return out.logits.numpy()


def hf_rope_index(ref, ids, grids, mask):
    t = lambda a: torch.from_numpy(np.asarray(a))
    mm = t((ids == IMAGE).astype(np.int64))
    pos, deltas = ref.model.get_rope_index(t(ids), mm, t(grids), attention_mask=t(mask))
    return pos.numpy(), deltas.numpy()[:, 0]


@pytest.mark.parametrize("name", ["qwen2_5_vl", "qwen2_vl"])
def test_logits_match_hf(checkpoints, name):
    """Images of two sizes, a text-only row, two images in one row, left padding: logits of the
    real tokens equal HF's (qwen2_5_vl read from shards, qwen2_vl stored bfloat16)."""
    ref, path = checkpoints(name)
    if name == "qwen2_5_vl":
        assert os.path.exists(f"{path}/model.safetensors.index.json")
    model = qwen2_vl.from_pretrained(path)
    assert model.config.vision.swiglu == (name == "qwen2_5_vl")
    ids, pixels, grids, mask = batch(GRIDS, ROWS, model.config.vision.patch_dim)
    got = np.asarray(model(ids, pixels, grids, mask))
    want = hf_forward(ref, ids, pixels, grids, mask)
    real = mask.astype(bool)
    np.testing.assert_allclose(got[real], want[real], atol=ATOL)


@pytest.mark.slow
def test_bfloat16_compute_is_close(checkpoints):
    """bfloat16 parameters and compute (the 7B setting): logits within 5% of the logit scale of
    transformers' float32 ones, the same argmax on most real tokens."""
    import jax.numpy as jnp

    ref, path = checkpoints("qwen2_5_vl")
    model = qwen2_vl.from_pretrained(path, dtype=jnp.bfloat16)
    ids, pixels, grids, mask = batch(GRIDS, ROWS, model.config.vision.patch_dim)
    got = np.asarray(model(ids, pixels, grids, mask))
    want = hf_forward(ref, ids, pixels, grids, mask)
    real = mask.astype(bool)
    scale = np.abs(want[real]).max()
    assert np.abs(got[real] - want[real]).max() < 0.05 * scale
    assert (got[real].argmax(-1) == want[real].argmax(-1)).mean() > 0.9


@pytest.mark.parametrize("left", [True, False])
def test_rope_index_equals_hf(checkpoints, left):
    """M-RoPE positions and deltas equal HF's `get_rope_index`, left or right padded."""
    ref, _ = checkpoints("qwen2_5_vl")
    cfg = qwen2_vl.Qwen2VLConfig.from_hf(ref.config)
    ids, _, grids, mask = batch(GRIDS, ROWS, 1, left=left)
    pos, deltas = qwen2_vl.rope_index(ids, grids, mask, cfg)
    want_pos, want_deltas = hf_rope_index(ref, ids, grids, mask)
    np.testing.assert_array_equal(pos, want_pos)
    np.testing.assert_array_equal(deltas, want_deltas)
    # The text after an image continues at start + max(h, w) of its merged grid.
    row = 1
    first = np.flatnonzero(ids[row] == IMAGE)[0]
    after = np.flatnonzero(ids[row] == END)[0]
    assert pos[0, row, after] == pos[0, row, first] + max(6, 10) // 2
    sec = qwen2_vl.rope_positions(pos, cfg)
    assert sec.shape == (*ids.shape, cfg.text.head_dim // 2)
    np.testing.assert_array_equal(np.asarray(sec[..., 0]), pos[0])  # section 0: temporal
    np.testing.assert_array_equal(np.asarray(sec[..., -1]), pos[2])  # last section: width


def test_rope_index_errors(checkpoints):
    ref, _ = checkpoints("qwen2_5_vl")
    cfg = qwen2_vl.Qwen2VLConfig.from_hf(ref.config)
    ids, _, _, mask = batch(GRIDS, [["1", 0, "1"]], 1)
    with pytest.raises(ValueError, match="run of 24 image tokens for a 1x3x5 merged grid"):
        qwen2_vl.rope_index(ids, np.array(GRIDS[1:]), mask, cfg)
    with pytest.raises(ValueError, match="more images than the input_ids hold"):
        qwen2_vl.rope_index(ids, np.array(GRIDS), mask, cfg)
    with pytest.raises(ValueError, match="more runs of image tokens"):
        qwen2_vl.rope_index(ids, None, mask, cfg)


def test_image_token_count_is_checked(checkpoints):
    _, path = checkpoints("qwen2_5_vl")
    model = qwen2_vl.from_pretrained(path)
    ids, pixels, _, mask = batch(GRIDS[:1], [["2", 0]], model.config.vision.patch_dim)
    with pytest.raises(ValueError, match="hold 24 image tokens, the images give 15"):
        model(ids, np.zeros((60, pixels.shape[1]), np.float32), [(1, 6, 10)], mask)
    with pytest.raises(ValueError, match="only still images"):
        model(ids, np.zeros((96, pixels.shape[1]), np.float32), [(2, 6, 8)], mask)


def test_windows_follow_hf(checkpoints):
    """Our windows partition the patches as HF's window index does, and the gathered layout
    visits them in HF's order (windows row-major, tokens row-major in each)."""
    from transformers.vision_utils import get_vision_window_index

    from vl_jax.models.qwen2_vl_vision import window_ids, window_layout

    ref, _ = checkpoints("qwen2_5_vl")
    cfg = qwen2_vl.Qwen2VLConfig.from_hf(ref.config).vision
    for grid in [(1, 12, 8), (1, 6, 10), (1, 4, 4), (1, 2, 14)]:
        index, cu = get_vision_window_index(torch.tensor([grid]), 2, 16, 4)
        # HF: merged tokens reordered window by window, cu_seqlens over patches (4 per token).
        order = np.repeat(index.numpy() * 4, 4) + np.tile(np.arange(4), len(index))
        ours = window_ids(grid[1:], cfg)[order]
        bounds = cu.numpy()
        for a, b in itertools.pairwise(bounds):
            assert len(set(ours[a:b])) == 1
        assert len(set(ours)) == len(bounds) - 1
        layout = window_layout(grid[1:], cfg)
        np.testing.assert_array_equal(layout.gather[layout.valid.reshape(-1)], order)
        np.testing.assert_array_equal(layout.valid.sum(axis=1), np.diff(bounds))
        real = layout.gather[layout.scatter]
        np.testing.assert_array_equal(real, np.arange(grid[1] * grid[2]))


# ---- preprocessing and processor ---------------------------------------------------------------


@pytest.mark.parametrize(
    "hw, budget",
    [
        ((50, 70), (56 * 56, 28 * 28 * 36)),  # rounded to multiples of 28
        ((20, 300), (56 * 56, 28 * 28 * 36)),  # too few pixels: scaled up
        ((400, 260), (56 * 56, 28 * 28 * 36)),  # too many: scaled down
        ((37, 41), (16 * 16, 16 * 16 * 9)),  # another patch size and budget
    ],
)
def test_preprocess_equals_hf_pil(hw, budget):
    """Pixels and grid equal transformers' PIL image processor exactly."""
    patch = 14 if budget[0] == 56 * 56 else 8
    kw = dict(min_pixels=budget[0], max_pixels=budget[1], patch_size=patch)
    hf = transformers.Qwen2VLImageProcessorPil(**kw)
    ours = Qwen2VLPreprocess(**kw)
    image = np.random.RandomState(hw[0]).randint(0, 256, (*hw, 3), np.uint8)
    want = hf(images=[Image.fromarray(image)], return_tensors="np")
    patches, grid = ours(image)
    assert grid == tuple(want["image_grid_thw"][0])
    assert ours.num_image_tokens(*hw) == np.prod(grid) // 4
    np.testing.assert_array_equal(patches, want["pixel_values"])


def test_preprocess_from_checkpoint_settings(tmp_path):
    hf = transformers.Qwen2VLImageProcessorPil(min_pixels=1000, max_pixels=9000, patch_size=8)
    hf.save_pretrained(tmp_path)
    assert Qwen2VLPreprocess.from_hf_dir(tmp_path) == Qwen2VLPreprocess(
        min_pixels=1000, max_pixels=9000, patch_size=8
    )
    with pytest.raises(ImageError, match="aspect ratio must be smaller than 200"):
        Qwen2VLPreprocess()(np.zeros((1, 300, 3), np.uint8))


class _HFProcessor(transformers.Qwen2VLProcessor):
    # transformers' processor checks its video processor's class, which needs torchvision (not
    # installed here); images never touch it.
    def check_argument_for_proper_class(self, argument_name, argument):
        return None


def test_processor_equals_hf(tmp_path):
    """Our processor on the tiny checkpoint = transformers' Qwen2VLProcessor over the same
    tokenizer and image processor: ids, mask, token types, pixels and grids."""
    from vl_jax.models import tiny

    path = tiny.write_qwen2_vl(str(tmp_path / "q"), seed=0)
    ours = qwen2_vl.load_processor(path)
    assert isinstance(ours, Qwen2VLProcessor)
    hf = _HFProcessor(
        image_processor=transformers.AutoImageProcessor.from_pretrained(path),
        tokenizer=transformers.AutoTokenizer.from_pretrained(path),
        video_processor=None,
    )
    msgs = lambda q: [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}]
    text = [ours.apply_chat_template(msgs(q), add_generation_prompt=True)
            for q in ("Is there a dog?", "Describe the image in detail.")]  # fmt: skip
    assert text[0].endswith("<|im_start|>assistant\n") and "<|image_pad|>" in text[0]
    rng = np.random.RandomState(0)
    pics = [Image.fromarray(rng.randint(0, 256, (60 + 40 * k, 90, 3), np.uint8)) for k in range(2)]
    got = ours(images=pics, text=text)
    want = hf(images=pics, text=text, padding=True, return_tensors="np")
    assert set(got) == set(want)
    for key in got:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    with pytest.raises(ValueError, match="more images than image tokens"):
        ours(images=pics, text=text[:1])


# ---- loading: layouts, errors, meshes ----------------------------------------------------------


def _rewrite(src: str, dst, edit) -> str:
    """Copies a checkpoint directory with its tensors passed through `edit(dict) -> dict`."""
    dst.mkdir()
    reader = SafetensorsReader.from_dir(src)
    save_safetensors(edit({k: np.array(reader[k]) for k in reader}), str(dst / "model.safetensors"))
    with open(f"{src}/config.json") as f:
        (dst / "config.json").write_text(f.read())
    return str(dst)


def test_in_memory_key_layout_loads(checkpoints, tmp_path):
    """transformers 5's in-memory names (model.language_model.*, model.visual.*) load to the
    same parameters as the hub's."""
    from flax import nnx

    _, path = checkpoints("qwen2_5_vl")

    def rename(tensors):
        out = {}
        for k, v in tensors.items():
            if k.startswith("visual."):
                k = "model." + k
            elif k.startswith("model."):
                k = "model.language_model." + k[len("model.") :]
            out[k] = v
        return out

    renamed = _rewrite(path, tmp_path / "mem", rename)
    assert qwen2_vl.detect_layout(SafetensorsReader.from_dir(renamed).keys()) == qwen2_vl.IN_MEMORY
    want = nnx.state(qwen2_vl.from_pretrained(path), nnx.Param)
    got = nnx.state(qwen2_vl.from_pretrained(renamed), nnx.Param)
    jax.tree.map(np.testing.assert_array_equal, got, want)


def test_checkpoint_errors_are_named(checkpoints, tmp_path):
    _, path = checkpoints("qwen2_5_vl")
    key = "visual.blocks.2.mlp.up_proj.bias"
    missing = _rewrite(
        path, tmp_path / "missing", lambda t: {k: v for k, v in t.items() if k != key}
    )
    with pytest.raises(CheckpointError, match=f"missing key '{key}'"):
        qwen2_vl.from_pretrained(missing)
    extra = _rewrite(path, tmp_path / "extra", lambda t: {**t, "visual.extra.weight": t[key]})
    with pytest.raises(CheckpointError, match=r"unexpected key 'visual\.extra\.weight'"):
        qwen2_vl.from_pretrained(extra)


@pytest.mark.slow
def test_tied_embeddings_load(tmp_path):
    """A tied checkpoint (as Qwen2.5-VL-3B) has no separate lm_head; logits still equal HF's."""
    ref = make_hf("qwen2_5_vl", seed=2)
    ref.config.tie_word_embeddings = True
    ref.tie_weights()
    ref.save_pretrained(tmp_path)
    ref = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained(tmp_path).eval()
    model = qwen2_vl.from_pretrained(str(tmp_path))
    assert model.language_model.lm_head is None
    ids, pixels, grids, mask = batch(GRIDS[:1], [["3", 0, "2"]], model.config.vision.patch_dim)
    np.testing.assert_allclose(
        np.asarray(model(ids, pixels, grids, mask)),
        hf_forward(ref, ids, pixels, grids, mask),
        atol=ATOL,
    )


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(use_sliding_window=True), "use_sliding_window=True"),
        (dict(rope_parameters={"rope_type": "yarn", "factor": 2.0, "mrope_section": [1, 2, 2]}),
         "rope_type 'yarn'"),
        (dict(rope_parameters={"rope_type": "default", "mrope_section": [1, 1, 1]}),
         "mrope_section"),
    ],
)  # fmt: skip
def test_unsupported_configs_are_named(tmp_path, changes, message):
    config_cls, _, vision = CONFIGS["qwen2_5_vl"]
    config_cls(vision_config=vision, text_config={**_TEXT, **changes}, **_IDS).save_pretrained(
        tmp_path
    )
    with pytest.raises(ValueError, match=message):
        qwen2_vl.from_pretrained(str(tmp_path))


def test_not_qwen2_vl(tmp_path):
    transformers.LlamaConfig().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="'llama' is not one of qwen2_vl, qwen2_5_vl"):
        qwen2_vl.from_pretrained(str(tmp_path))


def test_registry():
    assert get_model_module("qwen2_vl") is qwen2_vl


@pytest.mark.slow
@pytest.mark.parametrize("mesh_name", ["mesh8", "mesh_4x2"])
def test_sharded_equals_one_device(checkpoints, request, mesh_name):
    """Parameters placed on the mesh as they are read (heads split over `model` on 4x2): the
    logits equal the single-device ones."""
    mesh = request.getfixturevalue(mesh_name)
    _, path = checkpoints("qwen2_5_vl")
    one = qwen2_vl.from_pretrained(path)
    ids, pixels, grids, mask = batch(GRIDS, ROWS * 2, one.config.vision.patch_dim, seed=5)
    want = np.asarray(one(ids, pixels, grids, mask))
    model = qwen2_vl.from_pretrained(path, mesh=mesh)
    qkv = model.visual.blocks[0].attn.qkv[...]
    assert qkv.sharding.mesh.shape == mesh.shape
    if mesh_name == "mesh_4x2":
        assert qkv.sharding.spec[2] == parallel.MODEL
    put = lambda x: jax.device_put(x, parallel.batch_sharding(mesh, x.ndim))
    got = np.asarray(model(put(ids), pixels, grids, put(mask)))
    real = mask.astype(bool)
    np.testing.assert_allclose(got[real], want[real], atol=1e-5)


@pytest.mark.slow
def test_table_covers_the_7b_layout():
    """Qwen2.5-VL-7B's widths (fewer layers): the table's keys and shapes are exactly those of
    transformers' model (built on the meta device, no memory)."""
    from flax import nnx

    from vl_jax.checkpoints.mapping import _expected_source_shapes, _flat

    config = transformers.Qwen2_5_VLConfig(
        vision_config=dict(depth=2, hidden_size=1280, intermediate_size=3420, num_heads=16,
                           out_hidden_size=3584, fullatt_block_indexes=[1]),
        text_config=dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944,
                         num_hidden_layers=2, num_attention_heads=28, num_key_value_heads=4,
                         rope_parameters={"rope_type": "default", "mrope_section": [16, 24, 24],
                                          "rope_theta": 1e6}),
    )  # fmt: skip
    with torch.device("meta"):
        ref = transformers.Qwen2_5_VLForConditionalGeneration(config)
    # save_pretrained writes the hub names: model.language_model.* -> model.*, model.visual.* ->
    # visual.*
    theirs = {}
    for k, v in ref.state_dict().items():
        k = k.replace("model.language_model.", "model.").replace("model.visual.", "visual.")
        theirs[k] = tuple(v.shape)
    cfg = qwen2_vl.Qwen2VLConfig.from_hf(config)
    model = nnx.eval_shape(lambda: qwen2_vl.Qwen2VL(cfg, rngs=nnx.Rngs(0)))
    targets = _flat(nnx.state(model))
    ours = {}
    for rule in qwen2_vl.hf_rules(cfg):
        spec = targets[rule.target].get_value()
        ours.update(zip(rule.sources, _expected_source_shapes(rule, spec.shape, spec.dtype)))
    assert ours == theirs


# ---- the tiny writer ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("version", ["2.5", "2"])
def test_tiny_writer_loads_in_transformers_with_the_same_logits(tmp_path, version):
    """vl_jax.models.tiny.write_qwen2_vl (no torch) writes a checkpoint, tokenizer and image
    processor that transformers loads; on the processor's inputs (a chat prompt per image, two
    image sizes, left padding) its logits equal ours."""
    from vl_jax.models import tiny

    path = tiny.write_qwen2_vl(str(tmp_path / "q"), seed=3, version=version)
    arch = getattr(transformers, transformers.AutoConfig.from_pretrained(path).architectures[0])
    ref = arch.from_pretrained(path).eval()
    model, processor = qwen2_vl.from_pretrained(path), qwen2_vl.load_processor(path)
    msgs = lambda q: [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}]
    text = [processor.apply_chat_template(msgs(q), add_generation_prompt=True)
            for q in ("Is there a circle?", "Describe the image in detail please.")]  # fmt: skip
    rng = np.random.RandomState(0)
    pics = [rng.randint(0, 256, (70, 60 + 50 * k, 3), np.uint8) for k in range(2)]
    enc = processor(images=pics, text=text)
    assert len(set(map(tuple, enc["image_grid_thw"]))) == 2
    ids, mask = enc["input_ids"], enc["attention_mask"]
    assert mask[0].sum() < mask[1].sum() and mask[0, 0] == 0  # left padded
    got = np.asarray(model(ids, enc["pixel_values"], enc["image_grid_thw"], mask))
    with torch.no_grad():
        want = ref(**{k: torch.from_numpy(v) for k, v in enc.items()}).logits.numpy()
    real = mask.astype(bool)
    np.testing.assert_allclose(got[real], want[real], atol=ATOL)
    assert tiny.write_qwen2_vl(path, seed=4) == path  # a complete checkpoint is kept


# ---- generation through the engine -------------------------------------------------------------


@pytest.mark.parametrize("left", [True, False])
def test_prompt_positions_equal_rope_index(checkpoints, left):
    """The engine's on-device M-RoPE positions (every image one size) equal `rope_index` (and so
    HF's `get_rope_index`), per rotary frequency; the offsets equal its deltas."""
    ref, _ = checkpoints("qwen2_5_vl")
    cfg = qwen2_vl.Qwen2VLConfig.from_hf(ref.config)
    model = nnx_abstract(cfg)
    rows = [["2", 0, "5"], ["1", 0, "3", 0, "1"], ["9"], [0, "4"]]
    ids, _, grids, mask = batch(GRIDS, rows, 1, left=left)
    want, deltas = qwen2_vl.rope_index(ids, grids, mask, cfg)
    pos, offsets = model.prompt_positions(ids, mask, (12 * 4, 8 * 4))  # 12 x 8 patches of 4 px
    real = mask.astype(bool)
    np.testing.assert_array_equal(
        np.asarray(pos)[real], np.asarray(qwen2_vl.rope_positions(want, cfg))[real]
    )
    np.testing.assert_array_equal(np.asarray(offsets), deltas)


def nnx_abstract(cfg):
    """A Qwen2VL whose methods that read no parameters can run (prompt_positions)."""
    from flax import nnx

    return nnx.eval_shape(lambda: qwen2_vl.Qwen2VL(cfg, rngs=nnx.Rngs(0)))


def test_encode_images_patchifies_as_the_processor(checkpoints):
    """The engine's entry (resized images [N, H, W, 3], patchified on device) gives the
    features of the processor's patches."""
    from vl_jax.models.qwen2_vl_preprocess import patchify

    _, path = checkpoints("qwen2_5_vl")
    model = qwen2_vl.from_pretrained(path)
    v = model.config.vision
    images = np.random.RandomState(0).randn(2, 24, 40, 3).astype(np.float32)
    patches = np.stack(
        [patchify(im, v.patch_size, v.merge_size, v.temporal_patch_size) for im in images]
    )
    np.testing.assert_array_equal(np.asarray(qwen2_vl.patchify_on_device(images, v)), patches)
    got = jax.jit(lambda m, x: m.encode_images(x))(model, images)
    want = model.image_features(patches.reshape(-1, patches.shape[-1]), [(1, 6, 10)] * 2)
    np.testing.assert_allclose(np.asarray(got).reshape(want.shape), np.asarray(want), atol=1e-5)


@pytest.mark.parametrize("left", [True, False])
def test_prompt_positions_with_per_row_sizes_equal_rope_index(checkpoints, left):
    """Rows whose images differ in size (dynamic resolution in one request: `image_hw` [B, 2]
    per row) get `rope_index`'s positions and deltas; a text-only row may name any size."""
    ref, _ = checkpoints("qwen2_5_vl")
    cfg = qwen2_vl.Qwen2VLConfig.from_hf(ref.config)
    rows = [["2", 0, "5"], ["1", 1, "3"], ["9"], [1, "4"]]
    ids, _, grids, mask = batch(GRIDS, rows, 1, left=left)
    want, deltas = qwen2_vl.rope_index(ids, grids, mask, cfg)
    hw = np.array([(48, 32), (24, 40), (0, 0), (24, 40)])  # 4 px patches
    pos, offsets = nnx_abstract(cfg).prompt_positions(ids, mask, hw)
    real = mask.astype(bool)
    np.testing.assert_array_equal(
        np.asarray(pos)[real], np.asarray(qwen2_vl.rope_positions(want, cfg))[real]
    )
    np.testing.assert_array_equal(np.asarray(offsets), deltas)
