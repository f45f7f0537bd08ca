"""Partitions: block shapes, group shapes, and the blocked view of an array.

A block shape has one entry per dimension, an int or None (the whole
dimension). Dimensions the block does not divide get smaller edge blocks. The
blocked view pads with zeros, which leave every statistic we take unchanged
(amax, nonzero counts, error sums and minima over nonzero elements), and
reshapes ``[d0, d1, ...]`` to ``[G0, b0, G1, b1, ...]``.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

BlockShape = Sequence[int | None]
# A block's statistics count its elements in int32; the whole tensor's
# count is summed exactly past that (``mor_jax._mor.whole``).
MAX_BLOCK_ELEMENTS = int(np.iinfo(np.int32).max)


def _entry(value, where: str) -> int | None:
  if value is None:
    return None
  if isinstance(value, bool):
    raise ValueError(f"{where} must be a positive int or None, got {value!r}.")
  try:
    n = operator.index(value)
  except TypeError:
    raise ValueError(
        f"{where} must be a positive int or None, got {value!r}.") from None
  if n <= 0:
    raise ValueError(f"{where} must be a positive int or None, got {n}.")
  return n


def check_shape_arg(value, ndim: int, name: str) -> tuple[int | None, ...]:
  """Validates a block or group shape against an array rank; returns a tuple."""
  if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
    raise ValueError(
        f"{name} must be a sequence with one entry (int or None) per "
        f"dimension, got {value!r}.")
  if len(value) != ndim:
    raise ValueError(
        f"{name} has {len(value)} entries but the array has {ndim} "
        f"dimensions; give one entry (int or None) per dimension.")
  return tuple(_entry(v, f"{name}[{i}]") for i, v in enumerate(value))


@dataclasses.dataclass(frozen=True)
class Partition:
  """An array shape cut into blocks.

  Attributes:
    shape: the array's shape.
    block: block sizes, each in [1, dim] (None resolved to the dimension).
    grid: number of blocks along each dimension.
  """

  shape: tuple[int, ...]
  block: tuple[int, ...]
  grid: tuple[int, ...]

  @classmethod
  def build(cls, shape: Sequence[int], block_shape: BlockShape) -> Partition:
    shape = tuple(int(d) for d in shape)
    block = tuple(
        max(1, d if b is None else min(b, d)) for d, b in zip(shape, block_shape))
    grid = tuple(-(-d // b) for d, b in zip(shape, block))
    return cls(shape, block, grid)

  @property
  def padded(self) -> tuple[int, ...]:
    return tuple(g * b for g, b in zip(self.grid, self.block))

  @property
  def blocked_shape(self) -> tuple[int, ...]:
    return tuple(n for gb in zip(self.grid, self.block) for n in gb)

  @property
  def block_axes(self) -> tuple[int, ...]:
    return tuple(range(1, 2 * len(self.shape), 2))

  @property
  def block_size(self) -> int:
    return math.prod(self.block)

  def check_blocks(self, name: str) -> None:
    """Raises a ValueError where a block holds more elements than int32
    counts (``MAX_BLOCK_ELEMENTS``)."""
    if self.block_size > MAX_BLOCK_ELEMENTS:
      raise ValueError(
          f"{name} of shape {self.shape} is cut in blocks of {self.block}, "
          f"{self.block_size} elements each; a block may hold at most "
          f"{MAX_BLOCK_ELEMENTS} (its statistics count them in int32). Use "
          "smaller blocks (on a matrix, one per row: block_shape=(1, None)).")

  def block_sizes(self) -> np.ndarray:
    """Number of array elements in each block (edge blocks hold fewer)."""
    per_dim = [np.minimum(b, d - b * np.arange(g))
               for d, b, g in zip(self.shape, self.block, self.grid)]
    out = np.ones((), np.int64)
    for sizes in per_dim:
      out = np.multiply.outer(out, sizes)
    return out

  def to_blocks(self, x: jax.Array) -> jax.Array:
    """[d0, d1, ...] -> [G0, b0, G1, b1, ...], zero-padded."""
    pad = [(0, p - d) for d, p in zip(self.shape, self.padded)]
    if any(hi for _, hi in pad):
      x = jnp.pad(x, pad)
    return x.reshape(self.blocked_shape)

  def from_blocks(self, xb: jax.Array) -> jax.Array:
    """Inverse of ``to_blocks``: drops the padding."""
    x = xb.reshape(self.padded)
    if self.padded != self.shape:
      x = x[tuple(slice(0, d) for d in self.shape)]
    return x

  def expand(self, grid_values: jax.Array) -> jax.Array:
    """A per-block array [G0, G1, ...] -> [G0, 1, G1, 1, ...] to broadcast."""
    return grid_values.reshape(
        tuple(n for g in self.grid for n in (g, 1)))


# Longest run a single reduction stage adds up; longer axes are cut in chunks
# so that float32 sums over huge blocks keep their precision on every backend.
SUM_CHUNK = 4096


def block_sum(values: jax.Array, part: Partition) -> jax.Array:
  """Sums a blocked-view array over each block, in stages of <= 4096 terms."""
  out = values
  for axis in reversed(part.block_axes):
    n = out.shape[axis]
    if n > SUM_CHUNK:
      chunks = -(-n // SUM_CHUNK)
      pad = [(0, 0)] * out.ndim
      pad[axis] = (0, chunks * SUM_CHUNK - n)
      out = jnp.pad(out, pad)
      out = out.reshape(out.shape[:axis] + (chunks, SUM_CHUNK) +
                        out.shape[axis + 1:])
      out = jnp.sum(out, axis=axis + 1)
    out = jnp.sum(out, axis=axis)
  return out
