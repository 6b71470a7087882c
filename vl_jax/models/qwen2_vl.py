"""Qwen2-VL and Qwen2.5-VL in Flax NNX, loading HF `Qwen2VLForConditionalGeneration` /
`Qwen2_5_VLForConditionalGeneration` checkpoints.

    model = qwen2_vl.from_pretrained("Qwen/Qwen2.5-VL-3B-Instruct", dtype=jnp.bfloat16)
    processor = qwen2_vl.load_processor("Qwen/Qwen2.5-VL-3B-Instruct")
    enc = processor(images=[img], text=[prompt], return_tensors="np")
    logits = model(enc["input_ids"], enc["pixel_values"], enc["image_grid_thw"],
                   enc["attention_mask"])                                  # [B, T, V]

Architecture: the vision tower (`vl_jax.models.qwen2_vl_vision`: dynamic resolution, 2-D rotary,
windowed attention for 2.5, the 2x2 patch merger) and the Qwen2 decoder (`llm.LLM`: q/k/v biases,
RMSNorm, SwiGLU) with multimodal rotary positions (M-RoPE). The processor expands each
`<|image_pad|>` into one token per merged patch (`h * w / m^2`); the decoder's input embeddings at
those tokens are the image's merged features, in order (HF's `masked_scatter` over the batch).

M-RoPE (`rope_index`, equal to HF's `get_rope_index`): every token has three positions (temporal,
height, width). Text tokens have the same position in all three, counting on from the previous
token; the tokens of an image of h x w merged patches starting at position s have (s, s + row,
s + column), and the text after it continues at s + max(h, w). The head's rotary frequencies are
split into `mrope_section` (temporal, height, width) groups, each rotated by its own position
(`rope_positions`: one position per frequency, which `llm.apply_rope` accepts). Padding tokens
(attention_mask 0) get position 0 and are never attended.

Shape letters: B rows, T tokens, K image tokens of a batch, L patches, P patch vector, D text
width, V vocabulary, E head dim.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vl_jax.checkpoints import SafetensorsReader, load_model, resolve
from vl_jax.checkpoints.hub import DEFAULT_PATTERNS
from vl_jax.checkpoints.mapping import Rule
from vl_jax.models import llm
from vl_jax.models.qwen2_vl_vision import (
    PaddedLayout,
    VisionConfig,
    VisionTower,
    padded_layout,
    vision_rules,
)

__all__ = [
    "ARCHITECTURES",
    "PaddedImages",
    "Qwen2VL",
    "Qwen2VLConfig",
    "from_pretrained",
    "gather_patches",
    "hf_ignore",
    "hf_rules",
    "init",
    "load_processor",
    "patchify_on_device",
    "rope_index",
    "rope_positions",
]

# model_type -> the transformers class of its checkpoints.
ARCHITECTURES = {
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
}


@dataclasses.dataclass(frozen=True)
class Qwen2VLConfig:
    model_type: str  # "qwen2_vl" | "qwen2_5_vl"
    vision: VisionConfig
    text: llm.LLMConfig
    mrope_section: tuple[int, int, int]  # rotary frequencies per (temporal, height, width)
    image_token_id: int
    vision_start_token_id: int

    def __post_init__(self):
        if sum(self.mrope_section) != self.text.head_dim // 2 or len(self.mrope_section) != 3:
            raise ValueError(
                f"mrope_section {list(self.mrope_section)} must be 3 groups summing to head_dim / "
                f"2 = {self.text.head_dim // 2}"
            )
        if self.vision.out_width != self.text.hidden_size:
            raise ValueError(
                f"vision output width {self.vision.out_width} != text width {self.text.hidden_size}"
            )

    @classmethod
    def from_hf(cls, c) -> Qwen2VLConfig:
        """From a transformers `Qwen2VLConfig` / `Qwen2_5_VLConfig`."""
        if c.model_type not in ARCHITECTURES:
            raise ValueError(
                f"model_type '{c.model_type}' is not one of {', '.join(ARCHITECTURES)}"
            )
        t = c.text_config
        rope = dict(getattr(t, "rope_parameters", None) or {})
        kind = rope.get("rope_type", rope.get("type", "default"))
        if kind not in ("default", "mrope"):
            raise ValueError(f"unsupported text rope_type '{kind}' (Qwen2-VL uses the default)")
        if getattr(t, "use_sliding_window", False):
            raise ValueError("Qwen2-VL decoders with use_sliding_window=True are not supported")
        heads = t.num_attention_heads
        text = llm.LLMConfig(
            vocab_size=t.vocab_size, hidden_size=t.hidden_size,
            intermediate_size=t.intermediate_size, num_layers=t.num_hidden_layers,
            num_heads=heads, num_kv_heads=t.num_key_value_heads or heads,
            head_dim=t.hidden_size // heads,  # HF's Qwen2-VL attention ignores a head_dim field
            rms_eps=t.rms_norm_eps, rope_theta=float(rope.get("rope_theta", 1e6)),
            attention_bias=True, tie_word_embeddings=bool(c.tie_word_embeddings),
        )  # fmt: skip
        return cls(
            model_type=c.model_type,
            vision=VisionConfig.from_hf(c.vision_config, c.model_type),
            text=text,
            mrope_section=tuple(int(s) for s in rope.get("mrope_section", (16, 24, 24))),
            image_token_id=int(c.image_token_id),
            vision_start_token_id=int(c.vision_start_token_id),
        )


def rope_index(input_ids, image_grid_thw, attention_mask, cfg: Qwen2VLConfig):
    """M-RoPE positions of a batch on the host (HF `get_rope_index` for images).

    Args:
      input_ids: [B, T] ints; each run of consecutive image tokens is one image.
      image_grid_thw: [N, 3] (1, h, w) patches per image, in the order the images appear
        (row by row), or None for a text-only batch.
      attention_mask: [B, T] (1 = token) or None.
    Returns:
      (positions [3, B, T] int32, deltas [B] int32): deltas are max position + 1 - the row's
      token count, the offset from a slot index to the position of later generated tokens.
    Raises:
      ValueError: a run of image tokens whose length is not its grid's token count, or a count
        of runs unequal to the number of grids.
    """
    ids = np.asarray(input_ids)
    b, t = ids.shape
    mask = np.ones((b, t), bool) if attention_mask is None else np.asarray(attention_mask) != 0
    grids = iter(np.zeros((0, 3), int) if image_grid_thw is None else np.asarray(image_grid_thw))
    m = cfg.vision.merge_size
    positions = np.zeros((3, b, t), np.int64)
    deltas = np.zeros((b,), np.int64)
    for row in range(b):
        is_image = ids[row][mask[row]] == cfg.image_token_id
        pieces, start = [], 0
        # Runs of equal token type (text / image) in order.
        edges = np.flatnonzero(np.diff(is_image.astype(np.int8))) + 1
        for run in np.split(np.arange(len(is_image)), edges):
            if not len(run):
                continue
            if not is_image[run[0]]:
                pieces.append(np.broadcast_to(start + np.arange(len(run)), (3, len(run))))
                start += len(run)
                continue
            grid = next(grids, None)
            if grid is None:
                raise ValueError(f"row {row} has more runs of image tokens than image_grid_thw")
            gt, gh, gw = (int(g) for g in grid)
            gh, gw = gh // m, gw // m
            if gt * gh * gw != len(run):
                raise ValueError(
                    f"row {row}: a run of {len(run)} image tokens for a {gt}x{gh}x{gw} merged grid"
                )
            tt, hh, ww = np.meshgrid(np.arange(gt), np.arange(gh), np.arange(gw), indexing="ij")
            pieces.append(np.stack([tt, hh, ww]).reshape(3, -1) + start)
            start += max(gh, gw)
        pos = np.concatenate(pieces, axis=1) if pieces else np.zeros((3, 0), np.int64)
        positions[:, row, mask[row]] = pos
        deltas[row] = (pos.max() + 1 if pos.size else 0) - len(is_image)
    if next(grids, None) is not None:
        raise ValueError("image_grid_thw has more images than the input_ids hold")
    return positions.astype(np.int32), deltas.astype(np.int32)


def rope_positions(positions: jax.Array, cfg: Qwen2VLConfig) -> jax.Array:
    """[3, B, T] (temporal, height, width) -> [B, T, E/2]: the position each rotary frequency
    turns by, section by section (HF's `mrope_section` split of cos / sin)."""
    section = np.repeat(np.arange(3), cfg.mrope_section)  # [E/2]: 0 = t, 1 = h, 2 = w
    return jnp.moveaxis(jnp.asarray(positions)[section], 0, -1)


def patchify_on_device(pixels: jax.Array, cfg) -> jax.Array:
    """[N, H, W, C] -> [N, L, P]: `qwen2_vl_preprocess.patchify` of each image, in jnp."""
    n, hh, ww, c = pixels.shape
    p, m, t = cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size
    gh, gw = hh // p, ww // p
    x = pixels.reshape(n, gh // m, m, p, gw // m, m, p, c).transpose(0, 1, 4, 2, 5, 7, 3, 6)
    x = jnp.broadcast_to(x[:, :, :, :, :, :, None], (*x.shape[:6], t, p, p))
    return x.reshape(n, gh * gw, c * t * p * p)


class PaddedImages(NamedTuple):
    """The engine's images of different sizes in one request (a pytree of [N, ...] arrays):
    canvas [N, Hc, Wc, 3] float32 (each resized image at the top-left, NaN elsewhere), hw
    [N, 2] int32 its (h, w) pixels, layout the `PaddedLayout` of its patches padded to the
    request's Lb slots. Built on the host by `Qwen2VL.image_layout`."""

    canvas: jax.Array | np.ndarray
    hw: np.ndarray
    layout: PaddedLayout


def num_windows(grid_hw: tuple[int, int], cfg) -> int:
    """The attention windows of an image of (h, w) patches (0 without windowing)."""
    if cfg.window_size is None:
        return 0
    ws = cfg.window_size // cfg.merge_size // cfg.patch_size
    gh, gw = (s // cfg.merge_size for s in grid_hw)
    return -(-gh // ws) * -(-gw // ws)


def gather_patches(canvas: jax.Array, layout: PaddedLayout, cfg) -> jax.Array:
    """canvas [N, Hc, Wc, 3] -> patches [N, Lb, P]: slot j of image i is its patch at
    layout.positions[i, j] (the processor's order), zeros at padding slots (the NaN outside an
    image never enters a computation); each patch vector (channel, temporal, row, column)."""
    n, hh, ww, c = canvas.shape
    p, t = cfg.patch_size, cfg.temporal_patch_size
    x = canvas.reshape(n, hh // p, p, ww // p, p, c).transpose(0, 1, 3, 5, 2, 4)
    x = x.reshape(n, (hh // p) * (ww // p), c, p, p)
    index = layout.positions[..., 0] * (ww // p) + layout.positions[..., 1]  # [N, Lb]
    x = jnp.take_along_axis(x, index[:, :, None, None, None], axis=1)
    x = jnp.where(layout.valid[:, :, None, None, None], x, 0.0)
    x = jnp.broadcast_to(x[:, :, :, None], (*x.shape[:3], t, p, p))
    return x.reshape(n, index.shape[1], c * t * p * p)


class Qwen2VL(nnx.Module):
    """Vision tower + Qwen2 decoder with M-RoPE; `dtype` computes, `param_dtype` stores."""

    def __init__(self, cfg: Qwen2VLConfig, *, dtype=jnp.float32, param_dtype=None, rngs: nnx.Rngs):
        param_dtype = param_dtype or dtype
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.config, self.dtype = cfg, dtype
        self.visual = VisionTower(cfg.vision, **kw)
        self.language_model = llm.LLM(cfg.text, **kw)

    def encode_patches(self, patches: jax.Array, grid_hw: tuple[int, int]) -> jax.Array:
        """patches [N, L, P] of N images of `grid_hw` patches (static) -> [N, L / m^2, D]."""
        return self.visual(patches, grid_hw)

    def image_layout(self, pixel_values) -> PaddedImages:
        """The engine's host-side step for dynamic resolution (`vl_jax.generate` calls it on
        every request's images): resized images of any sizes -> `PaddedImages`.

        pixel_values: a list of float32 [h_i, w_i, 3] (`Qwen2VLPreprocess.resize`; put on a
        canvas whose sides are bucketed), or a canvas batch [N, Hc, Wc, 3] (numpy, or a
        jax.Array such as the input pipeline's batch with `CanvasTransform`: only the sizes,
        [N, 2] ints, come to the host), or a same-size stack [N, H, W, 3].

        Bucket policy: every image is padded to Lb patch slots, Lb = `bucket(max h_i * w_i)`
        (four sizes per octave, a multiple of m^2), and the windows to Wb = `bucket(max
        windows)`; with the canvas shape these are the request's image shapes, so a new mix
        of sizes within the same buckets does not recompile."""
        from vl_jax.generate_inputs import bucket
        from vl_jax.models.qwen2_vl_preprocess import canvas, image_sizes

        if isinstance(pixel_values, PaddedImages):
            return pixel_values  # laid out already (a caller that needed the token counts)
        v = self.config.vision
        factor = v.patch_size * v.merge_size
        if isinstance(pixel_values, (list, tuple)):
            pixel_values = canvas(pixel_values, factor)
        if isinstance(pixel_values, jax.Array):
            from vl_jax import parallel

            hw = np.asarray(parallel.fetch(_canvas_sizes(pixel_values)))
            if (hw % factor).any():
                raise ValueError(f"canvas images of {hw.tolist()} px: need multiples of {factor}")
        else:
            pixel_values = np.asarray(pixel_values, np.float32)
            hw = image_sizes(pixel_values, factor)
        grids = hw // v.patch_size
        m2 = v.merge_size**2
        lb = bucket(max(int(grids.prod(axis=1).max(initial=0)), m2), multiple=m2)
        wb = bucket(max([num_windows(tuple(g), v) for g in grids.tolist()] + [1]))
        return PaddedImages(pixel_values, hw.astype(np.int32), padded_layout(grids, v, lb, wb))

    def image_token_counts(self, images: PaddedImages) -> np.ndarray:
        """[N] image tokens each image of `image_layout`'s result takes in a prompt (h * w /
        (patch * merge)^2; 0 for an empty image)."""
        v = self.config.vision
        return (np.asarray(images.hw).prod(axis=1) // (v.patch_size * v.merge_size) ** 2).astype(
            int
        )

    def encode_images(self, pixel_values) -> jax.Array:
        """Images of one size, resized and normalised (`Qwen2VLPreprocess.resize`) [N, H, W, 3]
        -> [N, L / m^2, D]: patchified on device as the processor does, then the tower (the
        engine's entry, `vl_jax.generate`). `PaddedImages` (images of different sizes) ->
        [N, Lb / m^2, D], each image's tokens first, then padding tokens."""
        v = self.config.vision
        if isinstance(pixel_values, PaddedImages):
            patches = gather_patches(pixel_values.canvas, pixel_values.layout, v)
            return self.visual.encode_padded(patches, pixel_values.layout)
        hh, ww = pixel_values.shape[1:3]
        grid = (hh // v.patch_size, ww // v.patch_size)
        return self.encode_patches(patchify_on_device(pixel_values, v), grid)

    def image_features(self, pixel_values, image_grid_thw) -> jax.Array:
        """The processor's concatenated patches [sum L, P] and grids [N, 3] -> [K, D], each
        image's merged tokens in order. Images of one size run through the tower together."""
        grids = np.asarray(image_grid_thw).astype(int)
        if (grids[:, 0] != 1).any():
            raise ValueError("only still images (grid t = 1) are supported, not video")
        sizes = grids.prod(axis=1)
        starts = np.concatenate([[0], np.cumsum(sizes)])
        if starts[-1] != pixel_values.shape[0]:
            raise ValueError(
                f"pixel_values has {pixel_values.shape[0]} patches, image_grid_thw {starts[-1]}"
            )
        out = [None] * len(grids)
        for hw in dict.fromkeys(map(tuple, grids[:, 1:])):
            which = [i for i, g in enumerate(grids) if tuple(g[1:]) == hw]
            batch = jnp.stack([pixel_values[starts[i] : starts[i + 1]] for i in which])
            for i, f in zip(which, _encode(self, batch, hw)):
                out[i] = f
        return jnp.concatenate(out, axis=0)

    def embed_inputs(self, input_ids, features=None, feature_index=None) -> jax.Array:
        """Token embeddings [B, T, D] with image features spliced into the image tokens.

        features [K, D] (feature_index None): the k-th image token of the batch, row by row,
        gets features[k] (HF's `masked_scatter`). features [N, P, D] with feature_index [B] (the
        engine): the k-th image token of row b gets features[feature_index[b], k]."""
        x = self.language_model.embed(input_ids)
        if features is None:
            return x
        is_image = input_ids == self.config.image_token_id
        if feature_index is None:
            k = jnp.clip(jnp.cumsum(is_image.reshape(-1)) - 1, 0, features.shape[0] - 1)
            picked = features.astype(x.dtype)[k].reshape(x.shape)
        else:
            k = jnp.clip(jnp.cumsum(is_image, axis=1) - 1, 0, features.shape[1] - 1)
            rows = jnp.asarray(feature_index, jnp.int32)[:, None]
            picked = features.astype(x.dtype)[rows, k]
        return jnp.where(is_image[..., None], picked, x)

    def prompt_positions(self, input_ids, attention_mask, image_hw=None):
        """M-RoPE positions of left- or right-padded prompts on device, for the engine
        (`vl_jax.generate`): every run of image tokens is one image of `image_hw` = (H, W)
        pixels (static, every row; or [B, 2] ints, each row's images; None: text only). Equal
        to `rope_index` on such prompts.

        Returns (positions [B, T, E/2] per rotary frequency, offsets [B]: a later token at slot
        i of a row with n real tokens before it has position n + offset in all sections)."""
        mask = jnp.asarray(attention_mask).astype(bool)
        c = jnp.cumsum(mask, axis=1) - 1  # the position if every token counted one
        pos = jnp.stack([c, c, c])
        if image_hw is not None:
            v = self.config.vision
            unit = v.patch_size * v.merge_size
            if isinstance(image_hw, tuple):
                gh, gw = (s // unit for s in image_hw)
                p, shift = gh * gw, max(gh, gw) - gh * gw  # an image advances max(h, w), not P
            else:  # per row [B, 1]; a row without images may name an empty one (kept >= 1)
                gh, gw = (jnp.asarray(image_hw, jnp.int32)[:, k : k + 1] // unit for k in (0, 1))
                p = jnp.maximum(gh * gw, 1)
                shift = jnp.maximum(gh, gw) - p
            is_image = (input_ids == self.config.image_token_id) & mask
            seen = jnp.cumsum(is_image, axis=1)  # image tokens up to and including this one
            k = (seen - 1) % p  # index in its image, row-major over the merged grid
            text = c + (seen // p) * shift
            start = c - k + ((seen - 1) // p) * shift
            pos = jnp.stack([
                jnp.where(is_image, start, text),
                jnp.where(is_image, start + k // gw, text),
                jnp.where(is_image, start + k % gw, text),
            ])  # fmt: skip
        pos = jnp.where(mask, pos, 0)
        offsets = pos.max(axis=(0, 2)) + 1 - mask.sum(axis=1)
        return rope_positions(pos, self.config), offsets.astype(jnp.int32)

    def decode(self, x, positions, attention_mask) -> jax.Array:
        """x [B, T, D] embeddings, positions [3, B, T], attention_mask [B, T] -> logits [B, T, V]
        float32 (no cache: a plain forward)."""
        hidden, _ = self.language_model.forward(
            x, rope_positions(positions, self.config), jnp.asarray(attention_mask).astype(bool)
        )
        return self.language_model.logits(hidden)

    def __call__(self, input_ids, pixel_values=None, image_grid_thw=None, attention_mask=None):
        """As HF's forward on the processor's outputs: input_ids [B, T], pixel_values
        [sum L, P], image_grid_thw [N, 3], attention_mask [B, T] -> logits [B, T, V] float32.
        Host-side steps (M-RoPE positions, grouping images by size), then jittable pieces."""
        ids = np.asarray(input_ids)
        if attention_mask is None:
            attention_mask = np.ones(ids.shape, np.int32)
        n_image = int((ids == self.config.image_token_id).sum())
        features = None
        if pixel_values is not None:
            grids = np.asarray(image_grid_thw).reshape(-1, 3)
            n_features = int(grids.prod(axis=1).sum()) // self.config.vision.merge_size**2
            if n_features != n_image:
                raise ValueError(
                    f"input_ids hold {n_image} image tokens, the images give {n_features}"
                )
            features = self.image_features(jnp.asarray(pixel_values), grids)
        elif n_image:
            raise ValueError(f"input_ids hold {n_image} image tokens but no pixel_values")
        positions, _ = rope_index(ids, image_grid_thw, attention_mask, self.config)
        return _forward(self, ids, features, positions, np.asarray(attention_mask))


@jax.jit
def _canvas_sizes(canvas: jax.Array) -> jax.Array:
    """`qwen2_vl_preprocess.image_sizes` on device: [N, Hc, Wc, 3] -> [N, 2] int32."""
    real = ~jnp.isnan(canvas[..., 0])
    hw = jnp.stack([real[:, :, 0].sum(1), real[:, 0, :].sum(1)], axis=-1).astype(jnp.int32)
    empty = (canvas == 0).reshape(canvas.shape[0], -1).all(axis=1)
    return jnp.where(empty[:, None], 0, hw)


# Compiled once per model structure and shape (the host-side `__call__` runs these).
_encode = jax.jit(lambda model, patches, hw: model.encode_patches(patches, hw), static_argnums=2)
_forward = jax.jit(
    lambda model, ids, features, positions, mask: model.decode(
        model.embed_inputs(ids, features), positions, mask
    )
)


# ---- checkpoints -------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Layout:
    """Key prefixes of a checkpoint: the hub's and `save_pretrained`'s (`model.*` decoder,
    `visual.*`), or transformers 5's in-memory names (`model.language_model.*`,
    `model.visual.*`); the output projection is `lm_head.weight` in both."""

    text: str
    vision: str


HUB = Layout("model.", "visual")
IN_MEMORY = Layout("model.language_model.", "model.visual")


def detect_layout(keys) -> Layout:
    return IN_MEMORY if any(k.startswith(IN_MEMORY.text) for k in keys) else HUB


def hf_rules(cfg: Qwen2VLConfig, layout: Layout = HUB) -> list[Rule]:
    """Our parameter paths <- checkpoint keys in `layout`."""
    rules = vision_rules(cfg.vision, "visual", layout.vision)
    text = llm.hf_rules(cfg.text, prefix=layout.text, lm_head="lm_head.weight")
    return rules + [dataclasses.replace(r, target=f"language_model.{r.target}") for r in text]


def hf_ignore(cfg: Qwen2VLConfig) -> tuple[str, ...]:
    """Keys deliberately not loaded: rotary buffers, a tied model's stored output matrix."""
    return llm.hf_ignore(cfg.text, "lm_head.weight")


def from_pretrained(
    path_or_id: str,
    dtype=jnp.float32,
    param_dtype=None,
    *,
    revision: str | None = None,
    cache_dir: str | None = None,
    shardings=None,
    mesh=None,
) -> Qwen2VL:
    """Loads a HF Qwen2-VL / Qwen2.5-VL checkpoint (single or sharded safetensors, fp32/fp16/bf16
    stored; hub or in-memory key names) from a directory or hub id, verifying every key and shape.

    Args:
      dtype: compute dtype; param_dtype: storage dtype (default `dtype`).
      shardings: optional callable `abstract_state -> shardings`; or `mesh`, for
        `vl_jax.parallel.param_shardings` on it. Each parameter is placed as it is read.
    Raises:
      ValueError: not a Qwen2-VL / Qwen2.5-VL checkpoint, or an unsupported option (named).
      CheckpointError: missing / unexpected / mis-shaped key (named).
    """
    import transformers

    path = resolve(path_or_id, revision=revision, cache_dir=cache_dir)
    hf = transformers.AutoConfig.from_pretrained(path, trust_remote_code=False)
    if hf.model_type not in ARCHITECTURES:
        raise ValueError(
            f"{path}: model_type '{hf.model_type}' is not one of {', '.join(ARCHITECTURES)}"
        )
    cfg = Qwen2VLConfig.from_hf(hf)
    if shardings is None and mesh is not None:
        from vl_jax import parallel

        shardings = functools.partial(parallel.param_shardings, mesh=mesh)
    reader = SafetensorsReader.from_dir(path)
    return load_model(
        lambda: Qwen2VL(cfg, dtype=dtype, param_dtype=param_dtype or dtype, rngs=nnx.Rngs(0)),
        hf_rules(cfg, detect_layout(reader.keys())),
        reader,
        where=path,
        ignore=hf_ignore(cfg),
        shardings=shardings,
    )


def load_processor(path_or_id: str, *, revision: str | None = None, cache_dir: str | None = None):
    """The checkpoint's processor: its tokenizer and chat template (`AutoTokenizer`, never remote
    code) with its image settings (`Qwen2VLPreprocess`, value for value transformers' PIL image
    processor), as `vl_jax.models.qwen2_vl_preprocess.Qwen2VLProcessor`. Its outputs go to our
    model unchanged (`pixel_values` are already flattened patches)."""
    from vl_jax.models.qwen2_vl_preprocess import Qwen2VLProcessor

    path = resolve(
        path_or_id,
        revision=revision,
        cache_dir=cache_dir,
        allow_patterns=(*DEFAULT_PATTERNS, "*.jinja"),
    )
    return Qwen2VLProcessor.from_pretrained(path)


def init(cfg: Qwen2VLConfig, seed: int = 0, dtype=jnp.float32, param_dtype=None) -> Qwen2VL:
    """A randomly initialised Qwen2-VL / Qwen2.5-VL (tests, benchmarks)."""
    return Qwen2VL(cfg, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(seed))
