"""InstructBLIP's Q-Former (a BERT encoder with learned queries) in Flax NNX.

    qf = QFormer(cfg, dtype=jnp.float32, param_dtype=jnp.float32, rngs=nnx.Rngs(0))
    out = qf(queries, image_embeds, image_index, ids, mask)   # -> [B, Q, H] query outputs

The input is the Q learned query vectors followed by the instruction's tokens (its own BERT word
and position embeddings), one LayerNorm over both (HF `InstructBlipQFormerEmbeddings`). Every
layer runs self-attention over queries + instruction (padding keys masked, queries always
attended), then, on the query positions only, cross-attention to the image every
`cross_attention_frequency` layers (layers 0, f, 2f, ...), and a feed-forward of its own for
the query positions (`intermediate_query` / `output_query`) and another for the instruction
positions. Post-LN BERT sub-layers: LayerNorm(x + dense(attention(x))).

Images and rows are decoupled: the cross-attention keys/values are projected once per distinct
image ([N, S, C] -> [N, S, H]) and gathered per row by `image_index`, so several questions about
one image share its projection. Shape letters: B rows, N images, S image tokens, C vision width,
Q queries, L instruction tokens, H Q-Former width, E head dim, F MLP width.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from vl_jax.checkpoints.mapping import Rule, copy, linear
from vl_jax.models.clip_weights import layer_norm_rules
from vl_jax.models.transformer import ACTIVATIONS, HF_ACTIVATIONS, attention, sharded
from vl_jax.parallel import MODEL

__all__ = ["QFormer", "QFormerConfig", "hf_rules"]


@dataclasses.dataclass(frozen=True)
class QFormerConfig:
    vocab_size: int
    width: int  # H
    layers: int
    heads: int
    mlp_dim: int  # F
    max_positions: int  # longest instruction (position embeddings)
    encoder_width: int  # C: the vision tower's width (cross-attention keys/values)
    cross_attention_frequency: int = 2
    act: str = "gelu"
    ln_eps: float = 1e-12

    def __post_init__(self):
        if self.width % self.heads:
            raise ValueError(f"Q-Former width {self.width} is not divisible by {self.heads} heads")
        if self.act not in ACTIVATIONS:
            raise ValueError(f"unsupported Q-Former activation '{self.act}'")
        if self.cross_attention_frequency < 1:
            raise ValueError(
                f"cross_attention_frequency must be >= 1, got {self.cross_attention_frequency}"
            )

    def has_cross_attention(self, layer: int) -> bool:
        return layer % self.cross_attention_frequency == 0

    @classmethod
    def from_hf(cls, c) -> QFormerConfig:
        """From a transformers `InstructBlipQFormerConfig`."""
        kind = getattr(c, "position_embedding_type", "absolute")
        if kind != "absolute":
            raise ValueError(f"Q-Former position_embedding_type '{kind}' is not supported")
        act = HF_ACTIVATIONS.get(c.hidden_act)
        if act is None:
            raise ValueError(f"unsupported Q-Former hidden_act '{c.hidden_act}'")
        return cls(
            vocab_size=c.vocab_size,
            width=c.hidden_size,
            layers=c.num_hidden_layers,
            heads=c.num_attention_heads,
            mlp_dim=c.intermediate_size,
            max_positions=c.max_position_embeddings,
            encoder_width=c.encoder_hidden_size,
            cross_attention_frequency=c.cross_attention_frequency,
            act=act,
            ln_eps=c.layer_norm_eps,
        )


def _linear(n_in: int, n_out: int, names, **kw) -> nnx.Linear:
    init = sharded(nnx.initializers.lecun_normal(), names)
    bias = sharded(nnx.initializers.zeros, (names[1],))
    return nnx.Linear(n_in, n_out, kernel_init=init, bias_init=bias, **kw)


class Attention(nnx.Module):
    """BERT attention + output: LayerNorm(x + dense(softmax(q k^T / sqrt(E)) v)). `kv_width` is
    the width of what keys and values are read from (H for self-, C for cross-attention)."""

    def __init__(self, cfg: QFormerConfig, kv_width: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        h = cfg.width
        # Heads are contiguous column blocks of q/k/v: split over `model`, reduced by `dense`.
        self.query = _linear(h, h, (None, MODEL), **kw)
        self.key = _linear(kv_width, h, (None, MODEL), **kw)
        self.value = _linear(kv_width, h, (None, MODEL), **kw)
        self.dense = _linear(h, h, (MODEL, None), **kw)
        self.norm = nnx.LayerNorm(h, epsilon=cfg.ln_eps, **kw)
        self.heads = cfg.heads

    def keys_values(self, context: jax.Array) -> tuple[jax.Array, jax.Array]:
        """context [N, S, kv_width] -> keys, values [N, S, heads, E]."""
        split = lambda y: y.reshape(*y.shape[:2], self.heads, -1)
        return split(self.key(context)), split(self.value(context))

    def __call__(self, x, k, v, mask=None):
        """x [B, T, H]; k, v [B, S, heads, E]; mask bool broadcastable to [B, heads, T, S]."""
        b, t, h = x.shape
        q = self.query(x).reshape(b, t, self.heads, h // self.heads)
        y = attention(q, k.astype(q.dtype), v.astype(q.dtype), mask)
        return self.norm(x + self.dense(y.reshape(b, t, h)))


class FeedForward(nnx.Module):
    """BERT intermediate + output: LayerNorm(x + down(act(up(x))))."""

    def __init__(self, cfg: QFormerConfig, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.up = _linear(cfg.width, cfg.mlp_dim, (None, MODEL), **kw)
        self.down = _linear(cfg.mlp_dim, cfg.width, (MODEL, None), **kw)
        self.norm = nnx.LayerNorm(cfg.width, epsilon=cfg.ln_eps, **kw)
        self.act = ACTIVATIONS[cfg.act]

    def __call__(self, x):
        return self.norm(x + self.down(self.act(self.up(x))))


class Layer(nnx.Module):
    def __init__(self, cfg: QFormerConfig, index: int, *, dtype, param_dtype, rngs: nnx.Rngs):
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.attention = Attention(cfg, cfg.width, **kw)
        cross = Attention(cfg, cfg.encoder_width, **kw) if cfg.has_cross_attention(index) else None
        self.cross_attention = nnx.data(cross)
        self.ffn_query = FeedForward(cfg, **kw)
        self.ffn_text = FeedForward(cfg, **kw)

    def __call__(self, x, mask, num_queries: int, cross_kv):
        """x [B, Q+L, H]; mask [B, 1, 1, Q+L]; cross_kv: (k, v) [B, S, heads, E] or None."""
        a = self.attention(x, *self.attention.keys_values(x), mask)
        queries = a[:, :num_queries]
        if self.cross_attention is not None:
            queries = self.cross_attention(queries, *cross_kv)  # every image token attended
        return jnp.concatenate([self.ffn_query(queries), self.ffn_text(a[:, num_queries:])], axis=1)


class QFormer(nnx.Module):
    """Embeddings (instruction words + positions, LayerNorm over queries and words) + layers."""

    def __init__(self, cfg: QFormerConfig, *, dtype=jnp.float32, param_dtype=None, rngs):
        param_dtype = param_dtype or dtype
        kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
        self.word_embed = nnx.Embed(cfg.vocab_size, cfg.width, **kw)
        self.pos_embed = nnx.Embed(cfg.max_positions, cfg.width, **kw)
        self.embed_norm = nnx.LayerNorm(cfg.width, epsilon=cfg.ln_eps, **kw)
        self.layers = nnx.List([Layer(cfg, i, **kw) for i in range(cfg.layers)])
        self.config, self.dtype = cfg, dtype

    def __call__(self, queries, image_embeds, image_index, input_ids, attention_mask=None):
        """Runs the Q-Former for B rows.

        Args:
          queries: [Q, H] the learned query tokens.
          image_embeds: [N, S, C] the vision tower's last hidden state (after post_layernorm).
          image_index: [B] int, the image of each row.
          input_ids: [B, L] int, the instruction in the Q-Former's (BERT) vocabulary.
          attention_mask: [B, L] (1 = token, 0 = padding), default all ones.
        Returns:
          [B, Q, H]: the query positions of the last layer.
        """
        b, length = input_ids.shape
        if length > self.config.max_positions:
            raise ValueError(
                f"Q-Former instruction of {length} tokens exceeds its "
                f"{self.config.max_positions} position embeddings"
            )
        q = queries.shape[0]
        text = self.word_embed(input_ids) + self.pos_embed(jnp.arange(length))[None]
        lead = jnp.broadcast_to(queries.astype(text.dtype), (b, q, queries.shape[-1]))
        x = self.embed_norm(jnp.concatenate([lead, text], axis=1).astype(self.dtype))
        if attention_mask is None:
            attention_mask = jnp.ones((b, length), bool)
        keep = jnp.concatenate([jnp.ones((b, q), bool), attention_mask.astype(bool)], axis=1)
        mask = keep[:, None, None, :]  # padding keys are never attended; every row has Q keys
        image_index = jnp.asarray(image_index, jnp.int32)
        for layer in self.layers:
            cross_kv = None
            if layer.cross_attention is not None:
                k, v = layer.cross_attention.keys_values(image_embeds.astype(self.dtype))
                cross_kv = (k[image_index], v[image_index])  # once per image, then per row
            x = layer(x, mask, q, cross_kv)
        return x[:, :q]


# ---- checkpoints -------------------------------------------------------------------------------


def _dense(ours: str, theirs: str) -> list[Rule]:
    return [linear(f"{ours}.kernel", f"{theirs}.weight"), copy(f"{ours}.bias", f"{theirs}.bias")]


def _attention(ours: str, theirs: str) -> list[Rule]:
    a = f"{theirs}.attention"
    return [
        *_dense(f"{ours}.query", f"{a}.query"),
        *_dense(f"{ours}.key", f"{a}.key"),
        *_dense(f"{ours}.value", f"{a}.value"),
        *_dense(f"{ours}.dense", f"{theirs}.output.dense"),
        *layer_norm_rules(f"{ours}.norm", f"{theirs}.output.LayerNorm"),
    ]


def _ffn(ours: str, up: str, down: str) -> list[Rule]:
    return [
        *_dense(f"{ours}.up", f"{up}.dense"),
        *_dense(f"{ours}.down", f"{down}.dense"),
        *layer_norm_rules(f"{ours}.norm", f"{down}.LayerNorm"),
    ]


def hf_rules(cfg: QFormerConfig, ours: str = "qformer", theirs: str = "qformer") -> list[Rule]:
    """Our paths under `ours` <- HF `InstructBlipQFormerModel` keys under `theirs`."""
    e = f"{theirs}.embeddings"
    rules = [
        copy(f"{ours}.word_embed.embedding", f"{e}.word_embeddings.weight"),
        copy(f"{ours}.pos_embed.embedding", f"{e}.position_embeddings.weight"),
        *layer_norm_rules(f"{ours}.embed_norm", f"{e}.layernorm"),
    ]
    for i in range(cfg.layers):
        o, t = f"{ours}.layers.{i}", f"{theirs}.encoder.layer.{i}"
        rules += _attention(f"{o}.attention", f"{t}.attention")
        if cfg.has_cross_attention(i):
            rules += _attention(f"{o}.cross_attention", f"{t}.crossattention")
        rules += _ffn(f"{o}.ffn_query", f"{t}.intermediate_query", f"{t}.output_query")
        rules += _ffn(f"{o}.ffn_text", f"{t}.intermediate", f"{t}.output")
    return rules
