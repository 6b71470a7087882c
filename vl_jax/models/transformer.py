"""Pre-LN transformer encoder blocks shared by the CLIP towers (and later vision towers).

Shape letters: B batch, T tokens, D width, K = 3 (q, k, v), H heads, E head dim, F MLP width.
Parameters carry partitioning metadata for the `model` mesh axis (Megatron-style: heads and MLP
columns split, output projections reduced), so the same module runs replicated or tensor-parallel.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from vl_jax.parallel import MODEL


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
    """Width/depth of a transformer tower."""

    width: int
    layers: int
    heads: int
    mlp_dim: int
    act: str = "quick_gelu"  # quick_gelu | gelu | gelu_tanh
    ln_eps: float = 1e-5

    def __post_init__(self):
        if self.width % self.heads:
            raise ValueError(f"width {self.width} is not divisible by heads {self.heads}")
        if self.act not in ACTIVATIONS:
            raise ValueError(
                f"unknown activation '{self.act}'; expected one of {sorted(ACTIVATIONS)}"
            )


def quick_gelu(x):
    """x * sigmoid(1.702 x): OpenAI CLIP's activation."""
    return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS = {
    "quick_gelu": quick_gelu,
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
}

# Hugging Face `hidden_act` names -> ours.
HF_ACTIVATIONS = {
    "quick_gelu": "quick_gelu",
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "gelu_fast": "gelu_tanh",
}


# Compute dtypes cuDNN's fused (flash) attention kernel accepts; float32 stays on XLA's path.
_FUSED_DTYPES = (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))


def attention_implementation(dtype, head_dim: int, q_len: int, platform: str | None = None) -> str:
    """'cudnn' where the accelerator has a fused attention kernel for these shapes, else 'xla'.

    `jax.nn.dot_product_attention(implementation=None)` still means XLA in this JAX release, so
    we choose: cuDNN on a GPU for bf16/fp16 queries of more than one token with a head dim the
    kernel takes (a multiple of 8, at most 128, which every supported model has); XLA's einsum +
    float32 softmax everywhere else (CPU, TPU, which fuses it itself, float32 and single-token
    decode steps, where a fused kernel has nothing to fuse: see `vl_jax.models.llm`)."""
    platform = platform or jax.default_backend()
    fused = jnp.dtype(dtype) in _FUSED_DTYPES and head_dim % 8 == 0 and head_dim <= 128
    return "cudnn" if platform == "gpu" and fused and q_len > 1 else "xla"


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None = None):
    """softmax(q k^T / sqrt(E)) v with scores and softmax in float32, through
    `jax.nn.dot_product_attention`: q [B, T, H, E]; k, v [B, S, K, E] (K divides H: query head
    h reads kv head h // (H / K)); mask bool broadcastable to [B, H, T, S] (True = attend) ->
    [B, T, H, E]. A fully masked row averages v uniformly, on both paths."""
    impl = attention_implementation(q.dtype, q.shape[-1], q.shape[1])
    if impl == "cudnn":
        try:
            return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="cudnn")
        except (NotImplementedError, ValueError, RuntimeError):
            pass  # a cuDNN build or shape the kernel refuses at trace time: XLA computes it
    if q.dtype == jnp.float16 and jax.default_backend() == "cpu":
        # XLA:CPU has no float16 dot with float32 accumulation (the F16_F16_F32 preset the XLA
        # path asks for), so float16 attention is computed in float32 there.
        y = jax.nn.dot_product_attention(
            *(a.astype(jnp.float32) for a in (q, k, v)), mask=mask, implementation="xla"
        )
        return y.astype(q.dtype)
    return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="xla")


def sharded(init, names):
    # eager_sharding=False: parameters record their partitioning but are placed on devices by
    # `vl_jax.parallel.shard_state`, so models can also be built outside a mesh context.
    return nnx.with_partitioning(init, names, eager_sharding=False)


class Attention(nnx.Module):
    """Multi-head self-attention with a fused q/k/v projection ([D, 3, H, E] kernel)."""

    def __init__(self, width: int, heads: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.heads = heads
        head_dim = width // heads
        init = nnx.initializers.lecun_normal()
        self.qkv = nnx.Param(
            sharded(init, (None, None, MODEL, None))(
                rngs.params(), (width, 3, heads, head_dim), param_dtype
            )
        )
        self.qkv_bias = nnx.Param(
            sharded(nnx.initializers.zeros, (None, MODEL, None))(
                rngs.params(), (3, heads, head_dim), param_dtype
            )
        )
        self.out = nnx.Param(
            sharded(init, (MODEL, None, None))(rngs.params(), (heads, head_dim, width), param_dtype)
        )
        self.out_bias = nnx.Param(nnx.initializers.zeros(rngs.params(), (width,), param_dtype))
        self.dtype = dtype

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """x [B, T, D]; mask bool broadcastable to [B, H, T, T] (True = attend) -> [B, T, D]."""
        dt = self.dtype
        qkv = jnp.einsum("btd,dkhe->btkhe", x, self.qkv[...].astype(dt)) + self.qkv_bias[
            ...
        ].astype(dt)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        y = attention(q, k, v, mask)
        return jnp.einsum("bthe,hed->btd", y, self.out[...].astype(dt)) + self.out_bias[...].astype(
            dt
        )


class MLP(nnx.Module):
    def __init__(self, width: int, mlp_dim: int, act: str, *, dtype, param_dtype, rngs: nnx.Rngs):
        init = nnx.initializers.lecun_normal()
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.fc1 = nnx.Linear(
            width,
            mlp_dim,
            kernel_init=sharded(init, (None, MODEL)),
            bias_init=sharded(nnx.initializers.zeros, (MODEL,)),
            **kw,
        )
        self.fc2 = nnx.Linear(mlp_dim, width, kernel_init=sharded(init, (MODEL, None)), **kw)
        self.act = ACTIVATIONS[act]

    def __call__(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nnx.Module):
    """x + attn(ln1(x)); x + mlp(ln2(x))."""

    def __init__(self, cfg: EncoderConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.ln1 = nnx.LayerNorm(cfg.width, epsilon=cfg.ln_eps, **kw)
        self.attn = Attention(cfg.width, cfg.heads, **kw)
        self.ln2 = nnx.LayerNorm(cfg.width, epsilon=cfg.ln_eps, **kw)
        self.mlp = MLP(cfg.width, cfg.mlp_dim, cfg.act, **kw)

    def __call__(self, x, mask=None):
        x = x + self.attn(self.ln1(x), mask)
        return x + self.mlp(self.ln2(x))


class Encoder(nnx.Module):
    """A stack of `Block`s. `__call__` returns the final hidden states, or those after the first
    `num_layers` blocks (LLaVA-style feature selection uses the penultimate layer)."""

    def __init__(self, cfg: EncoderConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        self.layers = nnx.List(
            [Block(cfg, dtype=dtype, param_dtype=param_dtype, rngs=rngs) for _ in range(cfg.layers)]
        )

    def __call__(self, x, mask=None, num_layers: int | None = None):
        for block in self.layers[:num_layers]:
            x = block(x, mask)
        return x
