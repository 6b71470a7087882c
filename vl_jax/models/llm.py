"""Decoder-only LLMs of the Llama family in Flax NNX: Llama 2/3, Vicuna, Mistral, Qwen2/2.5.

    model = llm.from_pretrained("Qwen/Qwen2.5-0.5B-Instruct", dtype=jnp.bfloat16)
    logits = model(input_ids, attention_mask)          # [B, T] -> [B, T, V] float32

RMSNorm, rotary embeddings (default, linear and Llama-3 frequency scaling), grouped-query attention,
SwiGLU MLP, optional q/k/v bias (Qwen2), tied or separate output embedding, optional sliding-window
attention (Mistral). For generation, `forward` runs on embeddings with explicit positions and a
preallocated KV cache (see `vl_jax.generate`). Shape letters: B batch, T new tokens, S cache slots,
D width, H query heads, K key/value heads, E head dim, F MLP width, V vocabulary.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from vl_jax.checkpoints import SafetensorsReader, resolve
from vl_jax.checkpoints.mapping import Rule, copy, linear, load_model, reshaped
from vl_jax.models.transformer import attention, sharded
from vl_jax.parallel import MODEL

SUPPORTED = ("llama", "mistral", "qwen2")


@dataclasses.dataclass(frozen=True)
class LLMConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_eps: float = 1e-6
    rope_theta: float = 10000.0
    # None, or {"rope_type": "linear", "factor"} / {"rope_type": "llama3", "factor",
    # "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}.
    rope_scaling: tuple | None = None
    attention_bias: bool = False  # q/k/v projections with bias (Qwen2)
    tie_word_embeddings: bool = False
    sliding_window: int | None = None  # Mistral: keys further back than this are not attended

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"{self.num_heads} heads do not group over {self.num_kv_heads} kv heads"
            )

    @classmethod
    def from_hf(cls, c) -> LLMConfig:
        """From a transformers `LlamaConfig` / `MistralConfig` / `Qwen2Config`."""
        if c.model_type not in SUPPORTED:
            raise ValueError(
                f"unsupported architecture '{c.model_type}' "
                f"({getattr(c, 'architectures', None)}); supported: {', '.join(SUPPORTED)}"
            )
        rope = dict(getattr(c, "rope_parameters", None) or getattr(c, "rope_scaling", None) or {})
        theta = rope.pop("rope_theta", getattr(c, "rope_theta", 10000.0))
        kind = rope.get("rope_type", rope.get("type", "default"))
        if kind not in ("default", "linear", "llama3"):
            raise ValueError(f"unsupported rope_type '{kind}' (supported: default, linear, llama3)")
        scaling = None if kind == "default" else tuple(sorted({**rope, "rope_type": kind}.items()))
        window = None
        if c.model_type == "mistral":
            window = c.sliding_window
        elif c.model_type == "qwen2" and getattr(c, "use_sliding_window", False):
            raise ValueError("Qwen2 with use_sliding_window=True is not supported")
        heads = c.num_attention_heads
        return cls(
            vocab_size=c.vocab_size,
            hidden_size=c.hidden_size,
            intermediate_size=c.intermediate_size,
            num_layers=c.num_hidden_layers,
            num_heads=heads,
            num_kv_heads=getattr(c, "num_key_value_heads", None) or heads,
            head_dim=getattr(c, "head_dim", None) or c.hidden_size // heads,
            rms_eps=c.rms_norm_eps,
            rope_theta=float(theta),
            rope_scaling=scaling,
            attention_bias=c.model_type == "qwen2" or bool(getattr(c, "attention_bias", False)),
            tie_word_embeddings=bool(c.tie_word_embeddings),
            sliding_window=window,
        )


def rope_inv_freq(cfg: LLMConfig) -> jax.Array:
    """Inverse frequencies [E/2] of the rotary embedding, with the configured scaling."""
    e = cfg.head_dim
    inv = 1.0 / (cfg.rope_theta ** (jnp.arange(0, e, 2, dtype=jnp.float32) / e))
    if cfg.rope_scaling is None:
        return inv
    s = dict(cfg.rope_scaling)
    if s["rope_type"] == "linear":
        return inv / s["factor"]
    # Llama 3.1: long wavelengths slowed by `factor`, short ones kept, a smooth ramp between.
    factor, low, high = s["factor"], s["low_freq_factor"], s["high_freq_factor"]
    old = s["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv
    scaled = jnp.where(wavelen > old / low, inv / factor, inv)
    smooth = (old / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old / high) & (wavelen <= old / low)
    return jnp.where(medium, smoothed, scaled)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
    """x [B, T, N, E] rotated by positions [B, T] (HF's half-split convention, not interleaved),
    or by one position per frequency [B, T, E/2] (multimodal rotary: Qwen2-VL's M-RoPE gives
    each section of frequencies its own temporal / height / width position)."""
    pos = positions.astype(jnp.float32)
    freqs = pos * inv_freq if positions.ndim == 3 else pos[..., None] * inv_freq  # [B, T, E/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
    cos, sin = jnp.cos(emb).astype(x.dtype), jnp.sin(emb).astype(x.dtype)
    x1, x2 = jnp.split(x, 2, axis=-1)
    return x * cos + jnp.concatenate([-x2, x1], axis=-1) * sin


class RMSNorm(nnx.Module):
    """x / rms(x) * scale, reduced in float32 (as HF does) whatever the compute dtype."""

    def __init__(self, dim: int, eps: float, *, param_dtype, rngs: nnx.Rngs):
        self.scale = nnx.Param(jnp.ones((dim,), param_dtype))
        self.eps = eps

    def __call__(self, x):
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return self.scale[...].astype(x.dtype) * y.astype(x.dtype)


class KVCache(NamedTuple):
    """Per-layer keys and values, each [B, K, S, E]; slot s holds the token written at step s."""

    k: tuple[jax.Array, ...]
    v: tuple[jax.Array, ...]


class Attention(nnx.Module):
    def __init__(self, cfg: LLMConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        d, h, k, e = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        init = nnx.initializers.lecun_normal()
        param = lambda shape, names, fn=init: nnx.Param(
            sharded(fn, names)(rngs.params(), shape, param_dtype)
        )
        self.q = param((d, h, e), (None, MODEL, None))
        self.k = param((d, k, e), (None, MODEL, None))
        self.v = param((d, k, e), (None, MODEL, None))
        self.o = param((h, e, d), (MODEL, None, None))
        zeros = nnx.initializers.zeros
        self.bias = cfg.attention_bias
        if cfg.attention_bias:
            self.q_bias = param((h, e), (MODEL, None), zeros)
            self.k_bias = param((k, e), (MODEL, None), zeros)
            self.v_bias = param((k, e), (MODEL, None), zeros)
        self.dtype = dtype

    def __call__(self, x, positions, inv_freq, mask, cache_kv, cache_index):
        """x [B, T, D]; mask [B, 1, T, S] bool; cache_kv None or ([B, K, S, E], [B, K, S, E])."""
        dt = self.dtype
        proj = lambda w, b: (
            jnp.einsum("btd,dne->btne", x, w[...].astype(dt))
            + (b[...].astype(dt) if self.bias else 0)
        )
        q = proj(self.q, getattr(self, "q_bias", None))
        k = proj(self.k, getattr(self, "k_bias", None))
        v = proj(self.v, getattr(self, "v_bias", None))
        q, k = apply_rope(q, positions, inv_freq), apply_rope(k, positions, inv_freq)
        # Keys/values live as [B, K, S, E]: batch-like dims lead, so the attention matmuls read
        # the cache in place instead of transposing all S slots at every decode step.
        k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
        if cache_kv is not None:
            start = (0, 0, cache_index, 0)
            k = jax.lax.dynamic_update_slice(cache_kv[0], k.astype(cache_kv[0].dtype), start)
            v = jax.lax.dynamic_update_slice(cache_kv[1], v.astype(cache_kv[1].dtype), start)
        if q.shape[1] > 1:
            # Prefill (or a plain forward): a fused kernel's shape. Only slots below
            # cache_index + T can be attended (causality), so with a static start the keys stop
            # there instead of spanning the new-token slots not written yet.
            end = cache_index + q.shape[1] if isinstance(cache_index, int) else k.shape[2]
            kt, vt = (c[:, :, :end].transpose(0, 2, 1, 3).astype(q.dtype) for c in (k, v))
            y = attention(q, kt, vt, mask[..., :end])
        else:
            # Decode step: one query row per sequence reads the whole cache, a memory-bound
            # matrix-vector product; the einsum reads the [B, K, S, E] cache in place, where a
            # fused kernel would first need it transposed to [B, S, K, E] at every step.
            y = grouped_attention(q, k, v, mask)
        out = jnp.einsum("bthe,hed->btd", y, self.o[...].astype(dt))
        return out, (k, v)


def grouped_attention(q, k, v, mask):
    """Grouped-query attention. q [B, T, H, E]; k, v [B, K, S, E]; mask [B, 1, T, S] bool ->
    [B, T, H, E]. Query head h reads kv head h // (H / K), as HF's `repeat_kv` arranges them.
    Scores and softmax in float32; fully masked rows give a uniform average, not NaN (as HF)."""
    b, t, h, e = q.shape
    kv = k.shape[1]
    qg = q.reshape(b, t, kv, h // kv, e).transpose(0, 2, 3, 1, 4)  # [B, K, G, T, E]
    scores = jnp.einsum(
        "bkgte,bkse->bkgts", qg, k.astype(q.dtype), preferred_element_type=jnp.float32
    )
    scores = jnp.where(mask[:, :, None], scores / math.sqrt(e), jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
    y = jnp.einsum("bkgts,bkse->bkgte", probs, v.astype(q.dtype))
    return y.transpose(0, 3, 1, 2, 4).reshape(b, t, h, e)


class Block(nnx.Module):
    def __init__(self, cfg: LLMConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        d, f = cfg.hidden_size, cfg.intermediate_size
        init = nnx.initializers.lecun_normal()
        self.attn_norm = RMSNorm(d, cfg.rms_eps, param_dtype=param_dtype, rngs=rngs)
        self.attn = Attention(cfg, **kw)
        self.mlp_norm = RMSNorm(d, cfg.rms_eps, param_dtype=param_dtype, rngs=rngs)
        self.gate = nnx.Linear(d, f, use_bias=False, kernel_init=sharded(init, (None, MODEL)), **kw)
        self.up = nnx.Linear(d, f, use_bias=False, kernel_init=sharded(init, (None, MODEL)), **kw)
        self.down = nnx.Linear(f, d, use_bias=False, kernel_init=sharded(init, (MODEL, None)), **kw)

    def __call__(self, x, positions, inv_freq, mask, cache_kv, cache_index):
        a, kv = self.attn(self.attn_norm(x), positions, inv_freq, mask, cache_kv, cache_index)
        x = x + a
        h = self.mlp_norm(x)
        return x + self.down(jax.nn.silu(self.gate(h)) * self.up(h)), kv


class LLM(nnx.Module):
    """Llama-family causal LM; `dtype` is the compute dtype, `param_dtype` the storage dtype."""

    def __init__(self, cfg: LLMConfig, *, dtype=jnp.float32, param_dtype=None, rngs: nnx.Rngs):
        param_dtype = param_dtype or dtype
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.config, self.dtype = cfg, dtype
        self.embed = nnx.Embed(cfg.vocab_size, cfg.hidden_size, **kw)
        self.layers = nnx.List([Block(cfg, **kw) for _ in range(cfg.num_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_eps, param_dtype=param_dtype, rngs=rngs)
        head = None
        if not cfg.tie_word_embeddings:
            init = sharded(nnx.initializers.lecun_normal(), (None, MODEL))
            head = nnx.Linear(
                cfg.hidden_size, cfg.vocab_size, use_bias=False, kernel_init=init, **kw
            )
        self.lm_head = nnx.data(head)

    def init_cache(self, batch: int, length: int, dtype=None) -> KVCache:
        """Zeros for `length` slots: ([B, K, S, E],) * layers for keys and for values."""
        c = self.config
        shape = (batch, c.num_kv_heads, length, c.head_dim)
        zeros = tuple(jnp.zeros(shape, dtype or self.dtype) for _ in range(c.num_layers))
        return KVCache(zeros, tuple(jnp.zeros_like(z) for z in zeros))

    def forward(self, x, positions, kv_mask, cache: KVCache | None = None, cache_index=0):
        """Runs the decoder on embeddings.

        Args:
          x: [B, T, D] input embeddings (see `embed`; a VLM splices image features in).
          positions: [B, T] int rotary positions (left padding: count real tokens only), or
            [B, T, E/2] one per rotary frequency (see `apply_rope`).
          kv_mask: [B, S] bool, True for key slots holding real tokens (S = T without a cache).
          cache: optional KVCache with S slots; the T new tokens are written at `cache_index`.
          cache_index: int32 scalar, slot of the first new token.
        Returns:
          (hidden [B, T, D] after the final norm, updated cache or None).
        """
        t = x.shape[1]
        s = kv_mask.shape[1]
        q_slot = cache_index + jnp.arange(t)
        k_slot = jnp.arange(s)
        allowed = k_slot[None, :] <= q_slot[:, None]  # causal over cache slots: [T, S]
        if self.config.sliding_window is not None:
            allowed &= q_slot[:, None] - k_slot[None, :] < self.config.sliding_window
        mask = allowed[None, None] & kv_mask[:, None, None, :].astype(bool)
        inv_freq = rope_inv_freq(self.config)
        x = x.astype(self.dtype)
        new_k, new_v = [], []
        for i, block in enumerate(self.layers):
            kv = None if cache is None else (cache.k[i], cache.v[i])
            x, (k, v) = block(x, positions, inv_freq, mask, kv, cache_index)
            new_k.append(k)
            new_v.append(v)
        x = self.norm(x)
        return x, (None if cache is None else KVCache(tuple(new_k), tuple(new_v)))

    def logits(self, hidden: jax.Array) -> jax.Array:
        """[B, T, D] -> [B, T, V] float32."""
        if self.lm_head is None:
            return jnp.einsum(
                "btd,vd->btv", hidden, self.embed.embedding[...].astype(hidden.dtype)
            ).astype(jnp.float32)
        return self.lm_head(hidden).astype(jnp.float32)

    def __call__(self, input_ids, attention_mask=None, positions=None) -> jax.Array:
        """input_ids [B, T] (+ attention_mask [B, T], positions [B, T]) -> logits [B, T, V].

        Positions default to 0..T-1, as in a transformers forward call without `position_ids`."""
        b, t = input_ids.shape
        if attention_mask is None:
            attention_mask = jnp.ones((b, t), bool)
        if positions is None:
            positions = jnp.broadcast_to(jnp.arange(t), (b, t))
        hidden, _ = self.forward(self.embed(input_ids), positions, attention_mask)
        return self.logits(hidden)


# ---- checkpoints -------------------------------------------------------------------------------


def hf_rules(cfg: LLMConfig, prefix: str = "model.", lm_head: str = "lm_head.weight") -> list[Rule]:
    """Our parameter paths <- HF Llama/Mistral/Qwen2 keys (`prefix` for the decoder body,
    `lm_head` for the output projection: LLaVA checkpoints nest both differently)."""
    d, h, k, e = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    rules = [copy("embed.embedding", f"{prefix}embed_tokens.weight")]
    for i in range(cfg.num_layers):
        o, t = f"layers.{i}", f"{prefix}layers.{i}"
        a = f"{t}.self_attn"
        # torch Linear weight [out, in] -> [in, heads, head_dim].
        rules += [
            reshaped(f"{o}.attn.q", f"{a}.q_proj.weight", (d, h, e), (h * e, d), (1, 0)),
            reshaped(f"{o}.attn.k", f"{a}.k_proj.weight", (d, k, e), (k * e, d), (1, 0)),
            reshaped(f"{o}.attn.v", f"{a}.v_proj.weight", (d, k, e), (k * e, d), (1, 0)),
            reshaped(f"{o}.attn.o", f"{a}.o_proj.weight", (h, e, d), (d, h * e), (1, 0)),
            copy(f"{o}.attn_norm.scale", f"{t}.input_layernorm.weight"),
            copy(f"{o}.mlp_norm.scale", f"{t}.post_attention_layernorm.weight"),
            linear(f"{o}.gate.kernel", f"{t}.mlp.gate_proj.weight"),
            linear(f"{o}.up.kernel", f"{t}.mlp.up_proj.weight"),
            linear(f"{o}.down.kernel", f"{t}.mlp.down_proj.weight"),
        ]
        if cfg.attention_bias:
            rules += [
                reshaped(f"{o}.attn.q_bias", f"{a}.q_proj.bias", (h, e), (h * e,)),
                reshaped(f"{o}.attn.k_bias", f"{a}.k_proj.bias", (k, e), (k * e,)),
                reshaped(f"{o}.attn.v_bias", f"{a}.v_proj.bias", (k, e), (k * e,)),
            ]
    rules.append(copy("norm.scale", f"{prefix}norm.weight"))
    if not cfg.tie_word_embeddings:
        rules.append(linear("lm_head.kernel", lm_head))
    return rules


def hf_ignore(cfg: LLMConfig, lm_head: str = "lm_head.weight") -> tuple[str, ...]:
    # Some tied checkpoints still store the (identical) output matrix; rotary buffers of old ones.
    ignore = (r"rotary_emb\.inv_freq$",)
    return ignore + ((f"^{lm_head.replace('.', '[.]')}$",) if cfg.tie_word_embeddings else ())


def from_pretrained(
    path_or_id: str,
    dtype=jnp.float32,
    param_dtype=None,
    *,
    revision: str | None = None,
    cache_dir: str | None = None,
    shardings=None,
) -> LLM:
    """Loads a HF `LlamaForCausalLM` / `MistralForCausalLM` / `Qwen2ForCausalLM` checkpoint
    (single or sharded safetensors) from a directory or hub id, verifying every key and shape.

    Raises:
      ValueError: unsupported architecture (named).
      CheckpointError: missing / unexpected / mis-shaped key (named).
    """
    import transformers

    path = resolve(path_or_id, revision=revision, cache_dir=cache_dir)
    cfg = LLMConfig.from_hf(transformers.AutoConfig.from_pretrained(path))
    return load_model(
        lambda: LLM(cfg, dtype=dtype, param_dtype=param_dtype or dtype, rngs=nnx.Rngs(0)),
        hf_rules(cfg),
        SafetensorsReader.from_dir(path),
        where=path,
        ignore=hf_ignore(cfg),
        shardings=shardings,
    )


def init(cfg: LLMConfig, seed: int = 0, dtype=jnp.float32, param_dtype=None) -> LLM:
    """A randomly initialised LLM (tests, benchmarks)."""
    return LLM(cfg, dtype=dtype, param_dtype=param_dtype, rngs=nnx.Rngs(seed))
