"""The operands of a GEMM's BF16 path, written only when the GEMM needs them.

When MoR rejects an operand of a GEMM (kernels/gemm.py), the GEMM runs in
BF16 on the operands the emulated path uses: for an accepted operand its
FP8 values dequantized (``mor_jax._numerics.dequantize_values``, bit for bit
``mor_jax.dequantize`` in the compute dtype), for a rejected one the tensor
as it came, in the K-major layout of the GEMM. ``wide_operands`` writes both
operands of a GEMM in one launch, and only when the GEMM falls back.

The launch is persistent: a fixed grid of ``WideConfig.programs`` programs
(a few per SM), each of which reads the decision and, when the GEMM falls
back, loops over its share of both operands' tiles. When the GEMM runs in
FP8 (the rule in training) every program returns at once, so the op costs
one small launch per GEMM, and its outputs are left unwritten.

Backend: Triton, as for the quantization passes.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton
from jax.sharding import PartitionSpec as P

from mor_jax import _numerics
from mor_jax.kernels import sharding
from mor_jax.kernels import tile


@dataclasses.dataclass(frozen=True, kw_only=True)
class WideConfig:
  """Tiles and grid of ``wide_operands`` (hashable: part of every cache key).

  Attributes:
    tile_rows: rows of an operand per tile.
    tile_cols: columns (K) per tile.
    programs: programs of the launch at most (fewer where the operands have
      fewer tiles); each loops over every ``programs``-th tile. About two
      per SM of an H200 (132 SMs): when the GEMM runs in FP8, launching
      them is the whole cost.
    num_warps: warps per program.
  """

  tile_rows: int = 64
  tile_cols: int = 256
  # On the H200 (docs/results/gpu-2026-12-01-fp8h): 256 programs write both
  # operands of a (16384, 8192) GEMM as fast as 512 (0.289 ms; 128: 0.397)
  # and halve what the writer adds to a 72-GEMM 4096^3 chain in FP8
  # (+1.8% over XLA's FP8 dot, 512: +3.6%).
  programs: int = 256
  num_warps: int = 8

  def __post_init__(self):
    tile.check_powers_of_two(self)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Operand:
  """One operand [R, K] of a GEMM, as ``mor_jax._fp8.Side`` holds it.

  Attributes:
    x: the operand as it came: [R, K], or [K, R] if ``transposed``.
    codes: its FP8 codes [R, K].
    recip: [R] float32 reciprocals of its per-row scales.
    accepted: bool scalar: the operand was accepted in FP8.
    transposed: whether ``x`` is the transpose of the GEMM's view (static).
  """

  x: jax.Array
  codes: jax.Array
  recip: jax.Array
  accepted: jax.Array
  transposed: bool = dataclasses.field(metadata=dict(static=True))


@dataclasses.dataclass(frozen=True)
class _Layout:
  """Static facts of one operand: shape [R, K], where its tiles begin."""

  shape: tuple[int, int]
  transposed: bool
  codes_dtype: jnp.dtype
  first: int  # index of its first tile among both operands' tiles

  def tiles(self, cfg: WideConfig) -> tuple[int, int]:
    """Tiles along R and along K."""
    return (pl.cdiv(self.shape[0], cfg.tile_rows),
            pl.cdiv(self.shape[1], cfg.tile_cols))


def _operand(accepted, codes_ref, recip_ref, x_ref, out_ref, pid, *,
             lay: _Layout, cfg: WideConfig, programs: int):
  """Writes this program's tiles of one operand: tiles pid - first (mod P)."""
  tr, tc = cfg.tile_rows, cfg.tile_cols
  (rows, cols), (n_rows, n_cols) = lay.shape, lay.tiles(cfg)
  count = n_rows * n_cols
  # This program's first tile of the operand, and how many it has: p, p + P,
  # ... below count, for p = (pid - first) mod P (all values non-negative).
  p = jax.lax.rem(pid + (-lay.first) % programs, programs)
  steps = jax.lax.div(count - p + programs - 1, programs)

  def at(step):
    """(row slice, column slice, row mask, mask) of the step's tile."""
    u = p + step * programs
    i, j = jax.lax.div(u, n_cols), jax.lax.rem(u, n_cols)
    r0, c0 = pl.multiple_of(i * tr, tr), pl.multiple_of(j * tc, tc)
    r, c = pl.ds(r0, tr), pl.ds(c0, tc)
    if not (rows % tr or cols % tc):
      return r, c, None, None
    row_in = r0 + jax.lax.broadcasted_iota(jnp.int32, (tr,), 0) < rows
    col_in = c0 + jax.lax.broadcasted_iota(jnp.int32, (tc,), 0) < cols
    return (r, c, row_in if rows % tr else None,
            row_in[:, None] & col_in[None, :])

  def load(ref, mask):
    return (ref[...] if mask is None
            else pltriton.load(ref, mask=mask, other=0))

  @pl.when(accepted)
  def _():  # its FP8 values, dequantized
    def step(s, carry):
      r, c, row_in, mask = at(s)
      # The codes come as their bytes: a masked load's fill must be an
      # integer.
      q = jax.lax.bitcast_convert_type(load(codes_ref.at[r, c], mask),
                                       lay.codes_dtype).astype(jnp.float32)
      recip = load(recip_ref.at[r], row_in)
      # Codes of an accepted operand are finite (docs/numerics.md section 5).
      out = _numerics.dequantize_values(q, recip[:, None], out_ref.dtype,
                                        q_finite=True)
      tile.store(out_ref.at[r, c], out, mask)
      return carry

    jax.lax.fori_loop(0, steps, step, 0)

  @pl.when(~accepted)
  def _():  # as it came
    def step(s, carry):
      r, c, _, mask = at(s)
      if lay.transposed:
        x = load(x_ref.at[c, r], None if mask is None else mask.T).T
      else:
        x = load(x_ref.at[r, c], mask)
      tile.store(out_ref.at[r, c], x.astype(out_ref.dtype), mask)
      return carry

    jax.lax.fori_loop(0, steps, step, 0)


