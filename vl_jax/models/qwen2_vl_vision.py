"""The vision towers of Qwen2-VL and Qwen2.5-VL in Flax NNX (HF `Qwen2VisionTransformerPretrainedModel`
and `Qwen2_5_VisionTransformerPretrainedModel`).

    tower = VisionTower(cfg, rngs=nnx.Rngs(0))
    features = tower(patches, grid_hw=(h, w))       # [N, h*w, P] -> [N, h*w / m^2, D]

An image of any size (sides multiples of `patch_size * merge_size`, see
`vl_jax.models.qwen2_vl_preprocess`) arrives as h x w flattened patches in HF's layout: each patch
vector is (channel, temporal, row, column) of a `temporal_patch_size x p x p` block (a still image
is repeated over the temporal axis), and patches are ordered block-major over `m x m` merge
blocks: (block row, block column, row in block, column in block). The tower embeds each patch
(the Conv3d whose kernel equals its stride is a matmul), runs pre-norm blocks with 2-D rotary
positions (half of each head's frequencies rotate by the patch row, half by its column), and the
merger concatenates each block's m^2 consecutive patches into one token of the LLM width.

Differences between the two versions, all read from the checkpoint's config:

| | Qwen2-VL | Qwen2.5-VL |
|---|---|---|
| norms (blocks, merger) | LayerNorm | RMSNorm |
| MLP | fc1 -> act (quick_gelu) -> fc2 | SwiGLU with biases (silu) |
| attention | full, per image | windows of `window_size` px; `fullatt_block_indexes` full |

HF reorders the whole sequence window by window once and attends within `cu_seqlens` segments;
we keep the processor's patch order between layers and, inside each windowed attention, gather
q/k/v into windows padded to the full window size (edge windows hold fewer patches; padding keys
are masked), attend per window and scatter back (`WindowLayout`). The keys each query reads are
the same set, so the result is the same up to summation order, at O(L x window) cost instead of
O(L^2). Only still images (one temporal patch) are supported.

Shape letters: N images of one size, L = h*w patches, P patch vector, C width, H heads, E head
dim, F MLP width, D output (LLM) width, m merge size.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vl_jax.checkpoints.mapping import Rule, copy, linear, reshaped, split_rows
from vl_jax.models.llm import RMSNorm
from vl_jax.models.transformer import HF_ACTIVATIONS, MLP, attention, sharded
from vl_jax.parallel import MODEL

__all__ = [
    "PaddedLayout",
    "VisionConfig",
    "VisionTower",
    "WindowLayout",
    "padded_layout",
    "patch_positions",
    "vision_rules",
    "window_ids",
    "window_layout",
]

_EPS = 1e-6  # both towers' norms (hard-coded in HF's modules, not in the config)


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """A Qwen2-VL / Qwen2.5-VL vision tower. `window_size` (px) is None for Qwen2-VL."""

    width: int
    depth: int
    heads: int
    mlp_dim: int
    act: str  # the blocks' activation, our name (`transformer.ACTIVATIONS`) or "silu"
    out_width: int
    patch_size: int = 14
    temporal_patch_size: int = 2
    merge_size: int = 2
    in_channels: int = 3
    rope_theta: float = 10000.0
    window_size: int | None = None
    fullatt_blocks: tuple[int, ...] = ()

    def __post_init__(self):
        if self.width % self.heads or (self.width // self.heads) % 4:
            raise ValueError(
                f"vision width {self.width} / {self.heads} heads must give a head dim divisible "
                "by 4 (2-D rotary: half the frequencies per axis)"
            )

    @property
    def swiglu(self) -> bool:
        """Qwen2.5-VL's blocks (RMSNorm, SwiGLU); Qwen2-VL's are LayerNorm / fc1-fc2."""
        return self.window_size is not None

    @property
    def patch_dim(self) -> int:
        """P: length of one flattened patch vector."""
        return self.in_channels * self.temporal_patch_size * self.patch_size**2

    @classmethod
    def from_hf(cls, v, model_type: str) -> VisionConfig:
        """From a transformers `Qwen2VLVisionConfig` / `Qwen2_5_VLVisionConfig`."""
        sizes = []
        for name in ("patch_size", "temporal_patch_size"):
            s = getattr(v, name)
            if isinstance(s, (list, tuple)):
                if len(set(s)) != 1:
                    raise ValueError(f"non-uniform vision {name} {s} is not supported")
                s = s[0]
            sizes.append(int(s))
        rope = dict(getattr(v, "rope_parameters", None) or {})
        if rope.get("rope_type", "axial") != "axial":
            raise ValueError(f"vision rope_type '{rope['rope_type']}' is not supported (axial)")
        common = dict(
            depth=v.depth, heads=v.num_heads, patch_size=sizes[0], temporal_patch_size=sizes[1],
            merge_size=v.spatial_merge_size, in_channels=v.in_channels,
            rope_theta=float(rope.get("rope_theta", 10000.0)),
        )  # fmt: skip
        if model_type == "qwen2_vl":
            act = HF_ACTIVATIONS.get(v.hidden_act)
            if act is None:
                raise ValueError(f"unsupported Qwen2-VL vision hidden_act '{v.hidden_act}'")
            return cls(
                width=v.embed_dim, mlp_dim=int(v.embed_dim * v.mlp_ratio), act=act,
                out_width=v.hidden_size, **common,
            )  # fmt: skip
        if v.hidden_act != "silu":
            raise ValueError(f"unsupported Qwen2.5-VL vision hidden_act '{v.hidden_act}'")
        return cls(
            width=v.hidden_size, mlp_dim=v.intermediate_size, act="silu",
            out_width=v.out_hidden_size, window_size=int(v.window_size),
            fullatt_blocks=tuple(int(i) for i in v.fullatt_block_indexes), **common,
        )  # fmt: skip


def patch_positions(grid_hw: tuple[int, int], merge: int) -> np.ndarray:
    """(row, column) [L, 2] of each patch in HF's block-major order (`get_vision_position_ids`)."""
    h, w = grid_hw
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    block = lambda a: a.reshape(h // merge, merge, w // merge, merge).transpose(0, 2, 1, 3)
    return np.stack([block(rows).reshape(-1), block(cols).reshape(-1)], axis=-1)


def window_ids(grid_hw: tuple[int, int], cfg: VisionConfig) -> np.ndarray:
    """[L] the attention window of each patch (Qwen2.5-VL): windows are squares of
    `window_size // merge_size // patch_size` merged tokens from the top-left corner, the last
    row / column of windows cut by the image edge (`get_vision_window_index`)."""
    ws = cfg.window_size // cfg.merge_size // cfg.patch_size
    pos = patch_positions(grid_hw, cfg.merge_size) // cfg.merge_size  # merged-token row, column
    per_row = -(-(grid_hw[1] // cfg.merge_size) // ws)
    return (pos[:, 0] // ws) * per_row + pos[:, 1] // ws


class WindowLayout(NamedTuple):
    """Static gather / scatter indices of windowed attention over one image's L patches:
    `gather` [W * S] the patch at each slot of each window (L: a padding slot, reads a zero
    row), `valid` [W, S] real slots, `scatter` [L] each patch's slot. S = (window in merged
    tokens)^2 * m^2 patches; windows and their slots in HF's window order (row-major)."""

    gather: np.ndarray
    valid: np.ndarray
    scatter: np.ndarray


def window_layout(grid_hw: tuple[int, int], cfg: VisionConfig) -> WindowLayout:
    """The windows of `window_ids` laid out for gathered attention (see `WindowLayout`)."""
    h, w = grid_hw
    m, ws = cfg.merge_size, cfg.window_size // cfg.merge_size // cfg.patch_size
    gh, gw = h // m, w // m
    nh, nw = -(-gh // ws), -(-gw // ws)
    token = np.full((nh * ws, nw * ws), -1)  # merged token index on the padded grid
    token[:gh, :gw] = np.arange(gh * gw).reshape(gh, gw)
    token = token.reshape(nh, ws, nw, ws).transpose(0, 2, 1, 3).reshape(nh * nw, ws * ws)
    # Each merged token is m^2 consecutive patches in the processor's order.
    patch = token[..., None] * m * m + np.arange(m * m)
    valid = np.repeat(token >= 0, m * m, axis=1)
    gather = np.where(valid, patch.reshape(valid.shape), h * w).reshape(-1)
    scatter = np.empty(h * w, np.int64)
    scatter[gather[gather < h * w]] = np.flatnonzero(gather < h * w)
    return WindowLayout(gather, valid, scatter)


class PaddedLayout(NamedTuple):
    """Images of different sizes in one batch, each padded to Lb patch slots (a pytree of
    arrays; see `padded_layout`): positions [N, Lb, 2] (row, column) of each slot's patch,
    valid [N, Lb] real slots, windows a batched `WindowLayout` (gather [N, Wb * S] slot
    indices, Lb = padding; valid [N, Wb, S]; scatter [N, Lb]) or None (Qwen2-VL)."""

    positions: np.ndarray
    valid: np.ndarray
    windows: WindowLayout | None


def padded_layout(grids, cfg: VisionConfig, num_patches: int, num_windows: int) -> PaddedLayout:
    """The layout of N images of different sizes, each padded to `num_patches` slots (Lb).

    grids [N, 2] (h, w) patches per image (0, 0 for a padding image); `num_patches` >= every
    h * w and a multiple of m^2 (each merged token is m^2 whole slots, so real tokens come
    first and padding tokens after them); `num_windows` (Wb) >= every image's window count
    (ignored without windows). Host numpy; the shapes are the compile-time buckets."""
    grids = np.asarray(grids, np.int64).reshape(-1, 2)
    n, lb, m = len(grids), int(num_patches), cfg.merge_size
    if lb % (m * m) or (grids.prod(axis=1) > lb).any():
        raise ValueError(f"num_patches {lb}: need a multiple of {m * m} >= {grids.prod(1).max()}")
    positions = np.zeros((n, lb, 2), np.int32)
    valid = np.zeros((n, lb), bool)
    windows = None
    if cfg.window_size is not None:
        ws = cfg.window_size // cfg.merge_size // cfg.patch_size
        size = ws * ws * m * m
        gather = np.full((n, num_windows * size), lb, np.int32)  # lb: the zero padding row
        wvalid = np.zeros((n, num_windows, size), bool)
        scatter = np.zeros((n, lb), np.int32)
        windows = WindowLayout(gather, wvalid, scatter)
    for i, (h, w) in enumerate(grids.tolist()):
        if not h * w:
            continue
        positions[i, : h * w] = patch_positions((h, w), m)
        valid[i, : h * w] = True
        if windows is not None:
            one = window_layout((h, w), cfg)
            if len(one.valid) > num_windows:
                raise ValueError(f"num_windows {num_windows} < {len(one.valid)} for {h}x{w}")
            g = one.gather
            windows.gather[i, : len(g)] = np.where(g == h * w, lb, g)
            windows.valid[i, : len(one.valid)] = one.valid
            windows.scatter[i, : h * w] = one.scatter
    return PaddedLayout(positions, valid, windows)


def _windowed(q, k, v, layout: WindowLayout):
    """Attention within windows: q, k, v [N, L, H, E] -> [N, L, H, E]. The layout is one
    image size's (static numpy, [W * S] / [W, S] / [L]) or per image (batched, [N, ...])."""
    n, _, h, e = q.shape
    nwin, size = layout.valid.shape[-2:]
    batched = layout.valid.ndim == 3

    def gather(a):
        a = jnp.concatenate([a, jnp.zeros((n, 1, h, e), a.dtype)], axis=1)  # row L: padding
        if batched:
            a = jnp.take_along_axis(a, layout.gather[:, :, None, None], axis=1)
        else:
            a = a[:, layout.gather]
        return a.reshape(n * nwin, size, h, e)

    valid = jnp.asarray(layout.valid)
    valid = valid.reshape(n * nwin, size) if batched else jnp.tile(valid, (n, 1))
    y = attention(gather(q), gather(k), gather(v), valid[:, None, None, :])
    y = y.reshape(n, nwin * size, h, e)
    if batched:
        return jnp.take_along_axis(y, layout.scatter[:, :, None, None], axis=1)
    return y[:, layout.scatter]


def _rope_tables(grid_hw, cfg: VisionConfig, positions=None, xp=np):
    """cos, sin [L, E] in float32: frequencies over E/4, the first E/4 angles use the patch row,
    the next E/4 its column, then repeated (HF's half-split rotation over the whole head).
    With `positions` [..., L, 2] (row, column; `xp=jnp` for traced ones): [..., L, E]."""
    e = cfg.width // cfg.heads
    half = e // 2
    inv = 1.0 / (cfg.rope_theta ** (np.arange(0, half, 2, dtype=np.float32) / half))
    if positions is None:
        positions = patch_positions(grid_hw, cfg.merge_size)
    pos = positions.astype(xp.float32)
    freqs = xp.concatenate([pos[..., :1] * inv, pos[..., 1:] * inv], axis=-1)  # [..., L, E/2]
    emb = xp.concatenate([freqs, freqs], axis=-1)
    return xp.cos(emb), xp.sin(emb)


def _rotate(x, cos, sin):
    """x [N, L, H, E] rotated in float32 (HF's `apply_rotary_pos_emb_vision`), back to x.dtype;
    cos, sin [L, E] (one image size) or [N, L, E] (per image)."""
    x32 = x.astype(jnp.float32)
    x1, x2 = jnp.split(x32, 2, axis=-1)
    cos, sin = cos[..., None, :], sin[..., None, :]
    out = x32 * cos + jnp.concatenate([-x2, x1], axis=-1) * sin
    return out.astype(x.dtype)


class VisionAttention(nnx.Module):
    """Self-attention with a fused q/k/v projection ([C, 3, H, E] + bias) and 2-D rotary."""

    def __init__(self, cfg: VisionConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        c, h = cfg.width, cfg.heads
        init = nnx.initializers.lecun_normal()
        self.qkv = nnx.Param(
            sharded(init, (None, None, MODEL, None))(rngs.params(), (c, 3, h, c // h), param_dtype)
        )
        self.qkv_bias = nnx.Param(
            sharded(nnx.initializers.zeros, (None, MODEL, None))(
                rngs.params(), (3, h, c // h), param_dtype
            )
        )
        self.proj = nnx.Linear(
            c, c, kernel_init=sharded(init, (MODEL, None)), dtype=dtype, param_dtype=param_dtype,
            rngs=rngs,
        )  # fmt: skip
        self.heads, self.dtype = h, dtype

    def __call__(self, x, cos, sin, windows: WindowLayout | None = None, valid=None):
        """x [N, L, C]; cos, sin [L, E] or [N, L, E]; windows None (full attention over the
        image) or a `WindowLayout`; valid [N, L] the real patches (padded images; padding keys
        are masked in full attention, windows mask their own) -> [N, L, C]."""
        dt = self.dtype
        qkv = jnp.einsum("nlc,ckhe->nlkhe", x, self.qkv[...].astype(dt))
        qkv = qkv + self.qkv_bias[...].astype(dt)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        if windows is not None:
            y = _windowed(q, k, v, windows)
        else:
            y = attention(q, k, v, None if valid is None else valid[:, None, None, :])
        return self.proj(y.reshape(*y.shape[:2], -1))


class SwiGLU(nnx.Module):
    """down(silu(gate(x)) * up(x)), every projection with a bias (Qwen2.5-VL's vision MLP)."""

    def __init__(self, width: int, hidden: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        init = nnx.initializers.lecun_normal()
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        col = dict(kernel_init=sharded(init, (None, MODEL)), bias_init=sharded(
            nnx.initializers.zeros, (MODEL,)))  # fmt: skip
        self.gate = nnx.Linear(width, hidden, **col, **kw)
        self.up = nnx.Linear(width, hidden, **col, **kw)
        self.down = nnx.Linear(hidden, width, kernel_init=sharded(init, (MODEL, None)), **kw)

    def __call__(self, x):
        return self.down(jax.nn.silu(self.gate(x)) * self.up(x))


def _norm(cfg: VisionConfig, dim: int, *, param_dtype, dtype, rngs):
    if cfg.swiglu:
        return RMSNorm(dim, _EPS, param_dtype=param_dtype, rngs=rngs)
    return nnx.LayerNorm(dim, epsilon=_EPS, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


class VisionBlock(nnx.Module):
    """x + attn(norm1(x)); x + mlp(norm2(x))."""

    def __init__(self, cfg: VisionConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.norm1 = _norm(cfg, cfg.width, **kw)
        self.attn = VisionAttention(cfg, **kw)
        self.norm2 = _norm(cfg, cfg.width, **kw)
        if cfg.swiglu:
            self.mlp = SwiGLU(cfg.width, cfg.mlp_dim, **kw)
        else:
            self.mlp = MLP(cfg.width, cfg.mlp_dim, cfg.act, **kw)

    def __call__(self, x, cos, sin, windows=None, valid=None):
        x = x + self.attn(self.norm1(x), cos, sin, windows, valid)
        return x + self.mlp(self.norm2(x))


class Merger(nnx.Module):
    """norm, then each m^2 consecutive patches -> one token: Linear(m^2 C) -> GELU -> Linear(D)."""

    def __init__(self, cfg: VisionConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        wide = cfg.width * cfg.merge_size**2
        init = nnx.initializers.lecun_normal()
        self.ln_q = _norm(cfg, cfg.width, **kw)
        self.fc1 = nnx.Linear(wide, wide, kernel_init=sharded(init, (None, MODEL)), **kw)
        self.fc2 = nnx.Linear(wide, cfg.out_width, kernel_init=sharded(init, (MODEL, None)), **kw)
        self.wide = wide

    def __call__(self, x):
        """[N, L, C] -> [N, L / m^2, D]."""
        x = self.ln_q(x).reshape(x.shape[0], -1, self.wide)
        return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class VisionTower(nnx.Module):
    """Patch embedding, blocks with 2-D rotary (windowed for Qwen2.5-VL), patch merger."""

    def __init__(self, cfg: VisionConfig, *, dtype=jnp.float32, param_dtype=None, rngs: nnx.Rngs):
        param_dtype = param_dtype or dtype
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        init = nnx.initializers.lecun_normal()
        self.patch_embed = nnx.Linear(
            cfg.patch_dim, cfg.width, use_bias=False, kernel_init=sharded(init, (None, MODEL)), **kw
        )
        self.blocks = nnx.List([VisionBlock(cfg, **kw) for _ in range(cfg.depth)])
        self.merger = Merger(cfg, **kw)
        self.cfg, self.dtype = cfg, dtype

    def __call__(self, patches: jax.Array, grid_hw: tuple[int, int]) -> jax.Array:
        """patches [N, L, P] of N images of `grid_hw` = (h, w) patches each (static) ->
        [N, L / m^2, D], the merged tokens in the processor's order (HF `pooler_output`)."""
        cfg = self.cfg
        h, w = (int(s) for s in grid_hw)
        m = cfg.merge_size
        if h % m or w % m or patches.shape[1] != h * w or patches.shape[2] != cfg.patch_dim:
            raise ValueError(
                f"patches {patches.shape} do not hold a {h}x{w} grid of {cfg.patch_dim}-long "
                f"patches with sides multiples of {m}"
            )
        cos, sin = (jnp.asarray(t) for t in _rope_tables((h, w), cfg))
        windowed = None if cfg.window_size is None else window_layout((h, w), cfg)
        x = self.patch_embed(patches.astype(self.dtype))
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, None if i in cfg.fullatt_blocks else windowed)
        return self.merger(x)

    def encode_padded(self, patches: jax.Array, layout: PaddedLayout) -> jax.Array:
        """patches [N, Lb, P] of N images of different sizes, each padded to Lb slots (zeros
        after its h * w patches; `padded_layout`) -> [N, Lb / m^2, D]: image i's merged
        tokens first, in the processor's order, then padding tokens. The real tokens equal
        `__call__` on the unpadded image: a real patch attends only to real patches of its
        image (full layers mask padding keys, windowed layers keep each image's windows)."""
        cfg = self.cfg
        lb = patches.shape[1]
        if patches.shape[2] != cfg.patch_dim or lb % cfg.merge_size**2:
            raise ValueError(f"patches {patches.shape}: need [N, Lb (x{cfg.merge_size**2}), "
                             f"{cfg.patch_dim}]")  # fmt: skip
        cos, sin = _rope_tables(None, cfg, layout.positions, xp=jnp)
        x = self.patch_embed(patches.astype(self.dtype))
        for i, block in enumerate(self.blocks):
            full = i in cfg.fullatt_blocks or layout.windows is None
            x = block(x, cos, sin, None if full else layout.windows, layout.valid)
        return self.merger(x)


# ---- checkpoints -------------------------------------------------------------------------------


def _linear_rules(ours: str, theirs: str, bias: bool = True) -> list[Rule]:
    rules = [linear(f"{ours}.kernel", f"{theirs}.weight")]
    return rules + ([copy(f"{ours}.bias", f"{theirs}.bias")] if bias else [])


def _norm_rules(cfg: VisionConfig, ours: str, theirs: str) -> list[Rule]:
    if cfg.swiglu:
        return [copy(f"{ours}.scale", f"{theirs}.weight")]
    return [copy(f"{ours}.scale", f"{theirs}.weight"), copy(f"{ours}.bias", f"{theirs}.bias")]


def vision_rules(cfg: VisionConfig, ours: str, theirs: str) -> list[Rule]:
    """Our VisionTower under `ours` <- HF vision keys under `theirs` (e.g. "visual")."""
    c, h, p = cfg.width, cfg.heads, cfg.patch_size
    e = c // h
    k = (cfg.in_channels, cfg.temporal_patch_size, p, p)
    # Conv3d weight [C, ch, t, p, p] -> [ch*t*p*p, C]: the patch vector's (ch, t, row, col) order.
    rules = [
        reshaped(
            f"{ours}.patch_embed.kernel", f"{theirs}.patch_embed.proj.weight",
            (cfg.patch_dim, c), (c, *k), (1, 2, 3, 4, 0),
        ),
    ]  # fmt: skip
    for i in range(cfg.depth):
        o, t = f"{ours}.blocks.{i}", f"{theirs}.blocks.{i}"
        rules += _norm_rules(cfg, f"{o}.norm1", f"{t}.norm1")
        rules += _norm_rules(cfg, f"{o}.norm2", f"{t}.norm2")
        rules += [
            split_rows(f"{o}.attn.qkv", f"{t}.attn.qkv.weight", (c, 3, h, e), transpose=True),
            split_rows(f"{o}.attn.qkv_bias", f"{t}.attn.qkv.bias", (3, h, e), transpose=False),
            *_linear_rules(f"{o}.attn.proj", f"{t}.attn.proj"),
        ]
        names = ("gate", "up", "down") if cfg.swiglu else ("fc1", "fc2")
        for name in names:
            theirs_name = f"{name}_proj" if cfg.swiglu else name
            rules += _linear_rules(f"{o}.mlp.{name}", f"{t}.mlp.{theirs_name}")
    rules += _norm_rules(cfg, f"{ours}.merger.ln_q", f"{theirs}.merger.ln_q")
    rules += _linear_rules(f"{ours}.merger.fc1", f"{theirs}.merger.mlp.0")
    rules += _linear_rules(f"{ours}.merger.fc2", f"{theirs}.merger.mlp.2")
    return rules
