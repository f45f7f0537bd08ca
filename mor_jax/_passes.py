"""What every implementation of the quantization passes provides.

A quantization is two passes over the tensor: pass 1 takes per-block
statistics, the scales follow from the block amaxes (``mor_jax._scaling``),
and pass 2 rounds with those scales, writing codes or dequantized values and
per-block sums of the relative-error terms (docs/numerics.md sections 3-4).
The XLA reference (``mor_jax._xla``) and the Pallas kernels
(``mor_jax.kernels.quantize``) implement ``Passes``; ``mor_jax._dispatch``
chooses between them. Both sides import this module and nothing of each
other.
"""

from __future__ import annotations

import typing
from typing import Literal, NamedTuple, Protocol

import jax

from mor_jax import _formats

# What pass 2 writes: FP8 codes, dequantized values in x's dtype (NaN and
# +-inf of x passed through), or nothing but the error sums.
Output = Literal["codes", "values", "none"]
OUTPUTS: tuple[Output, ...] = typing.get_args(Output)


class BlockStats(NamedTuple):
  """Per-block statistics of an array (pass 1), each shaped like the grid.

  Attributes:
    amax: max |x| over the finite elements (float32, 0 for none).
    nonfinite: whether the block holds a NaN or an infinity.
    count: number of finite nonzero elements (int32; ``_mor.whole``'s
      total of a grid is float32, as int32 could not hold it).
    min_nonzero: min |x| over the finite nonzero elements (+inf for none).
  """

  amax: jax.Array
  nonfinite: jax.Array
  count: jax.Array
  min_nonzero: jax.Array


class Passes(Protocol):
  """The two passes of one implementation, bound to one partition of x."""

  def block_stats(self, x: jax.Array) -> BlockStats:
    """Pass 1: the statistics of every block of ``x``."""

  def quantize_with_scales(
      self, x: jax.Array, scale: jax.Array, nonfinite: jax.Array,
      fmt: _formats.Representation, output: Output
  ) -> tuple[jax.Array | None, jax.Array]:
    """Pass 2: (codes, values or None; per-block error sums).

    Args:
      x: the array, any floating dtype.
      scale: [G0, G1, ...] float32 scales.
      nonfinite: [G0, G1, ...] bool, the blocks holding NaN or +-inf (pass
        1's ``BlockStats.nonfinite``).
      fmt: E4M3 or E5M2.
      output: see ``Output``.
    """


class DualStats(NamedTuple):
  """Pass 1 of ``DualPasses`` on x [R, C].

  Attributes:
    row_amax: [R, 1] max |x| over each row's finite elements.
    cols: the ``BlockStats`` of every column, [C, 1] each.

  Rows carry their amax alone. With one decision for the whole tensor, the
  counts, minima and non-finite flags enter only through their reductions
  over the whole tensor, which max, min, or and integer sums make the same
  bits from the rows as from the columns (``mor_jax._mor.whole``); per-row
  ones would cost the kernel three more reductions across threads per row.
  """

  row_amax: jax.Array
  cols: BlockStats


class DualPasses(Protocol):
  """Both GEMM orientations of a matrix x [R, C]: per-row scales on x and
  on x^T (kernels/dual.py says why one pass serves both)."""

  def stats(self, x: jax.Array) -> DualStats:
    """Pass 1: every row's amax and every column's statistics."""

  def codes(self, x: jax.Array, row_scale: jax.Array, col_scale: jax.Array,
            fmt: _formats.Representation
            ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Pass 2: codes of x [R, C] and of x^T [C, R], and the error terms of
    each orientation as partial sums ([n, 1]), whose sum is that
    orientation's error sum.

    The jnp passes sum each orientation per row of its view, as the
    per-row quantization of that view does; the kernels sum both per
    column of x. Codes at NaN or +-inf positions are unspecified.
    """
