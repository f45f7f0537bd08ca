"""Pallas kernels for the two passes of a block-scaled FP8 quantization.

Pass 1 (``block_stats``) reads the tensor once and writes, per tile, the
amax, a non-finite flag, the count of finite nonzero elements and the
smallest finite nonzero magnitude. The scales (gam, e8m0, fp32) come from
the block grid of amaxes in XLA: a few thousand numbers. Pass 2
(``quantize_with_scales``) reads the tensor again and writes FP8 codes (or,
for fake quantization, the dequantized values in the input dtype) and the
per-tile sums of the relative-error terms; a third kernel gives NaN and
+-inf their codes in the blocks pass 1 flagged, and returns at once
elsewhere. A tensor-level MoR decision is therefore two reads and one FP8
write of the tensor, the 5 bytes per element that
``benchmarks/quantize.py`` measures against the HBM ceiling.

Both functions have the contract of their XLA twins in ``mor_jax._quantize``
and give bit-identical codes, scales and decisions: pass 1 takes its
statistics on the float32 bits, pass 2 rounds with the GPU's FP8
conversion, which lands on the same grid point. Error sums differ in the
last bits (summation order, Triton's division).

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
use the XLA implementation. Under ``jit`` with sharded operands both passes
run per shard (``mor_jax.kernels.sharding``).
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
from mor_jax.kernels import sharding

# Tile budget: 4K elements (8 KB of bf16) per program, 4 warps for such a
# tile: the best of `benchmarks/quantize.py --sweep` on the H100, where tiles
# from 2K to 16K elements were within 5%; columns up to 512 keep rows-mode
# partials small.
TILE_ELEMENTS = 4096
PATCH_TILE_ELEMENTS = 16384
MAX_TILE_COLS = 512
WARPS_PER_8K_ELEMENTS = 8
# Blocks with fewer tile rows than this are reduced per row instead.
_MIN_TILE_ROWS = 8


def _f32_bits(value) -> np.int32:
  return np.float32(value).view(np.int32)


_EXP_FIELD = _f32_bits(np.inf)  # all exponent bits: +inf
_SIGN_BIT = _f32_bits(-0.0)
_ABS_BITS = ~_SIGN_BIT
_MIN_NORMAL_BITS = _f32_bits(np.finfo(np.float32).smallest_normal)


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


def plan(part: _partition.Partition,
         tile_elements: int | None = None) -> Tiling | None:
  """The tiling of ``part``, or None where the kernels do not apply.

  ``tile_elements``: the tile budget, ``TILE_ELEMENTS`` by default.
  """
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
  budget = max(1, (tile_elements or TILE_ELEMENTS) // tc)
  if br == rows:
    tr, per_row = min(budget, _pow2_ceil(rows)), False
  elif min(budget, _largest_pow2_divisor(br)) >= _MIN_TILE_ROWS:
    tr, per_row = min(budget, _largest_pow2_divisor(br)), False
  else:
    tr, per_row = min(budget, _pow2_ceil(rows)), True
  return Tiling(rows, cols, br, bc, tr, tc, per_row)


# ----------------------------------------------------------------------------
# Kernel bodies. Both passes are bound by instructions as much as by memory
# (pass 2 ran at 58% of the HBM ceiling with a float formulation), so the
# tests on each element are integer compares on the float32 bits: one range
# test says finite, normal and nonzero (float32 subnormals count as zeros,
# as in the XLA path), and positive floats order like their bits.


def _in_array(t: Tiling) -> jax.Array:
  """Which elements of this program's tile lie inside the array."""
  i, j = pl.program_id(0), pl.program_id(1)
  r = i * t.tile_rows + jax.lax.broadcasted_iota(
      jnp.int32, (t.tile_rows, t.tile_cols), 0)
  c = j * t.tile_cols + jax.lax.broadcasted_iota(
      jnp.int32, (t.tile_rows, t.tile_cols), 1)
  return (r < t.rows) & (c < t.cols)


def _load_tile(x_ref, t: Tiling, mask: jax.Array | None = None):
  """(x in float32, its bits, |x|'s bits, counted) of the tile.

  ``counted``: finite, normal and nonzero. Outside the array x is zero.
  ``mask``: ``_in_array(t)`` if the caller has it.
  """
  if t.ragged:
    mask = _in_array(t) if mask is None else mask
    x = pltriton.load(x_ref, mask=mask, other=0)
    x = jnp.where(mask, x, 0)  # interpret mode pads with garbage, not `other`
  else:
    x = x_ref[...]
  x = x.astype(jnp.float32)
  bits = jax.lax.bitcast_convert_type(x, jnp.int32)
  abs_bits = bits & _ABS_BITS
  counted = (abs_bits >= _MIN_NORMAL_BITS) & (abs_bits < _EXP_FIELD)
  return x, bits, abs_bits, counted


