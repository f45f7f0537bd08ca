"""Pallas kernels for the two passes of a block-scaled FP8 quantization.

Pass 1 (``block_stats``) reads the tensor once and writes, per tile, the
amax, a non-finite flag, the count of finite nonzero elements and the
smallest finite nonzero magnitude. The scales (gam, e8m0, fp32) come from
the block grid of amaxes in XLA: a few thousand numbers. Pass 2
(``quantize_with_scales``) reads the tensor again and writes FP8 codes (or,
for fake quantization, the dequantized values in the input dtype) and the
per-tile sums of the relative-error terms. A tensor-level MoR decision is
therefore two reads and one FP8 write of the tensor, the 5 bytes per
element that ``benchmarks/quantize.py`` measures against the HBM ceiling.

Both functions have the contract of their XLA twins in ``mor_jax._quantize``
and give bit-identical codes, scales and decisions: pass 1 reuses their
float32 arithmetic, pass 2 rounds with the GPU's FP8 conversion, which lands
on the same grid point. Error sums differ in the last bits (summation order,
Triton's division).

Backend: Triton. These are tile-wise maps and row or tile reductions with
masked edges, which Pallas' Triton backend expresses directly (a load with
a mask, a reduction over an axis, a store) on any power-of-two tile; on the
H100 both Pallas GPU backends ran a simple quantize kernel at the same
2.36 TB/s. Mosaic GPU, the upstream default, would need warpgroup layouts
and TMA descriptors for the same tiles and gives nothing here, as there is
no matrix multiply to feed. Triton is deprecated upstream; the kernels
select it explicitly (``CompilerParams``), and ``interpret=True`` runs the
same kernel bodies on a CPU, which is how CI tests them.

Tiling. The array is viewed in 2-D, [rows, columns] (leading dimensions
folded into rows where the partition allows), and cut into power-of-two
tiles that never straddle a block. A tile yields one statistic ("tile"
mode, blocks of 8 or more rows) or one per row ("rows" mode, per-channel
and other short blocks); XLA then reduces these partials to the block grid.
Partitions that cannot be folded into 2-D return ``None`` from ``plan`` and
use the XLA implementation.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from mor_jax import _formats
from mor_jax import _numerics
from mor_jax import _partition
from mor_jax import _quantize

# Tile budget: 16K elements (32 KB of bf16) per program, 16 warps for such a
# tile (pass 2 is arithmetic-bound: more warps hide its latency; the best of
# `benchmarks/quantize.py --sweep` on the H100); columns up to 512 keep
# rows-mode partials small.
TILE_ELEMENTS = 16384
MAX_TILE_COLS = 512
WARPS_PER_8K_ELEMENTS = 8
# Blocks with fewer tile rows than this are reduced per row instead.
_MIN_TILE_ROWS = 8

_EXP_FIELD = np.int32(np.float32(np.inf).view(np.int32))  # all exponent bits


def _pow2_ceil(n: int) -> int:
  return 1 << (max(int(n), 1) - 1).bit_length()


def _largest_pow2_divisor(n: int) -> int:
  return n & -n


@dataclasses.dataclass(frozen=True)
class Tiling:
  """How a partition maps onto Pallas tiles.

  Attributes:
    rows, cols: the 2-D view of the array.
    block_rows, block_cols: the partition's block in that view.
    tile_rows, tile_cols: the Pallas tile (powers of two).
    per_row: rows mode: each tile yields one partial per row.
  """

  rows: int
  cols: int
  block_rows: int
  block_cols: int
  tile_rows: int
  tile_cols: int
  per_row: bool

  @property
  def grid(self) -> tuple[int, int]:
    return (-(-self.rows // self.tile_rows), -(-self.cols // self.tile_cols))

  @property
  def stats_per_tile(self) -> int:
    return self.tile_rows if self.per_row else 1

  @property
  def ragged(self) -> bool:
    return bool(self.rows % self.tile_rows or self.cols % self.tile_cols)

  @property
  def partial_block(self) -> tuple[int, int]:
    """A block's extent in the grid of partials [rows or tiles, col tiles]."""
    nrt, nct = self.grid
    pr = (self.block_rows if self.per_row
          else (nrt if self.block_rows == self.rows
                else self.block_rows // self.tile_rows))
    pc = nct if self.block_cols == self.cols else self.block_cols // self.tile_cols
    return pr, pc


def _fold_rows(part: _partition.Partition) -> tuple[int, int] | None:
  """(rows, block_rows) of the 2-D view, or None if blocks are not contiguous."""
  *lead, _ = part.shape
  *lead_block, _ = part.block
  if not lead:
    return 1, 1
  rows = math.prod(lead)
  # Dimensions before the last two (of the leading ones) must hold one row
  # of blocks each; from some k on, leading dims may instead be whole.
  k = 0
  while k < len(lead) - 1 and lead_block[k] == 1:
    k += 1
  if all(b == d for b, d in zip(lead_block[k:], lead[k:])):
    return rows, math.prod(lead[k:])
  if k == len(lead) - 1:
    b, d = lead_block[k], lead[k]
    if k == 0 or d % b == 0:
      return rows, b
  return None


def plan(part: _partition.Partition) -> Tiling | None:
  """The tiling of ``part``, or None where the kernels do not apply."""
  if not part.shape or math.prod(part.shape) == 0:
    return None
  folded = _fold_rows(part)
  if folded is None:
    return None
  rows, br = folded
  cols, bc = part.shape[-1], part.block[-1]
  if bc == cols:
    tc = min(MAX_TILE_COLS, _pow2_ceil(cols))
  else:
    tc = min(MAX_TILE_COLS, _largest_pow2_divisor(bc))
  budget = max(1, TILE_ELEMENTS // tc)
  if br == rows:
    tr, per_row = min(budget, _pow2_ceil(rows)), False
  elif min(budget, _largest_pow2_divisor(br)) >= _MIN_TILE_ROWS:
    tr, per_row = min(budget, _largest_pow2_divisor(br)), False
  else:
    tr, per_row = min(budget, _pow2_ceil(rows)), True
  return Tiling(rows, cols, br, bc, tr, tc, per_row)


# ----------------------------------------------------------------------------
# Kernel bodies: float32 tiles, bit arithmetic from mor_jax._numerics.


def _is_finite(x: jax.Array) -> jax.Array:
  bits = jax.lax.bitcast_convert_type(x, jnp.int32)
  return (bits & _EXP_FIELD) != _EXP_FIELD


def _in_array(t: Tiling) -> jax.Array:
  """Which elements of this program's tile lie inside the array."""
  i, j = pl.program_id(0), pl.program_id(1)
  r = i * t.tile_rows + jax.lax.broadcasted_iota(
      jnp.int32, (t.tile_rows, t.tile_cols), 0)
  c = j * t.tile_cols + jax.lax.broadcasted_iota(
      jnp.int32, (t.tile_rows, t.tile_cols), 1)
  return (r < t.rows) & (c < t.cols)


def _load_tile(x_ref, t: Tiling) -> jax.Array:
  """The tile in float32, subnormals flushed, outside the array zero."""
  if t.ragged:
    mask = _in_array(t)
    x = pltriton.load(x_ref, mask=mask, other=0)
    x = jnp.where(mask, x, 0)  # interpret mode pads with garbage, not `other`
  else:
    x = x_ref[...]
  return _numerics.flush_subnormals(x.astype(jnp.float32))


def _reduce(v: jax.Array, op, t: Tiling) -> jax.Array:
  """Per-row (shape [tile_rows]) or per-tile (shape [1]) reduction."""
  if t.per_row:
    return op(v, axis=1)
  return jnp.reshape(op(v), (1,))


def _stats_kernel(x_ref, amax_ref, nonfinite_ref, count_ref, min_ref, *,
                  t: Tiling):
  x = _load_tile(x_ref, t)
  finite = _is_finite(x)
  ax = jnp.where(finite, jnp.abs(x), 0.0)
  nonzero = ax != 0
  amax_ref[...] = _reduce(ax, jnp.max, t)
  nonfinite_ref[...] = _reduce((~finite).astype(jnp.int32), jnp.max, t)
  count_ref[...] = _reduce(nonzero.astype(jnp.int32), jnp.sum, t)
  min_ref[...] = _reduce(jnp.where(nonzero, ax, jnp.inf), jnp.min, t)


def _round_in_hardware(x: jax.Array, finite: jax.Array, scale: jax.Array,
                       fmt: _formats.Representation):
  """(x * scale, its FP8 value in float32, the FP8 array) of finite ``x``.

  Clipped first, the hardware conversion rounds to nearest even onto the
  grid, bit for bit what ``mor_jax._numerics.round_to_grid`` computes with
  integer arithmetic for the XLA path, in a fraction of the instructions
  (pass 2 was bound by them: 1.40 ms against 0.72 ms on the H100). Inside a
  Triton kernel the FP8 round trip is explicit and nothing deletes it, unlike
  an XLA fusion on the GPU (MOR_SPEC section 8); non-finite elements come
  out as 0 and are patched by the caller.
  """
  y = x * scale
  yc = jnp.clip(jnp.where(finite, y, 0.0), -fmt.max, fmt.max)
  q8 = yc.astype(fmt.dtype)
  return y, q8.astype(jnp.float32), q8


def _quantize_kernel(x_ref, scale_ref, recip_ref, *out_refs, t: Tiling,
                     fmt: _formats.Representation, output: str):
  out_ref, err_ref = (out_refs if output != "none" else (None, *out_refs))
  x = _load_tile(x_ref, t)
  scale = scale_ref[...]
  if t.per_row:
    scale = scale[:, None]
  finite = _is_finite(x)
  y, q, q8 = _round_in_hardware(x, finite, scale, fmt)
  counted = (x != 0) & finite
  # An element that rounds to zero has error 1. Triton divides float32 to
  # within 2 ulp (div.full), not correctly rounded: error sums may differ
  # from XLA's in the last bits, as summation order makes them anyway.
  ay = jnp.where(counted, jnp.abs(y), 1.0)
  term = jnp.where(q == 0, 1.0, jnp.abs(y - q) / ay)
  err_ref[...] = _reduce(jnp.where(counted, term, 0.0), jnp.sum, t)
  if output == "codes":
    # The conversion saturates infinities: non-finite codes are set as
    # ml_dtypes casts them (NaN; E4M3 has no infinity).
    nan, pos_inf, neg_inf = _numerics.special_codes(fmt)
    special = jnp.where(x != x, nan, jnp.where(x > 0, pos_inf, neg_inf))
    out = jnp.where(finite,
                    jax.lax.bitcast_convert_type(q8, jnp.uint8).astype(
                        jnp.int32), special).astype(jnp.uint8)
  elif output == "values":
    recip = recip_ref[...]
    if t.per_row:
      recip = recip[:, None]
    v = _numerics.flush_subnormals(q * recip).astype(out_ref.dtype)
    # Non-finite inputs pass through unchanged (x here is the float32 copy:
    # exact for NaN and +-inf in every input dtype).
    out = jnp.where(finite, v, x.astype(out_ref.dtype))
  else:
    return
  if t.ragged:
    pltriton.store(out_ref, out, mask=_in_array(t))
  else:
    out_ref[...] = out


# ----------------------------------------------------------------------------
# Wrappers: the contracts of mor_jax._quantize.block_stats and
# quantize_with_scales.


def _compiler_params(t: Tiling):
  warps = WARPS_PER_8K_ELEMENTS * t.tile_rows * t.tile_cols // 8192
  return pltriton.CompilerParams(num_warps=min(max(warps, 2), 16),
                                 num_stages=1)


def _tile_spec(t: Tiling) -> pl.BlockSpec:
  return pl.BlockSpec((t.tile_rows, t.tile_cols), lambda i, j: (i, j))


def _partial_spec(t: Tiling) -> pl.BlockSpec:
  return pl.BlockSpec((None, None, t.stats_per_tile), lambda i, j: (i, j, 0))


def _partial_shape(t: Tiling, dtype) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct((*t.grid, t.stats_per_tile), dtype)


def _to_partial_grid(p: jax.Array, t: Tiling) -> jax.Array:
  """[nrt, nct, k] kernel partials -> [rows or row tiles, col tiles]."""
  nrt, nct, k = p.shape
  if not t.per_row:
    return p.reshape(nrt, nct)
  return jnp.transpose(p, (0, 2, 1)).reshape(nrt * k, nct)[:t.rows]


def _reduce_to_blocks(p: jax.Array, t: Tiling, part: _partition.Partition,
                      op, identity) -> jax.Array:
  """Reduces kernel partials over each block; returns ``part.grid`` shape."""
  grid = _to_partial_grid(p, t)
  pp = _partition.Partition.build(grid.shape, t.partial_block)
  pad = [(0, q - d) for d, q in zip(pp.shape, pp.padded)]
  blocked = jnp.pad(grid, pad, constant_values=identity).reshape(
      pp.blocked_shape)
  if op is jnp.sum and jnp.issubdtype(p.dtype, jnp.floating):
    out = _partition.block_sum(blocked, pp)
  else:
    out = op(blocked, axis=pp.block_axes)
  return out.reshape(part.grid)


def _view_2d(x: jax.Array, t: Tiling) -> jax.Array:
  return x.reshape(t.rows, t.cols)


def block_stats(x: jax.Array, part: _partition.Partition, t: Tiling, *,
                interpret: bool) -> _quantize.BlockStats:
  """Pass 1 with Pallas: the statistics of every block of ``x``."""
  partials = pl.pallas_call(
      functools.partial(_stats_kernel, t=t),
      grid=t.grid,
      in_specs=[_tile_spec(t)],
      out_specs=[_partial_spec(t)] * 4,
      out_shape=[_partial_shape(t, jnp.float32), _partial_shape(t, jnp.int32),
                 _partial_shape(t, jnp.int32), _partial_shape(t, jnp.float32)],
      compiler_params=_compiler_params(t),
      interpret=interpret,
      name="mor_block_stats",
  )(_view_2d(x, t))
  amax, nonfinite, count, min_nonzero = partials
  return _quantize.BlockStats(
      amax=_reduce_to_blocks(amax, t, part, jnp.max, 0.0),
      nonfinite=_reduce_to_blocks(nonfinite, t, part, jnp.max, 0) > 0,
      count=_reduce_to_blocks(count, t, part, jnp.sum, 0),
      min_nonzero=_reduce_to_blocks(min_nonzero, t, part, jnp.min, jnp.inf))


def _per_tile(grid_values: jax.Array, t: Tiling,
              part: _partition.Partition) -> jax.Array:
  """Per-block values [part.grid] -> the [nrt, nct, k] layout of the tiles."""
  nrt, nct = t.grid
  g = grid_values.reshape(-(-t.rows // t.block_rows), -(-t.cols // t.block_cols))
  if t.per_row:
    row_block = np.arange(nrt * t.tile_rows).reshape(nrt, t.tile_rows)
    row_block = np.minimum(row_block // t.block_rows, g.shape[0] - 1)
  else:
    per = t.partial_block[0]
    row_block = (np.arange(nrt) // per).reshape(nrt, 1)
  col_block = np.arange(nct) // t.partial_block[1]
  return g[row_block[:, None, :], col_block[None, :, None]]


def quantize_with_scales(x: jax.Array, part: _partition.Partition,
                         scale: jax.Array, fmt: _formats.Representation,
                         output: str, t: Tiling, *, interpret: bool
                         ) -> tuple[jax.Array | None, jax.Array]:
  """Pass 2 with Pallas: see ``mor_jax._quantize.quantize_with_scales``."""
  out_shape, out_specs = [], []
  if output == "codes":
    out_shape.append(jax.ShapeDtypeStruct((t.rows, t.cols), jnp.uint8))
  elif output == "values":
    out_shape.append(jax.ShapeDtypeStruct((t.rows, t.cols), x.dtype))
  if out_shape:
    out_specs.append(_tile_spec(t))
  out_shape.append(_partial_shape(t, jnp.float32))
  out_specs.append(_partial_spec(t))
  results = pl.pallas_call(
      functools.partial(_quantize_kernel, t=t, fmt=fmt, output=output),
      grid=t.grid,
      in_specs=[_tile_spec(t), _partial_spec(t), _partial_spec(t)],
      out_specs=out_specs,
      out_shape=out_shape,
      compiler_params=_compiler_params(t),
      interpret=interpret,
      name=f"mor_quantize_{output}",
  )(_view_2d(x, t), _per_tile(scale, t, part),
    _per_tile(_quantize.reciprocal(scale), t, part))
  err_sum = _reduce_to_blocks(results[-1], t, part, jnp.sum, 0.0)
  if output == "codes":
    out = jax.lax.bitcast_convert_type(results[0], fmt.dtype).reshape(x.shape)
  elif output == "values":
    out = results[0].reshape(x.shape)
  else:
    out = None
  return out, err_sum
