"""Model: a GPT-style byte-level decoder whose linear layers are ``MoRDense``.

Pre-LN blocks, causal attention, GELU MLP, learned positions and a tied byte
embedding. QKV, attention output, FC1 and FC2 are
``mor_jax.dense.MoRDense``, the layers the MoR paper quantizes; the embedding
and the head stay plain BF16.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

import mor_jax
from mor_jax.dense import MoRDense

from .config import Config

VOCAB = 256  # Bytes are the tokens.


def outlier_gain(cfg: Config) -> np.ndarray:
  """[d_model] factors: ``cfg.outlier_channels`` evenly spaced channels at
  ``cfg.outlier_scale``, the others 1."""
  gain = np.ones(cfg.d_model, np.float32)
  channels = np.linspace(0, cfg.d_model, cfg.outlier_channels,
                         endpoint=False).astype(np.int64)
  gain[channels] = cfg.outlier_scale
  return gain


def with_outliers(gain: np.ndarray) -> Callable[..., tuple]:
  """A ``promote_dtype`` for MoRDense that gives its GEMM outlier features.

  The inputs' channels are multiplied by ``gain`` and the kernel's matching
  rows divided by it: X W = (X g)(W / g), so the layer computes the same
  function, and with power-of-two gains in BF16 the same bits, while the
  GEMM's operands hold a few channels far larger (X) and rows far smaller
  (W) than the rest, as the outlier features of large language models do.
  A per-tensor or per-row scale has to fit the outliers and flushes the
  rest towards zero.
  """
  def promote(inputs, kernel, bias, *, dtype=None):
    inputs, kernel, bias = nn.dtypes.promote_dtype(inputs, kernel, bias,
                                                   dtype=dtype)
    g = jnp.asarray(gain, inputs.dtype)
    return inputs * g, kernel / g[:, None], bias
  return promote


def mor_linear(cfg: Config, policy: mor_jax.Policy, features: int, *,
               name: str, residual: bool = False,
               outliers: bool = False) -> MoRDense:
  """A MoRDense with BF16 compute, float32 parameters and GPT-2 initialisation.

  Projections into the residual stream (``residual``) start scaled down by
  sqrt(2 * layers) so that the stream's variance does not grow with depth.
  With ``outliers`` and ``cfg.outlier_channels`` its GEMM gets the stress
  test's outlier features (``with_outliers``).
  """
  std = 0.02 / math.sqrt(2 * cfg.layers) if residual else 0.02
  promote = (with_outliers(outlier_gain(cfg))
             if outliers and cfg.outlier_channels else
             nn.dtypes.promote_dtype)
  return MoRDense(features, policy=policy, use_bias=True, dtype=jnp.bfloat16,
                  param_dtype=jnp.float32,
                  kernel_init=nn.initializers.normal(std),
                  bias_init=nn.initializers.zeros_init(), precision=None,
                  promote_dtype=promote, name=name)


class Attention(nn.Module):
  """Causal multi-head self-attention; QKV and output projections are MoRDense."""

  cfg: Config
  policy: mor_jax.Policy

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, t, d = x.shape
    heads = self.cfg.heads
    qkv = mor_linear(self.cfg, self.policy, 3 * d, name="qkv",
                     outliers=True)(x)
    qkv = qkv.reshape(b, t, 3, heads, d // heads)
    # Named, never None: jax would pick cuDNN's fused attention where it
    # can, whose backward pass is not bit-reproducible.
    y = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2],
                                     is_causal=True,
                                     implementation=self.cfg.attention)
    return mor_linear(self.cfg, self.policy, d, name="out",
                      residual=True)(y.reshape(b, t, d))


class MLP(nn.Module):
  """FC1, GELU, FC2; both linear layers are MoRDense."""

  cfg: Config
  policy: mor_jax.Policy

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = nn.gelu(mor_linear(self.cfg, self.policy, self.cfg.d_ff, name="fc1",
                           outliers=True)(x))
    return mor_linear(self.cfg, self.policy, x.shape[-1], name="fc2",
                      residual=True)(h)


class Block(nn.Module):
  """Pre-LN transformer block on a float32 residual stream."""

  cfg: Config
  policy: mor_jax.Policy

  @nn.compact
  def __call__(self, x: jax.Array, _) -> tuple[jax.Array, None]:
    ln = functools.partial(nn.LayerNorm, dtype=jnp.bfloat16)
    x = x + Attention(self.cfg, self.policy, name="attn")(ln(name="ln1")(x))
    return x + MLP(self.cfg, self.policy, name="mlp")(ln(name="ln2")(x)), None


class Transformer(nn.Module):
  """Bytes [batch, time] -> next-byte logits [batch, time, 256], float32.

  Attributes:
    cfg: the sizes.
    policy: the ``mor_jax.Policy`` of every MoRDense layer.
  """

  cfg: Config
  policy: mor_jax.Policy

  @nn.compact
  def __call__(self, tokens: jax.Array) -> jax.Array:
    cfg = self.cfg
    embed = self.param("embed", nn.initializers.normal(0.02),
                       (VOCAB, cfg.d_model)).astype(jnp.bfloat16)
    pos = self.param("pos", nn.initializers.normal(0.02),
                     (cfg.seq_len, cfg.d_model))
    # A one-hot matmul rather than a gather: with 256 tokens it is cheap, and
    # its gradient is a matmul, not a scatter-add, which GPUs run
    # nondeterministically.
    onehot = jax.nn.one_hot(tokens, VOCAB, dtype=jnp.bfloat16)
    x = (onehot @ embed).astype(jnp.float32) + pos[:tokens.shape[1]]
    # Scanned, so that XLA compiles one block rather than ``layers`` copies
    # of its 24 MoR quantizations; parameters and statistics gain a leading
    # layer axis (``flatten_stats`` splits it into "blocks/<i>/...").
    blocks = nn.scan(Block, length=cfg.layers, split_rngs={"params": True},
                     variable_axes={"params": 0, "mor_stats": 0,
                                    "mor_grads": 0})
    x, _ = blocks(cfg, self.policy, name="blocks")(x, None)
    x = nn.LayerNorm(dtype=jnp.bfloat16, name="ln_f")(x)
    return jnp.einsum("btd,vd->btv", x, embed,
                      preferred_element_type=jnp.float32)


def count_params(params) -> int:
  """The number of parameters (scalars) in a tree of arrays or shapes."""
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))


def flops_per_step(cfg: Config, n_params: int) -> float:
  """6 N per token for the weights plus the attention scores (causal: half)."""
  attention = 6 * cfg.layers * cfg.seq_len * cfg.d_model
  return (6 * n_params + attention) * cfg.batch * cfg.seq_len