def _kernel(flags_ref, a_codes, a_recip, a_x, b_codes, b_recip, b_x, a_out,
            b_out, *, layouts: tuple[_Layout, _Layout], cfg: WideConfig,
            programs: int):
  # At the top level: interpret mode gives program ids there only.
  pid = pl.program_id(0)

  @pl.when(flags_ref[0] != 0)
  def _():  # the GEMM falls back
    for k, (refs, lay) in enumerate(zip(
        ((a_codes, a_recip, a_x, a_out), (b_codes, b_recip, b_x, b_out)),
        layouts)):
      _operand(flags_ref[1 + k] != 0, *refs, pid, lay=lay, cfg=cfg,
               programs=programs)


@dataclasses.dataclass(frozen=True)
class _Wide:
  cfg: WideConfig
  transposed: tuple[bool, bool]
  dtype: jnp.dtype
  codes_dtypes: tuple[jnp.dtype, jnp.dtype]
  interpret: bool

  @property
  def rule(self) -> str:
    # Each operand its own factors: the two are written independently.
    sides = []
    for n, t in zip("ab", self.transposed):
      x = f"k{n} r{n}" if t else f"r{n} k{n}"
      sides.append(f"r{n} k{n}, r{n}, {x}")
    return f"{', '.join(sides)}, f -> ra ka, rb kb"

  def local(self, a_codes, a_recip, a_x, b_codes, b_recip, b_x, flags):
    layouts, total = [], 0
    for codes, t, codes_dtype in zip((a_codes, b_codes), self.transposed,
                                     self.codes_dtypes):
      layouts.append(_Layout(codes.shape, t, codes_dtype, total))
      n_rows, n_cols = layouts[-1].tiles(self.cfg)
      total += n_rows * n_cols
    # A few programs per SM, fewer where there are fewer tiles.
    programs = max(1, min(self.cfg.programs, total))
    as_bytes = lambda c: jax.lax.bitcast_convert_type(c, jnp.uint8)  # noqa: E731
    # No BlockSpecs: every program sees the whole arrays and slices its
    # tiles itself.
    return tuple(pl.pallas_call(
        functools.partial(_kernel, layouts=tuple(layouts), cfg=self.cfg,
                          programs=programs),
        grid=(programs,),
        out_shape=[jax.ShapeDtypeStruct(c.shape, self.dtype)
                   for c in (a_codes, b_codes)],
        compiler_params=pltriton.CompilerParams(
            num_warps=self.cfg.num_warps, num_stages=1),
        interpret=self.interpret,
        name="mor_wide_operands",
    )(flags, as_bytes(a_codes), a_recip, a_x, as_bytes(b_codes), b_recip,
      b_x))

  def plan(self, arg_shapes):
    mesh, results, args = sharding.layout(arg_shapes[0])[0], [], []
    for codes, t in zip(arg_shapes[0:6:3], self.transposed):
      _, (ra, ka) = sharding.layout(codes)
      r, k = sharding.entry(ra), sharding.entry(ka)
      results.append(P(r, k))
      args += [P(r, k), P(r), P(k, r) if t else P(r, k)]
    return (mesh, sharding.named(mesh, *results),
            sharding.named(mesh, *args, P()), lambda o: o)


def wide_operands(fallback: jax.Array, a: Operand, b: Operand, *, dtype,
                  cfg: WideConfig, interpret: bool
                  ) -> tuple[jax.Array, jax.Array]:
  """Both BF16-path operands of a GEMM, one launch; unwritten unless fallback.

  Args:
    fallback: bool scalar: the GEMM runs its BF16 path.
    a: the operand [M, K].
    b: the operand [N, K].
    dtype: the outputs' dtype (the compute dtype).
    cfg: the tiles and grid.
    interpret: run the kernel in interpret mode (off a GPU).

  Returns:
    ([M, K], [N, K]) in ``dtype``: for each operand, its FP8 values
    dequantized if accepted, else the operand as it came, K-major.
  """
  flags = jnp.stack([fallback, a.accepted, b.accepted]).astype(jnp.int32)
  op = _Wide(cfg, (a.transposed, b.transposed), jnp.dtype(dtype),
             (a.codes.dtype, b.codes.dtype), interpret)
  return sharding.per_shard(op)(a.codes, a.recip, a.x, b.codes, b.recip, b.x,
                                flags)
