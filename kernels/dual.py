"""Both GEMM orientations of one matrix from one read: the cast-transpose.

A linear layer quantizes each of X, W and dY twice, once per GEMM it enters
(docs/numerics.md section 6): on a matrix T [R, C] once with one scale per
row (the orientation whose GEMM contracts C) and once with one scale per
column (the one that contracts R, which wants T^T K-major). With per-row or
per-tensor scales, both come from one pass over T:

- pass 1 (``dual_stats``) reads T once and gives every row's amax and every
  column's statistics (amax, non-finite flag, count of finite nonzero
  elements, min |x|), whose reductions are the whole tensor's;
- pass 2 (``dual_codes``), with the scales of both orientations, reads T
  again and writes the codes of T [R, C] with the row scales and the codes
  of T^T [C, R] with the column scales, and both orientations' sums of the
  relative-error terms, per column of T.

With one decision per tensor, nothing per row but the amax is used: pass 1
reduces each tile across threads once (the row amaxes), where it did four
times, and pass 2 not at all, where it did once (the row error sums); the
column accumulators are reduced once per program.

Codes at NaN or +-inf positions are not specified: a tensor holding one is
never represented in FP8 (docs/numerics.md section 5). ``PallasDual``
implements ``mor_jax._passes.DualPasses``, as ``mor_jax._xla.XlaDual`` does
in jnp, and ``mor_jax._dispatch`` chooses. Under ``jit`` with
sharded operands both passes run per shard: a row's amax is combined across
the mesh axes of the columns, a column's statistics and error sums across
those of the rows, and the transposed codes are sharded transposed.

Backend: Triton, as for the quantization passes (kernels/quantize.py says
why); the transposed store goes through shared memory, which Triton lays out
itself.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton
from jax.sharding import PartitionSpec as P

from mor_jax import _formats
from mor_jax import _passes
from mor_jax.kernels import sharding
from mor_jax.kernels import tile


@dataclasses.dataclass(frozen=True, kw_only=True)
class PassTiling:
  """Tiles of one dual pass (hashable: part of every cache key).

  A program covers ``row_steps`` tiles of ``tile_rows`` x ``tile_cols``,
  one column strip, in a loop: its column statistics accumulate element by
  element and reduce across threads once. ``prefetch`` issues each step's
  load of the next tile before the step works on its own (``_steps``).
  """

  tile_rows: int = 16
  tile_cols: int = 128
  row_steps: int = 16
  num_warps: int = 4
  num_stages: int = 2
  prefetch: bool = True

  def __post_init__(self):
    tile.check_powers_of_two(self, flags=("prefetch",))

  @property
  def band(self) -> int:
    """Rows per program."""
    return self.tile_rows * self.row_steps


@dataclasses.dataclass(frozen=True, kw_only=True)
class DualConfig:
  """Tilings of the two passes: they load alike but differ in work per
  element, and their fastest tilings differ.

  The defaults are the fastest tilings of each pass on the H200 at
  (16384, 8192) bf16 (``benchmarks/profile.py --sweep dual`` times both
  passes under each tiling, without and with ``prefetch``;
  docs/benchmarks.md, twentieth session). Both passes wait for their loads
  more than for anything else (Nsight Compute), so what matters is how many
  bytes each warp has in flight against how many warps the registers
  allow: statistics 0.112 ms with a tile of 8 x 256 loaded a step ahead
  (0.129 without), codes 0.228-0.230 ms with 32 x 64 tiles on 8 warps, 8
  elements per thread, not loaded ahead (4 warps: 0.241-0.243; 16 x 64
  tiles on 4 warps, the eighteenth session's, 0.277). Under sustained load
  the GPU runs at its power limit (``benchmarks/power.py``), so kernel time
  saved shows only in part in a looped step: the codes pass on 8 warps
  against 4 took gpu1b_wide's training step from 160.2 to 159.2 ms in one
  process, and left the layer at (16384, 8192, 8192) timed in turns where
  it was (0.632 and 0.631 of nn.Dense BF16's time per round;
  docs/benchmarks.md, twenty-first session).

  Examples:
    >>> import mor_jax
    >>> from mor_jax import kernels
    >>> codes = kernels.PassTiling(tile_rows=16, tile_cols=64, row_steps=16)
    >>> config = kernels.KernelConfig(dual=kernels.DualConfig(codes=codes))
    >>> config.dual.codes.band, config.dual.stats.band  # rows per program
    (256, 256)
    >>> with mor_jax.use_implementation("pallas", config):
    ...   mor_jax.implementation()
    'pallas'
  """

  stats: PassTiling = PassTiling(tile_rows=8, tile_cols=256, row_steps=32,
                                 num_warps=4, num_stages=2, prefetch=True)
  codes: PassTiling = PassTiling(tile_rows=32, tile_cols=64, row_steps=8,
                                 num_warps=8, num_stages=2, prefetch=False)

  def __post_init__(self):
    for name in ("stats", "codes"):
      if not isinstance(getattr(self, name), PassTiling):
        raise TypeError(f"DualConfig.{name} must be a "
                        f"mor_jax.kernels.dual.PassTiling, got "
                        f"{getattr(self, name)!r}.")


def _grid(shape, cfg: PassTiling) -> tuple[int, int]:
  return -(-shape[0] // cfg.band), -(-shape[1] // cfg.tile_cols)


def _steps(x_ref, shape, cfg: PassTiling, body, init):
  """``body(elements, rows, mask, carry)`` over the program's tiles of x, in
  a loop.

  elements: the tile as ``tile.load`` gives it; rows: its slice of the
  program's band; mask: which of its elements lie in the array (None where
  all do).

  With ``cfg.prefetch`` the load of tile s + 1 is issued before the work on
  tile s, whose elements it carried from the step before, so a warp has
  two tiles in flight where it had one. Both passes mostly wait for their
  loads (Nsight Compute on the H200: at 24-36% occupancy, limited by
  registers, the first use of each loaded tile held 52-55% of the stall
  samples; docs/benchmarks.md, twentieth session). The statistics pass
  gains 13% from it; the codes pass, whose tile of 32 x 64 already keeps
  many elements in flight, does not (0.247 ms against 0.243 on 4 warps,
  0.313 against 0.230 on 8: its registers then allow fewer warps).
  """
  tr, tc = cfg.tile_rows, cfg.tile_cols
  ragged = shape[0] % cfg.band or shape[1] % tc
  # Outside the loop: interpret mode gives program ids at the top level.
  first_row = pl.program_id(0) * cfg.band
  first_col = pl.program_id(1) * tc

  def at(s):
    mask = None
    if ragged:
      r = first_row + s * tr + jax.lax.broadcasted_iota(jnp.int32, (tr, tc), 0)
      c = first_col + jax.lax.broadcasted_iota(jnp.int32, (tr, tc), 1)
      mask = (r < shape[0]) & (c < shape[1])
    return pl.ds(s * tr, tr), mask

  def read(s):
    rows, mask = at(s)
    return tile.read(x_ref.at[rows, :], mask)

  def work(s, stored, carry):
    return body(tile.decode(stored), *at(s), carry)

  if not cfg.prefetch:
    return jax.lax.fori_loop(0, cfg.row_steps,
                             lambda s, carry: work(s, read(s), carry), init)

  def step(s, carry):
    acc, stored = carry
    ahead = read(s + 1)
    return work(s, stored, acc), ahead

  acc, last = jax.lax.fori_loop(0, cfg.row_steps - 1, step, (init, read(0)))
  return work(cfg.row_steps - 1, last, acc)


def _stats_kernel(x_ref, row_amax, *col_refs, shape, cfg: PassTiling):
  # col_refs: amax, nonfinite, count, min of the columns.

  def step(elements, rows, mask, acc):
    del mask  # elements outside the array are zeros: not counted
    _, _, abs_bits, counted = elements
    tile_acc = (jnp.where(counted, abs_bits, 0), abs_bits,
                counted.astype(jnp.int32),
                jnp.where(counted, abs_bits, tile.EXP_FIELD))
    # The one reduction across threads per tile: a row needs its amax only
    # (mor_jax._passes.DualStats), the columns get theirs once, below.
    row_amax[rows] = tile.as_float(jnp.max(tile_acc[0], axis=1))
    return (jnp.maximum(acc[0], tile_acc[0]), jnp.maximum(acc[1], tile_acc[1]),
            acc[2] + tile_acc[2], jnp.minimum(acc[3], tile_acc[3]))

  tile_shape = (cfg.tile_rows, cfg.tile_cols)
  zeros = jnp.zeros(tile_shape, jnp.int32)
  acc = _steps(x_ref, shape, cfg, step,
               (zeros, zeros, zeros,
                jnp.full(tile_shape, tile.EXP_FIELD, jnp.int32)))
  amax, nonfinite, count, low = col_refs
  amax[...] = tile.as_float(jnp.max(acc[0], axis=0))
  # NaN and +-inf have the largest magnitude bits of all.
  nonfinite[...] = (jnp.max(acc[1], axis=0) >= tile.EXP_FIELD).astype(
      jnp.int32)
  count[...] = jnp.sum(acc[2], axis=0)
  low[...] = tile.as_float(jnp.min(acc[3], axis=0))


def _codes_kernel(x_ref, row_scale_ref, col_scale_ref, codes_ref, codes_t_ref,
                  row_err_ref, col_err_ref, *, shape, cfg: PassTiling,
                  fmt: _formats.Representation, ptx: bool):
  col_scale = col_scale_ref[...][None, :]

  def step(elements, rows, mask, acc):
    x, bits, _, counted = elements
    x = tile.flushed(x, bits, counted)
    if_zero = counted.astype(jnp.float32)
    errs = []
    for scale, out_ref, transposed in (
        (row_scale_ref[rows][:, None], codes_ref.at[rows, :], False),
        (col_scale, codes_t_ref.at[:, rows], True)):
      # As in kernels/quantize.py: the hardware conversion rounds to nearest
      # even onto the grid and saturates, as the XLA path rounds and clips.
      y = x * scale
      q8 = y.astype(fmt.dtype)
      errs.append(tile.error_terms(y, q8.astype(jnp.float32), if_zero,
                                   ptx=ptx))
      codes = jax.lax.bitcast_convert_type(q8, jnp.uint8)
      if transposed:
        tile.store(out_ref, codes.T, None if mask is None else mask.T)
      else:
        tile.store(out_ref, codes, mask)
    # Both orientations' terms add up element by element: only their totals
    # are used (mor_jax._passes.DualPasses), so no tile is reduced across
    # threads inside the loop.
    return acc[0] + errs[0], acc[1] + errs[1]

  zeros = jnp.zeros((cfg.tile_rows, cfg.tile_cols), jnp.float32)
  acc = _steps(x_ref, shape, cfg, step, (zeros, zeros))
  row_err_ref[...] = jnp.sum(acc[0], axis=0)
  col_err_ref[...] = jnp.sum(acc[1], axis=0)


def _reduce_partials(parts, ops):
  """Each [programs, n] partial reduced over its programs by its (op,
  identity).

  One variadic reduce: XLA runs it as one kernel, where a reduction per
  partial ran one each (docs/benchmarks.md, nineteenth session: 78 small
  launches in the layer's step).
  """
  inits = tuple(jnp.asarray(init, p.dtype) for (_, init), p in zip(ops, parts))
  return jax.lax.reduce(
      tuple(parts), inits,
      lambda a, b: tuple(op(u, v) for (op, _), u, v in zip(ops, a, b)), (0,))


def _partials_spec(axis: int, n: int) -> pl.BlockSpec:
  """Per-tile partials along ``axis`` (1: of rows, 0: of columns)."""
  if axis == 1:
    return pl.BlockSpec((None, n), lambda i, j: (j, i))
  return pl.BlockSpec((None, n), lambda i, j: (i, j))


def _partials_shape(x, cfg: PassTiling, axis: int, dtype):
  gr, gc = _grid(x.shape, cfg)
  if axis == 1:
    return sharding.result((gc, gr * cfg.band), dtype, x)
  return sharding.result((gr, gc * cfg.tile_cols), dtype, x)


def _compiler_params(cfg: PassTiling):
  return pltriton.CompilerParams(num_warps=cfg.num_warps,
                                 num_stages=cfg.num_stages)


def _local_stats(x: jax.Array, cfg: PassTiling, interpret: bool):
  """Per-row amax and per-column (amax, nonfinite, count, min) of one [R, C]."""
  r, c = x.shape
  specs = [_partials_spec(1, cfg.band)] + [_partials_spec(0, cfg.tile_cols)] * 4
  shapes = [_partials_shape(x, cfg, 1, jnp.float32)] + [
      _partials_shape(x, cfg, 0, dtype)
      for dtype in (jnp.float32, jnp.int32, jnp.int32, jnp.float32)]
  parts = pl.pallas_call(
      functools.partial(_stats_kernel, shape=x.shape, cfg=cfg),
      grid=_grid(x.shape, cfg),
      in_specs=[pl.BlockSpec((cfg.band, cfg.tile_cols),
                             lambda i, j: (i, j))],
      out_specs=specs,
      out_shape=shapes,
      compiler_params=_compiler_params(cfg),
      interpret=interpret,
      name="mor_dual_stats",
  )(x)
  # Every partial is >= 0: 0 is the identity of their maxima, as in
  # kernels/quantize.py.
  cols = _reduce_partials(parts[1:], ((jnp.maximum, 0.0), (jnp.maximum, 0),
                                      (jnp.add, 0), (jnp.minimum, jnp.inf)))
  return (jnp.max(parts[0], axis=0)[:r], *(v[:c] for v in cols))


def _local_codes(x: jax.Array, row_scale: jax.Array, col_scale: jax.Array,
                 cfg: PassTiling, fmt: _formats.Representation,
                 interpret: bool, ptx: bool):
  """(codes [R, C], codes of x^T [C, R], error sums of each orientation
  per column of x)."""
  r, c = x.shape
  tr, tc = cfg.band, cfg.tile_cols
  gr, gc = _grid(x.shape, cfg)
  # Elements outside x are zeros, and a zero times a finite scale is zero
  # (tile.flushed): the scales' tails are read, so they are padded with 1s.
  row_scale = jnp.pad(row_scale, (0, gr * tr - r), constant_values=1.0)
  col_scale = jnp.pad(col_scale, (0, gc * tc - c), constant_values=1.0)
  codes, codes_t, row_err, col_err = pl.pallas_call(
      functools.partial(_codes_kernel, shape=x.shape, cfg=cfg, fmt=fmt,
                        ptx=ptx and not interpret),
      grid=_grid(x.shape, cfg),
      in_specs=[pl.BlockSpec((tr, tc), lambda i, j: (i, j)),
                pl.BlockSpec((tr,), lambda i, j: (i,)),
                pl.BlockSpec((tc,), lambda i, j: (j,))],
      out_specs=[pl.BlockSpec((tr, tc), lambda i, j: (i, j)),
                 pl.BlockSpec((tc, tr), lambda i, j: (j, i)),
                 _partials_spec(0, tc), _partials_spec(0, tc)],
      out_shape=[sharding.result((r, c), jnp.uint8, x, row_scale, col_scale),
                 sharding.result((c, r), jnp.uint8, x, row_scale, col_scale),
                 _partials_shape(x, cfg, 0, jnp.float32),
                 _partials_shape(x, cfg, 0, jnp.float32)],
      compiler_params=_compiler_params(cfg),
      interpret=interpret,
      name="mor_dual_codes",
  )(x, row_scale, col_scale)
  as_fp8 = lambda u: jax.lax.bitcast_convert_type(u, fmt.dtype)  # noqa: E731
  errs = _reduce_partials((row_err, col_err), ((jnp.add, 0.0),) * 2)
  return (as_fp8(codes), as_fp8(codes_t), *(e[:c] for e in errs))


# ----------------------------------------------------------------------------
# Per shard: a row's statistics combine across the columns' mesh axes, a
# column's across the rows'.

_STATS_COMBINE = ("max", "max", "sum", "min")


@dataclasses.dataclass(frozen=True)
class _Stats:
  cfg: DualConfig
  interpret: bool
  rule = "r c -> r, c, c, c, c"

  def local(self, x):
    return _local_stats(x, self.cfg.stats, self.interpret)

  def plan(self, arg_shapes):
    mesh, (ra, ca) = sharding.layout(arg_shapes[0])
    r, c = sharding.entry(ra), sharding.entry(ca)
    results = sharding.named(mesh, P(r), *(P(c),) * 4)

    def combine(outs):
      return (sharding.combine("max", outs[0], ca),
              *(sharding.combine(op, v, ra)
                for op, v in zip(_STATS_COMBINE, outs[1:])))

    return mesh, results, sharding.named(mesh, P(r, c)), combine


@dataclasses.dataclass(frozen=True)
class _Codes:
  cfg: DualConfig
  fmt: _formats.Representation
  interpret: bool
  ptx: bool
  rule = "r c, r, c -> r c, c r, c, c"

  def local(self, x, row_scale, col_scale):
    return _local_codes(x, row_scale, col_scale, self.cfg.codes, self.fmt,
                        self.interpret, self.ptx)

  def plan(self, arg_shapes):
    mesh, (ra, ca) = sharding.layout(arg_shapes[0])
    r, c = sharding.entry(ra), sharding.entry(ca)

    def combine(outs):
      codes, codes_t, *errs = outs
      return (codes, codes_t, *(sharding.combine("sum", e, ra) for e in errs))

    return (mesh, sharding.named(mesh, P(r, c), P(c, r), P(c), P(c)),
            sharding.named(mesh, P(r, c), P(r), P(c)), combine)


@dataclasses.dataclass(frozen=True)
class PallasDual:
  """``mor_jax._passes.DualPasses`` with the kernels.

  Attributes:
    cfg: the passes' tilings.
    interpret: run in Pallas' interpret mode (off a GPU).
    ptx: where compiled, the error terms take PTX's reciprocal
      (``tile.error_terms``); False for GPUs that run no PTX.
  """

  cfg: DualConfig
  interpret: bool
  ptx: bool = True

  def stats(self, x: jax.Array) -> _passes.DualStats:
    row_amax, amax, nonfinite, count, low = sharding.per_shard(
        _Stats(self.cfg, self.interpret))(x)
    return _passes.DualStats(
        row_amax[:, None],
        _passes.BlockStats(amax=amax[:, None],
                           nonfinite=(nonfinite > 0)[:, None],
                           count=count[:, None], min_nonzero=low[:, None]))

  def codes(self, x: jax.Array, row_scale: jax.Array, col_scale: jax.Array,
            fmt: _formats.Representation):
    codes, codes_t, row_err, col_err = sharding.per_shard(
        _Codes(self.cfg, fmt, self.interpret, self.ptx))(x, row_scale,
                                                          col_scale)
    return codes, codes_t, row_err[:, None], col_err[:, None]