def _reduce(v: jax.Array, op, t: Tiling) -> jax.Array:
  """Per-row (shape [tile_rows]) or per-tile (shape [1]) reduction."""
  if t.per_row:
    return op(v, axis=1)
  return jnp.reshape(op(v), (1,))


def _as_float(bits: jax.Array) -> jax.Array:
  return jax.lax.bitcast_convert_type(bits, jnp.float32)


def _stats_kernel(x_ref, amax_ref, nonfinite_ref, count_ref, min_ref, *,
                  t: Tiling):
  _, _, abs_bits, counted = _load_tile(x_ref, t)
  amax_ref[...] = _as_float(_reduce(jnp.where(counted, abs_bits, 0), jnp.max,
                                    t))
  # NaN and +-inf have the largest magnitude bits of all.
  nonfinite_ref[...] = (_reduce(abs_bits, jnp.max, t) >= _EXP_FIELD).astype(
      jnp.int32)
  count_ref[...] = _reduce(counted.astype(jnp.int32), jnp.sum, t)
  # The bits of +inf where a block has no counted element, as in XLA.
  min_ref[...] = _as_float(_reduce(jnp.where(counted, abs_bits, _EXP_FIELD),
                                   jnp.min, t))


def _quantize_kernel(x_ref, scale_ref, *refs, t: Tiling,
                     fmt: _formats.Representation, output: str):
  # refs: [recip_ref] (values only), [out_ref] (codes and values), err_ref.
  recip_ref = refs[0] if output == "values" else None
  out_ref = refs[-2] if output != "none" else None
  err_ref = refs[-1]
  x, bits, _, counted = _load_tile(x_ref, t)
  scale = scale_ref[...]
  if t.per_row:
    scale = scale[:, None]
  # Zeros, flushed subnormals and non-finite elements (``_patch_kernel``
  # gives the latter their codes) scale to a zero of x's sign. The hardware
  # conversion rounds to nearest even onto the grid, bit for bit what
  # mor_jax._numerics.round_to_grid computes with integer arithmetic for the
  # XLA path, in a fraction of the instructions, and saturates (satfinite)
  # as the XLA path clips: scales from the amax keep |y| <= F (1 + 2**-23),
  # which also rounds to F in interpret mode's ml_dtypes cast. Inside a
  # Triton kernel the FP8 round trip is explicit and nothing deletes it,
  # unlike an XLA fusion on the GPU (MOR_SPEC section 8).
  y = jnp.where(counted, x * scale, _as_float(bits & _SIGN_BIT))
  q8 = y.astype(fmt.dtype)
  q = q8.astype(jnp.float32)
  # An element that rounds to zero has error 1. Triton divides float32 to
  # within 2 ulp (div.full), not correctly rounded: error sums may differ
  # from XLA's in the last bits, as summation order makes them anyway.
  term = jnp.where(q == 0, 1.0, jnp.abs(y - q) / jnp.abs(y))
  err_ref[...] = _reduce(jnp.where(counted, term, 0.0), jnp.sum, t)
  if output == "codes":
    out = jax.lax.bitcast_convert_type(q8, jnp.uint8)
  elif output == "values":
    recip = recip_ref[...]
    if t.per_row:
      recip = recip[:, None]
    out = _numerics.flush_subnormals(q * recip).astype(out_ref.dtype)
  else:
    return
  _store_tile(out_ref, out, t)


def _store_tile(out_ref, out: jax.Array, t: Tiling,
                mask: jax.Array | None = None) -> None:
  if t.ragged:
    pltriton.store(out_ref, out, mask=_in_array(t) if mask is None else mask)
  else:
    out_ref[...] = out


