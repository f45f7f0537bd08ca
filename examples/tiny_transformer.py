"""A small decoder-only transformer in plain Flax linen; it knows nothing of mor_jax.

Its matrix multiplies with weights are ``nn.Dense`` layers named as in the
paper's list (qkv, attn_out, fc1, fc2) plus the ``lm_head``; attention
scores use ``jnp.einsum``. ``examples/convert_transformer.py`` converts it to
MoR without touching this file. ``Config.dot_general_cls`` is the usual Flax
hook for a custom dot_general (None: ``lax.dot_general``).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
  """Model sizes and options."""

  vocab: int = 64
  d_model: int = 64
  heads: int = 4
  layers: int = 2
  d_ff: int = 256
  max_len: int = 64
  dtype: Any = jnp.float32
  dot_general_cls: Any = None


class Block(nn.Module):
  """Pre-norm attention and MLP, each with a residual connection."""

  cfg: Config

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg = self.cfg

    def dense(features, name):
      return nn.Dense(features, dtype=cfg.dtype, name=name,
                      dot_general_cls=cfg.dot_general_cls)

    b, t, _ = x.shape
    head_dim = cfg.d_model // cfg.heads
    qkv = dense(3 * cfg.d_model, "qkv")(nn.LayerNorm(dtype=cfg.dtype)(x))
    q, k, v = jnp.split(qkv.reshape(b, t, 3 * cfg.heads, head_dim), 3, axis=2)
    scores = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(head_dim)
    causal = jnp.tril(jnp.ones((t, t), bool))
    scores = jnp.where(causal, scores.astype(jnp.float32), -1e9)
    attn = jax.nn.softmax(scores, axis=-1).astype(cfg.dtype)
    out = jnp.einsum("bhqk,bkhd->bqhd", attn, v).reshape(b, t, cfg.d_model)
    x = x + dense(cfg.d_model, "attn_out")(out)
    h = dense(cfg.d_ff, "fc1")(nn.LayerNorm(dtype=cfg.dtype)(x))
    return x + dense(cfg.d_model, "fc2")(nn.gelu(h))


class TinyTransformer(nn.Module):
  """Token ids [batch, time] -> next-token logits [batch, time, vocab]."""

  cfg: Config

  @nn.compact
  def __call__(self, tokens: jax.Array) -> jax.Array:
    cfg = self.cfg
    x = nn.Embed(cfg.vocab, cfg.d_model, dtype=cfg.dtype)(tokens)
    pos = self.param("pos", nn.initializers.normal(0.02),
                     (cfg.max_len, cfg.d_model))
    x = x + pos[:tokens.shape[1]].astype(cfg.dtype)
    for i in range(cfg.layers):
      x = Block(cfg, name=f"Block_{i}")(x)
    x = nn.LayerNorm(dtype=cfg.dtype)(x)
    return nn.Dense(cfg.vocab, dtype=cfg.dtype, name="lm_head",
                    dot_general_cls=cfg.dot_general_cls)(x)
