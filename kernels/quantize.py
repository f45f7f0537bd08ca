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

``PallasPasses`` implements ``mor_jax._passes.Passes``, as the XLA reference
``mor_jax._xla.XlaPasses`` does, with bit-identical codes, scales and
decisions: pass 1 takes its statistics on the float32 bits, pass 2 rounds
with the GPU's FP8 conversion, which lands on the same grid point. Error
sums differ in the last bits (summation order, Triton's division).

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
Partitions that cannot be folded into 2-D return ``None`` from ``plan``
(``passes`` declines them) and use the XLA implementation. Under ``jit`` with sharded operands both passes
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
from mor_jax import _passes
from mor_jax import _scaling
from mor_jax.kernels import sharding
from mor_jax.kernels import tile


@dataclasses.dataclass(frozen=True, kw_only=True)
class TileConfig:
  """Tile budget and launch settings of the quantization kernels.

  A hashable value: it is part of the key of every trace and cache that
  builds a kernel, so two configs never share a compiled kernel. The
  defaults: 4K elements (8 KB of bf16) per program with 4 warps, the best of
  ``benchmarks/quantize.py --sweep`` (docs/benchmarks.md); columns up to 512
  keep per-row partials few.

  Attributes:
    tile_elements: elements per program in both passes.
    patch_tile_elements: elements per program of the non-finite patch step,
      whose programs mostly return at once (launching them is the cost).
    max_tile_cols: widest tile.
    warps_per_8k: warps per 8192 elements of tile (clamped to 2..16).
    min_tile_rows: blocks with fewer tile rows are reduced per row instead.
  """

  tile_elements: int = 4096
  patch_tile_elements: int = 16384
  max_tile_cols: int = 512
  warps_per_8k: int = 8
  min_tile_rows: int = 8

  def __post_init__(self):
    tile.check_powers_of_two(self)


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


def plan(part: _partition.Partition, tiles: TileConfig,
         tile_elements: int | None = None) -> Tiling | None:
  """The tiling of ``part``, or None where the kernels do not apply.

  ``tile_elements``: the tile budget, ``tiles.tile_elements`` by default.
  """
  if not part.shape or math.prod(part.shape) == 0:
    return None
  folded = _fold_rows(part)
  if folded is None:
    return None
  rows, br = folded
  cols, bc = part.shape[-1], part.block[-1]
  if bc == cols:
    tc = min(tiles.max_tile_cols, _pow2_ceil(cols))
  else:
    tc = min(tiles.max_tile_cols, _largest_pow2_divisor(bc))
  budget = max(1, (tile_elements or tiles.tile_elements) // tc)
  if br == rows:
    tr, per_row = min(budget, _pow2_ceil(rows)), False
  elif min(budget, _largest_pow2_divisor(br)) >= tiles.min_tile_rows:
    tr, per_row = min(budget, _largest_pow2_divisor(br)), False
  else:
    tr, per_row = min(budget, _pow2_ceil(rows)), True
  return Tiling(rows, cols, br, bc, tr, tc, per_row)


# ----------------------------------------------------------------------------
# Kernel bodies (the per-element tests: kernels/tile.py).


def _mask(t: Tiling) -> jax.Array | None:
  """The in-array mask of this program's tile, None where it is whole."""
  if not t.ragged:
    return None
  return tile.in_array(t.rows, t.cols, t.tile_rows, t.tile_cols)


def _reduce(v: jax.Array, op, t: Tiling) -> jax.Array:
  """Per-row (shape [tile_rows]) or per-tile (shape [1]) reduction."""
  if t.per_row:
    return op(v, axis=1)
  return jnp.reshape(op(v), (1,))


def _stats_kernel(x_ref, amax_ref, nonfinite_ref, count_ref, min_ref, *,
                  t: Tiling):
  _, _, abs_bits, counted = tile.load(x_ref, _mask(t))
  amax_ref[...] = tile.as_float(
      _reduce(jnp.where(counted, abs_bits, 0), jnp.max, t))
  # NaN and +-inf have the largest magnitude bits of all.
  nonfinite_ref[...] = (
      _reduce(abs_bits, jnp.max, t) >= tile.EXP_FIELD).astype(jnp.int32)
  count_ref[...] = _reduce(counted.astype(jnp.int32), jnp.sum, t)
  # The bits of +inf where a block has no counted element, as in XLA.
  min_ref[...] = tile.as_float(
      _reduce(jnp.where(counted, abs_bits, tile.EXP_FIELD), jnp.min, t))


def _quantize_kernel(x_ref, scale_ref, *refs, t: Tiling,
                     fmt: _formats.Representation, output: str,
                     ptx: bool):
  # refs: [recip_ref] (values only), [out_ref] (codes and values), err_ref.
  recip_ref = refs[0] if output == "values" else None
  out_ref = refs[-2] if output != "none" else None
  err_ref = refs[-1]
  x, bits, _, counted = tile.load(x_ref, _mask(t))
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
  # unlike an XLA fusion on the GPU (docs/numerics.md section 7).
  y = tile.flushed(x, bits, counted) * scale
  q8 = y.astype(fmt.dtype)
  q = q8.astype(jnp.float32)
  err_ref[...] = _reduce(tile.error_terms(y, q, counted.astype(jnp.float32),
                                          ptx=ptx), jnp.sum, t)
  if output == "codes":
    out = jax.lax.bitcast_convert_type(q8, jnp.uint8)
  elif output == "values":
    recip = recip_ref[...]
    if t.per_row:
      recip = recip[:, None]
    # q is finite here; _patch_kernel restores non-finite inputs.
    out = _numerics.dequantize_values(q, recip, out_ref.dtype, q_finite=True)
  else:
    return
  tile.store(out_ref, out, _mask(t))


def _patch_kernel(flag_ref, x_ref, out_in_ref, out_ref, *, t: Tiling,
                  fmt: _formats.Representation, output: str):
  """Codes (or values) of the non-finite elements, in flagged tiles only.

  Selecting them inside ``_quantize_kernel`` cost a third of its time (the
  codes ran at 65% of the HBM ceiling with it, 86% without); tiles without
  NaN or infinity (all, in training) return here before loading anything.
  """
  del out_in_ref  # aliased to out_ref
  # Outside the branch: interpret mode gives program ids at the top level only.
  mask = _mask(t)

  @pl.when(jnp.max(flag_ref[...]) != 0)
  def _():
    x, bits, abs_bits, _ = tile.load(x_ref, mask)
    out = (pltriton.load(out_ref, mask=mask, other=0) if t.ragged
           else out_ref[...])
    finite = abs_bits < tile.EXP_FIELD
    if output == "codes":
      # ml_dtypes' codes (NaN; E4M3 has no infinity): the conversion would
      # saturate infinities.
      nan, pos_inf, neg_inf = _numerics.special_codes(fmt)
      special = jnp.where(abs_bits > tile.EXP_FIELD, nan,
                          jnp.where(bits >= 0, pos_inf, neg_inf))
      out = jnp.where(finite, out.astype(jnp.int32), special).astype(jnp.uint8)
    else:
      # Non-finite inputs pass through unchanged (x here is the float32
      # copy: exact for NaN and +-inf in every input dtype).
      out = jnp.where(finite, out, x.astype(out.dtype))
    tile.store(out_ref, out, mask)


# ----------------------------------------------------------------------------
# The passes on one device's [rows, cols] array (or a shard of it), returning
# per-block grids; kernels/sharding.py runs them per shard.


def _compiler_params(t: Tiling, tiles: TileConfig):
  warps = tiles.warps_per_8k * t.tile_rows * t.tile_cols // 8192
  return pltriton.CompilerParams(num_warps=min(max(warps, 2), 16),
                                 num_stages=1)


def _tile_spec(t: Tiling) -> pl.BlockSpec:
  return pl.BlockSpec((t.tile_rows, t.tile_cols), lambda i, j: (i, j))


def _partial_spec(t: Tiling) -> pl.BlockSpec:
  return pl.BlockSpec((None, None, t.stats_per_tile), lambda i, j: (i, j, 0))


def _partial_shape(t: Tiling, dtype, *inputs) -> jax.ShapeDtypeStruct:
  return sharding.result((*t.grid, t.stats_per_tile), dtype, *inputs)


def _plan_2d(shape, block, tiles: TileConfig,
             tile_elements: int | None = None) -> Tiling:
  return plan(_partition.Partition.build(shape, block), tiles, tile_elements)


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
  tiles: TileConfig

  def __call__(self, block, x):
    t = _plan_2d(x.shape, block, self.tiles)
    amax, nonfinite, count, min_nonzero = pl.pallas_call(
        functools.partial(_stats_kernel, t=t),
        grid=t.grid,
        in_specs=[_tile_spec(t)],
        out_specs=[_partial_spec(t)] * 4,
        out_shape=[_partial_shape(t, dtype, x) for dtype in (
            jnp.float32, jnp.int32, jnp.int32, jnp.float32)],
        compiler_params=_compiler_params(t, self.tiles),
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
  output: _passes.Output
  interpret: bool
  tiles: TileConfig
  ptx: bool

  def __call__(self, block, x, scale, nonfinite):
    t = _plan_2d(x.shape, block, self.tiles)
    grids = [scale]
    if self.output == "values":  # only values use the reciprocals
      grids.append(_scaling.reciprocal(scale))
    inputs, in_specs = [x], [_tile_spec(t)]
    for g in grids:
      array, spec = _per_tile(g, t)
      inputs.append(array)
      in_specs.append(spec)
    out_shape, out_specs = [], []
    if self.output != "none":
      dtype = jnp.uint8 if self.output == "codes" else x.dtype
      out_shape.append(sharding.result(x.shape, dtype, *inputs))
      out_specs.append(_tile_spec(t))
    out_shape.append(_partial_shape(t, jnp.float32, *inputs))
    out_specs.append(_partial_spec(t))
    *out, err = pl.pallas_call(
        functools.partial(_quantize_kernel, t=t, fmt=self.fmt,
                          output=self.output,
                          ptx=self.ptx and not self.interpret),
        grid=t.grid,
        in_specs=in_specs,
        out_specs=out_specs,
        out_shape=out_shape,
        compiler_params=_compiler_params(t, self.tiles),
        interpret=self.interpret,
        name=f"mor_quantize_{self.output}",
    )(*inputs)
    if out:
      out = [self._patch(block, x, out[0], nonfinite)]
    return (*out, _reduce_to_blocks(err, t, jnp.sum, 0.0))

  def _patch(self, block, x, out, nonfinite):
    # Coarser tiles than pass 2's: the programs mostly return at once, and
    # launching them is the whole cost.
    t = _plan_2d(x.shape, block, self.tiles, self.tiles.patch_tile_elements)
    flags, flag_spec = _per_tile(nonfinite, t)
    return pl.pallas_call(
        functools.partial(_patch_kernel, t=t, fmt=self.fmt,
                          output=self.output),
        grid=t.grid,
        in_specs=[flag_spec, _tile_spec(t), _tile_spec(t)],
        out_specs=_tile_spec(t),
        out_shape=sharding.result(x.shape, out.dtype, flags, x, out),
        input_output_aliases={2: 0},
        compiler_params=_compiler_params(t, self.tiles),
        interpret=self.interpret,
        name=f"mor_patch_{self.output}",
    )(flags, x, out)


# ----------------------------------------------------------------------------
# The passes of mor_jax._passes.Passes, on any array the plan folds into 2-D.


@dataclasses.dataclass(frozen=True)
class PallasPasses:
  """``mor_jax._passes.Passes`` with the kernels, for one tileable partition.

  ``ptx``: where compiled, the error terms take PTX's reciprocal
  (``tile.error_terms``); False for GPUs that run no PTX.
  """

  part: _partition.Partition
  t: Tiling
  tiles: TileConfig
  interpret: bool
  ptx: bool = True

  @property
  def _block(self) -> tuple[int, int]:
    return self.t.block_rows, self.t.block_cols

  def block_stats(self, x: jax.Array) -> _passes.BlockStats:
    op = sharding.BlockwiseOp(_StatsPass(self.interpret, self.tiles),
                              self._block, n_like_x=0,
                              combine=("max", "max", "sum", "min"))
    amax, nonfinite, count, min_nonzero = sharding.blockwise(op)(
        x.reshape(self.t.rows, self.t.cols))
    grid = self.part.grid
    return _passes.BlockStats(
        amax=amax.reshape(grid), nonfinite=nonfinite.reshape(grid) > 0,
        count=count.reshape(grid), min_nonzero=min_nonzero.reshape(grid))

  def quantize_with_scales(self, x, scale, nonfinite, fmt, output):
    t = self.t
    op = sharding.BlockwiseOp(
        _QuantizePass(fmt, output, self.interpret, self.tiles, self.ptx),
        self._block,
        n_like_x=int(output != "none"), combine=("sum",))
    grid_2d = (-(-t.rows // t.block_rows), -(-t.cols // t.block_cols))
    *out, err_sum = sharding.blockwise(op)(
        x.reshape(t.rows, t.cols), scale.reshape(grid_2d),
        nonfinite.reshape(grid_2d).astype(jnp.int32))
    err_sum = err_sum.reshape(self.part.grid)
    if output == "codes":
      return jax.lax.bitcast_convert_type(out[0], fmt.dtype).reshape(
          x.shape), err_sum
    if output == "values":
      return out[0].reshape(x.shape), err_sum
    return None, err_sum


def passes(part: _partition.Partition, tiles: TileConfig, *,
           interpret: bool, ptx: bool = True) -> PallasPasses | None:
  """The kernels bound to ``part``, or None if ``plan`` cannot tile it."""
  t = plan(part, tiles)
  return None if t is None else PallasPasses(part, t, tiles, interpret, ptx)