def _patch_kernel(flag_ref, x_ref, out_in_ref, out_ref, *, t: Tiling,
                  fmt: _formats.Representation, output: str):
  """Codes (or values) of the non-finite elements, in flagged tiles only.

  Selecting them inside ``_quantize_kernel`` cost a third of its time (the
  codes ran at 65% of the HBM ceiling with it, 86% without); tiles without
  NaN or infinity (all, in training) return here before loading anything.
  """
  del out_in_ref  # aliased to out_ref
  # Outside the branch: interpret mode gives program ids at the top level only.
  mask = _in_array(t) if t.ragged else None

  @pl.when(jnp.max(flag_ref[...]) != 0)
  def _():
    x, bits, abs_bits, _ = _load_tile(x_ref, t, mask)
    out = (pltriton.load(out_ref, mask=mask, other=0) if t.ragged
           else out_ref[...])
    finite = abs_bits < _EXP_FIELD
    if output == "codes":
      # ml_dtypes' codes (NaN; E4M3 has no infinity): the conversion would
      # saturate infinities.
      nan, pos_inf, neg_inf = _numerics.special_codes(fmt)
      special = jnp.where(abs_bits > _EXP_FIELD, nan,
                          jnp.where(bits >= 0, pos_inf, neg_inf))
      out = jnp.where(finite, out.astype(jnp.int32), special).astype(jnp.uint8)
    else:
      # Non-finite inputs pass through unchanged (x here is the float32
      # copy: exact for NaN and +-inf in every input dtype).
      out = jnp.where(finite, out, x.astype(out.dtype))
    _store_tile(out_ref, out, t, mask)


# ----------------------------------------------------------------------------
# The passes on one device's [rows, cols] array (or a shard of it), returning
# per-block grids; kernels/sharding.py runs them per shard.


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


def _plan_2d(shape, block, tile_elements: int | None = None) -> Tiling:
  return plan(_partition.Partition.build(shape, block), tile_elements)


def _to_partial_grid(p: jax.Array, t: Tiling) -> jax.Array:
  """[nrt, nct, k] kernel partials -> [rows or row tiles, col tiles]."""
  nrt, nct, k = p.shape
  if not t.per_row:
    return p.reshape(nrt, nct)
  return jnp.transpose(p, (0, 2, 1)).reshape(nrt * k, nct)[:t.rows]


def _reduce_to_blocks(p: jax.Array, t: Tiling, op, identity) -> jax.Array:
  """Reduces kernel partials over each block: the [GR, GC] block grid."""
  grid = _to_partial_grid(p, t)
  pp = _partition.Partition.build(grid.shape, t.partial_block)
  pad = [(0, q - d) for d, q in zip(pp.shape, pp.padded)]
  blocked = jnp.pad(grid, pad, constant_values=identity).reshape(
      pp.blocked_shape)
  if op is jnp.sum and jnp.issubdtype(p.dtype, jnp.floating):
    return _partition.block_sum(blocked, pp)
  return op(blocked, axis=pp.block_axes)


