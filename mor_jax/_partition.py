"""Partitions: block shapes, group shapes, and the blocked view of an array.

A block shape has one entry per dimension, an int or None (the whole
dimension). Dimensions the block does not divide get smaller edge blocks. The
blocked view pads with zeros, which leave every statistic we take unchanged
(amax, nonzero counts, error sums and minima over nonzero elements), and
reshapes ``[d0, d1, ...]`` to ``[G0, b0, G1, b1, ...]``.

Shapes may hold symbolic dimensions (``jax.export``): then a block is
min(b, d) and the grid ceil(d / b), symbolic expressions that jax.export
evaluates per call, so each call computes what a concrete trace would.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

BlockShape = Sequence[int | None]
# A block's statistics count its elements in int32; the whole tensor's
# count is summed exactly past that (``mor_jax._mor.whole``).
MAX_BLOCK_ELEMENTS = int(np.iinfo(np.int32).max)


def is_symbolic(d) -> bool:
  """Whether ``d`` is a symbolic dimension (``jax.export``), not an int."""
  return jax.export.is_symbolic_dim(d)


def decide(compare: Callable[[], bool]) -> bool | None:
  """A comparison of dimensions, None where symbolic dimensions leave it
  open (jax.export's constraints on them count)."""
  try:
    return bool(compare())
  except jax.errors.InconclusiveDimensionOperation:
    return None


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
    shape = tuple(d if is_symbolic(d) else int(d) for d in shape)
    cuts = [_cut(d, b) for d, b in zip(shape, block_shape)]
    return cls(shape, tuple(c[0] for c in cuts), tuple(c[1] for c in cuts))

  @property
  def symbolic(self) -> bool:
    """Whether a dimension is symbolic (``jax.export``)."""
    return any(map(is_symbolic, self.shape))

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
    counts (``MAX_BLOCK_ELEMENTS``).

    With symbolic dimensions the block size is a symbolic expression: the
    check holds where jax.export can prove it for every value (a block
    entry b bounds its dimension's block by b; the shape's constraints
    count), as an exported function never checks again. Where it cannot,
    a block spans a symbolic dimension with nothing bounding it, and a
    call could overflow the count: that is an error, saying what bounds it.
    """
    too_big = decide(lambda: self.block_size > MAX_BLOCK_ELEMENTS)
    if too_big is None:
      spans = [str(d) for d, b in zip(self.shape, self.block)
               if is_symbolic(d) and is_symbolic(b)]
      raise ValueError(
          f"{name} of shape {self.shape} is cut in blocks of {self.block}, "
          f"{self.block_size} elements each, which spans the symbolic "
          f"dimension(s) {', '.join(spans)}: nothing shows that a block "
          f"holds at most {MAX_BLOCK_ELEMENTS} elements (its statistics "
          "count them in int32). Bound it with a constraint on the symbolic "
          "shape, checked on every call, e.g. jax.export.symbolic_shape(..., "
          f"constraints=('{self.block_size} <= {MAX_BLOCK_ELEMENTS}',)), "
          "or use blocks of a fixed size along those dimensions.")
    if too_big:
      raise ValueError(
          f"{name} of shape {self.shape} is cut in blocks of {self.block}, "
          f"{self.block_size} elements each; a block may hold at most "
          f"{MAX_BLOCK_ELEMENTS} (its statistics count them in int32). Use "
          "smaller blocks (on a matrix, one per row: block_shape=(1, None)).")

  def block_sizes(self) -> np.ndarray | jax.Array:
    """Number of array elements in each block (edge blocks hold fewer);
    a jnp int32 array where a dimension is symbolic."""
    if self.symbolic:
      out = jnp.ones((), jnp.int32)
      for d, b, g in zip(self.shape, self.block, self.grid):
        sizes = jnp.minimum(b, d - b * jnp.arange(g, dtype=jnp.int32))
        out = out[..., None] * sizes
      return out
    per_dim = [np.minimum(b, d - b * np.arange(g))
               for d, b, g in zip(self.shape, self.block, self.grid)]
    out = np.ones((), np.int64)
    for sizes in per_dim:
      out = np.multiply.outer(out, sizes)
    return out

  def to_blocks(self, x: jax.Array) -> jax.Array:
    """[d0, d1, ...] -> [G0, b0, G1, b1, ...], zero-padded."""
    pad = [(0, p - d) for d, p in zip(self.shape, self.padded)]
    # A symbolic pad that may be 0 pads: a call with 0 pads nothing.
    if any(decide(lambda: hi != 0) is not False for _, hi in pad):
      x = _pad(x, [hi for _, hi in pad])
    return x.reshape(self.blocked_shape)

  def from_blocks(self, xb: jax.Array) -> jax.Array:
    """Inverse of ``to_blocks``: drops the padding."""
    x = xb.reshape(self.padded)
    if any(decide(lambda: p != d) is not False
           for p, d in zip(self.padded, self.shape)):
      if self.symbolic:
        # Cropped by a negative pad: a slice asks whether its symbolic end
        # is <= ceil(d / b) * min(b, d), which jax.export cannot prove.
        return _pad(x, [d - p for d, p in zip(self.shape, self.padded)])
      x = x[tuple(slice(0, d) for d in self.shape)]
    return x

  def expand(self, grid_values: jax.Array) -> jax.Array:
    """A per-block array [G0, G1, ...] -> [G0, 1, G1, 1, ...] to broadcast."""
    return grid_values.reshape(
        tuple(n for g in self.grid for n in (g, 1)))


def _pad(x: jax.Array, high) -> jax.Array:
  """x zero-padded at the end of each axis by ``high`` (lax.pad: jnp.pad
  asks whether a symbolic width is >= 0, which jax.export cannot prove for
  ceil(d / b) * min(b, d) - d)."""
  return jax.lax.pad(x, jnp.zeros((), x.dtype), [(0, h, 0) for h in high])


def _cut(d, b: int | None) -> tuple:
  """(block, grid) along a dimension d cut in blocks of b (None: all)."""
  if not is_symbolic(d):
    block = max(1, d if b is None else min(b, d))
    return block, -(-d // block)
  if b is None:
    return d, 1
  # min(b, d) and ceil(d / b): a symbolic d is >= 1, and where d < b the
  # one block of d is ceil(d / b) == 1 of them, as above.
  return jax.core.min_dim(b, d), -(-d // b)


# Longest run a single reduction stage adds up; longer axes are cut in chunks
# so that float32 sums over huge blocks keep their precision on every backend.
SUM_CHUNK = 4096


def block_sum(values: jax.Array, part: Partition) -> jax.Array:
  """Sums a blocked-view array over each block, in stages of <= 4096 terms."""
  out = values
  for axis in reversed(part.block_axes):
    n = out.shape[axis]
    if is_symbolic(n) or n > SUM_CHUNK:
      # Chunks of min(n, 4096). A symbolic n always takes this path, so a
      # call sums what a concrete trace would: where n <= 4096 its one
      # chunk is the whole axis, and the stage below adds nothing to it.
      size, chunks = _cut(n, SUM_CHUNK)
      pad = [0] * out.ndim
      pad[axis] = chunks * size - n
      out = _pad(out, pad)
      out = out.reshape(out.shape[:axis] + (chunks, size) +
                        out.shape[axis + 1:])
      out = jnp.sum(out, axis=axis + 1)
    out = jnp.sum(out, axis=axis)
  return out
