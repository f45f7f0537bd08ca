"""Scaling rules: one float32 scale per block from the block amaxes.

docs/numerics.md section 3. The ideal scale of a block with amax a is
s = F / a for the format's largest value F, capped at 2**126. ``fp32`` uses
s, ``e8m0`` its power of two, ``gam`` (Group Amax Mantissa) each block's
exponent with its group's mantissa, so that s/2 < scale <= s.
"""

from __future__ import annotations

import typing
from typing import Literal

import jax
import jax.numpy as jnp

from mor_jax import _formats
from mor_jax import _numerics
from mor_jax import _partition

Scaling = Literal["fp32", "e8m0", "gam"]
SCALINGS: tuple[Scaling, ...] = typing.get_args(Scaling)


def check_scaling(scaling) -> Scaling:
  if scaling not in SCALINGS:
    raise ValueError(f"scaling must be one of {SCALINGS}, got {scaling!r}.")
  return scaling


def check_group_shape(group_shape, block_shape: tuple[int | None, ...],
                      scaling: Scaling) -> tuple[int | None, ...] | None:
  """Validates ``group_shape`` (gam only, a multiple of the block shape)."""
  if group_shape is None:
    return None
  if scaling != "gam":
    raise ValueError(
        f"group_shape applies only to scaling='gam', got scaling={scaling!r}.")
  group = _partition.check_shape_arg(group_shape, len(block_shape),
                                     "group_shape")
  for i, (g, b) in enumerate(zip(group, block_shape)):
    if g is None:
      continue
    if b is None or g % b:
      raise ValueError(
          f"group_shape[{i}]={g} is not a multiple of block_shape[{i}]={b}; "
          "each group entry must be a multiple of the block entry, or None "
          "for the whole dimension.")
  return group


def group_blocks(group_shape: tuple[int | None, ...] | None,
                 block_shape: tuple[int | None, ...]) -> tuple[int, ...] | None:
  """Group shape in units of blocks (None entries: every block of the dim)."""
  if group_shape is None:
    return None
  return tuple(
      2**31 - 1 if g is None else g // b for g, b in zip(group_shape, block_shape))


def group_max(values: jax.Array, blocks: tuple[int, ...] | None) -> jax.Array:
  """Max of a per-block grid over groups of blocks, broadcast back per block.

  Args:
    values: [G0, G1, ...] non-negative per-block values.
    blocks: blocks per group along each dimension, or None for one group.

  Returns:
    An array shaped like ``values`` holding each block's group maximum.
  """
  if blocks is None:
    return jnp.broadcast_to(jnp.max(values, initial=0.0), values.shape)
  part = _partition.Partition.build(values.shape, blocks)
  gmax = jnp.max(part.to_blocks(values), axis=part.block_axes, keepdims=True)
  return part.from_blocks(jnp.broadcast_to(gmax, part.blocked_shape))


def scales_from_amax(amax: jax.Array, fmt: _formats.Representation,
                     scaling: Scaling,
                     blocks_per_group: tuple[int, ...] | None,
                     whole_amax: jax.Array | None = None) -> jax.Array:
  """One float32 scale per block from the per-block amax.

  Args:
    amax: [G0, G1, ...] finite block amax, float32, >= 0, normal or zero.
    fmt: the element format whose max F the scales aim at.
    scaling: "fp32", "e8m0" or "gam".
    blocks_per_group: gam groups in units of blocks, None for one group.
    whole_amax: max(amax) where the caller has it: with one gam group, it
      is the group's amax, and no reduction is repeated.

  Returns:
    The scales, shaped like ``amax``; 1 where a block is all zeros.
  """
  zero = amax == 0
  amaxes = [amax]
  if scaling == "gam":
    if whole_amax is None or blocks_per_group is not None:
      gamax = group_max(amax, blocks_per_group)
    else:
      gamax = jnp.broadcast_to(whole_amax, amax.shape)
    amaxes.append(gamax)
  # div_rn caps every quotient at 2**126, the block's and the group's alike,
  # before the gam rule combines them. One call divides both: its long
  # division is most of the program that scales make.
  dens = jnp.stack([jnp.where(a == 0, 1.0, a) for a in amaxes])
  ideals = _numerics.div_rn(
      jnp.broadcast_to(jnp.float32(fmt.max), dens.shape), dens)
  ideal = ideals[0]
  if scaling == "fp32":
    scale = ideal
  elif scaling == "e8m0":
    scale = _numerics.pow2(_numerics.exponent(ideal))
  else:
    m_g = jnp.where(gamax == 0, 1.0, _numerics.mantissa(ideals[1]))
    m_b = _numerics.mantissa(ideal)
    e_b = _numerics.exponent(ideal) - (m_g > m_b).astype(jnp.int32)
    scale = _numerics.with_exponent(m_g, e_b)
  return jnp.where(zero, 1.0, scale)


def reciprocal(scale: jax.Array) -> jax.Array:
  """Correctly rounded 1 / scale (scales lie in [2**-121, 2**126])."""
  return _numerics.div_rn(jnp.ones_like(scale), scale)