def _per_tile(grid_values: jax.Array, t: Tiling
              ) -> tuple[jax.Array, pl.BlockSpec]:
  """Per-block values [GR, GC] as a kernel input: (array, its BlockSpec).

  In tile mode each tile reads its block's value in place; in rows mode the
  values are gathered into the [nrt, nct, tile_rows] layout of the tiles.
  """
  if not t.per_row:
    pr, pc = t.partial_block
    return grid_values, pl.BlockSpec((1, 1), lambda i, j: (i // pr, j // pc))
  nrt, nct = t.grid
  row_block = np.arange(nrt * t.tile_rows).reshape(nrt, t.tile_rows)
  row_block = np.minimum(row_block // t.block_rows, grid_values.shape[0] - 1)
  col_block = np.arange(nct) // t.partial_block[1]
  return (grid_values[row_block[:, None, :], col_block[None, :, None]],
          _partial_spec(t))


@dataclasses.dataclass(frozen=True)
class _StatsPass:
  """Pass 1: (amax, non-finite flag, count, min |x|) grids of a [rows, cols]."""

  interpret: bool

  def __call__(self, block, x):
    t = _plan_2d(x.shape, block)
    amax, nonfinite, count, min_nonzero = pl.pallas_call(
        functools.partial(_stats_kernel, t=t),
        grid=t.grid,
        in_specs=[_tile_spec(t)],
        out_specs=[_partial_spec(t)] * 4,
        out_shape=[_partial_shape(t, jnp.float32),
                   _partial_shape(t, jnp.int32), _partial_shape(t, jnp.int32),
                   _partial_shape(t, jnp.float32)],
        compiler_params=_compiler_params(t),
        interpret=self.interpret,
        name="mor_block_stats",
    )(x)
    return (_reduce_to_blocks(amax, t, jnp.max, 0.0),
            _reduce_to_blocks(nonfinite, t, jnp.max, 0),
            _reduce_to_blocks(count, t, jnp.sum, 0),
            _reduce_to_blocks(min_nonzero, t, jnp.min, jnp.inf))


@dataclasses.dataclass(frozen=True)
class _QuantizePass:
  """Pass 2: ([codes or values], error-sum grid) of a [rows, cols] array."""

  fmt: _formats.Representation
  output: str
  interpret: bool

  def __call__(self, block, x, scale, nonfinite):
    t = _plan_2d(x.shape, block)
    grids = [scale]
    if self.output == "values":  # only values use the reciprocals
      grids.append(_quantize.reciprocal(scale))
    inputs, in_specs = [x], [_tile_spec(t)]
    for g in grids:
      array, spec = _per_tile(g, t)
      inputs.append(array)
      in_specs.append(spec)
    out_shape, out_specs = [], []
    if self.output != "none":
      dtype = jnp.uint8 if self.output == "codes" else x.dtype
      out_shape.append(jax.ShapeDtypeStruct(x.shape, dtype))
      out_specs.append(_tile_spec(t))
    out_shape.append(_partial_shape(t, jnp.float32))
    out_specs.append(_partial_spec(t))
    *out, err = pl.pallas_call(
        functools.partial(_quantize_kernel, t=t, fmt=self.fmt,
                          output=self.output),
        grid=t.grid,
        in_specs=in_specs,
        out_specs=out_specs,
        out_shape=out_shape,
        compiler_params=_compiler_params(t),
        interpret=self.interpret,
        name=f"mor_quantize_{self.output}",
    )(*inputs)
    if out:
      out = [self._patch(block, x, out[0], nonfinite)]
    return (*out, _reduce_to_blocks(err, t, jnp.sum, 0.0))

  def _patch(self, block, x, out, nonfinite):
    # Coarser tiles than pass 2's: the programs mostly return at once, and
    # launching them is the whole cost.
    t = _plan_2d(x.shape, block, PATCH_TILE_ELEMENTS)
    flags, flag_spec = _per_tile(nonfinite, t)
    return pl.pallas_call(
        functools.partial(_patch_kernel, t=t, fmt=self.fmt,
                          output=self.output),
        grid=t.grid,
        in_specs=[flag_spec, _tile_spec(t), _tile_spec(t)],
        out_specs=_tile_spec(t),
        out_shape=jax.ShapeDtypeStruct(x.shape, out.dtype),
        input_output_aliases={2: 0},
        compiler_params=_compiler_params(t),
        interpret=self.interpret,
        name=f"mor_patch_{self.output}",
    )(flags, x, out)


# ----------------------------------------------------------------------------
# The contracts of mor_jax._quantize.block_stats and quantize_with_scales.


def block_stats(x: jax.Array, part: _partition.Partition, t: Tiling, *,
                interpret: bool) -> _quantize.BlockStats:
  """Pass 1 with Pallas: the statistics of every block of ``x``."""
  op = sharding.BlockwiseOp(_StatsPass(interpret),
                            (t.block_rows, t.block_cols), n_like_x=0,
                            combine=("max", "max", "sum", "min"))
  amax, nonfinite, count, min_nonzero = sharding.blockwise(op)(
      x.reshape(t.rows, t.cols))
  return _quantize.BlockStats(
      amax=amax.reshape(part.grid),
      nonfinite=nonfinite.reshape(part.grid) > 0,
      count=count.reshape(part.grid),
      min_nonzero=min_nonzero.reshape(part.grid))


def quantize_with_scales(x: jax.Array, part: _partition.Partition,
                         scale: jax.Array, nonfinite: jax.Array,
                         fmt: _formats.Representation, output: str, t: Tiling,
                         *, interpret: bool
                         ) -> tuple[jax.Array | None, jax.Array]:
  """Pass 2 with Pallas: see ``mor_jax._quantize.quantize_with_scales``."""
  op = sharding.BlockwiseOp(_QuantizePass(fmt, output, interpret),
                            (t.block_rows, t.block_cols),
                            n_like_x=int(output != "none"), combine=("sum",))
  grid_2d = (-(-t.rows // t.block_rows), -(-t.cols // t.block_cols))
  *out, err_sum = sharding.blockwise(op)(
      x.reshape(t.rows, t.cols), scale.reshape(grid_2d),
      nonfinite.reshape(grid_2d).astype(jnp.int32))
  err_sum = err_sum.reshape(part.grid)
  if output == "codes":
    return jax.lax.bitcast_convert_type(out[0], fmt.dtype).reshape(
        x.shape), err_sum
  if output == "values":
    return out[0].reshape(x.shape), err_sum
  return None, err_sum
