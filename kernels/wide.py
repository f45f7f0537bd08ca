"""The operands of a GEMM's BF16 path, written only when the GEMM needs them.

When MoR rejects an operand of a GEMM (kernels/gemm.py), the GEMM runs in
BF16 on the operands the emulated path uses: for an accepted operand its
FP8 values dequantized, f32(code) * (1 / scale) rounded to the compute dtype
and saturated at its max (bit for bit ``mor_jax.dequantize``), for a
rejected one the tensor as it came, in the K-major layout of the GEMM. ``wide_operand`` writes them only
when the GEMM falls back: each program reads the decision and returns at
once otherwise, so in training (where FP8 is the rule) the op costs one
launch. Where it returns at once, its output is left unwritten.

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
  """Tiles of ``wide_operand`` (hashable: part of every cache key).

  Large tiles: in training nearly every program returns at once, and
  launching them is the whole cost.
  """

  tile_rows: int = 64
  tile_cols: int = 256
  num_warps: int = 8

  def __post_init__(self):
    tile.check_powers_of_two(self)


def _kernel(flags_ref, codes_ref, recip_ref, x_ref, out_ref, *, shape,
            cfg: WideConfig, transposed: bool, codes_dtype):
  tr, tc = cfg.tile_rows, cfg.tile_cols
  # Outside the branches: interpret mode gives program ids at the top level.
  mask = (None if shape[0] % tr == 0 and shape[1] % tc == 0 else
          tile.in_array(*shape, tr, tc))
  load = lambda ref, m: (pltriton.load(ref, mask=m, other=0)  # noqa: E731
                         if m is not None else ref[...])
  fallback, accepted = flags_ref[0] != 0, flags_ref[1] != 0

  @pl.when(fallback & accepted)
  def _():  # falls back, this operand accepted: its FP8 values, dequantized
    # The codes come as their bytes: a masked load's fill must be an integer.
    q = jax.lax.bitcast_convert_type(load(codes_ref, mask), codes_dtype)
    q = q.astype(jnp.float32)
    out = _numerics.saturate(_numerics.flush_subnormals(
        q * recip_ref[...][:, None]), out_ref.dtype)
    tile.store(out_ref, out.astype(out_ref.dtype), mask)

  @pl.when(fallback & ~accepted)
  def _():  # falls back, this operand rejected: as it came
    if transposed:
      x = load(x_ref, None if mask is None else mask.T).T
    else:
      x = load(x_ref, mask)
    tile.store(out_ref, x.astype(out_ref.dtype), mask)


@dataclasses.dataclass(frozen=True)
class _Wide:
  cfg: WideConfig
  transposed: bool
  dtype: jnp.dtype
  codes_dtype: jnp.dtype
  interpret: bool

  @property
  def rule(self) -> str:
    return f"r k, r, {'k r' if self.transposed else 'r k'}, f -> r k"

  def local(self, codes, recip, x, flags):
    tr, tc = self.cfg.tile_rows, self.cfg.tile_cols
    grid = (-(-codes.shape[0] // tr), -(-codes.shape[1] // tc))
    x_spec = (pl.BlockSpec((tc, tr), lambda i, j: (j, i)) if self.transposed
              else pl.BlockSpec((tr, tc), lambda i, j: (i, j)))
    return (pl.pallas_call(
        functools.partial(_kernel, shape=codes.shape, cfg=self.cfg,
                          transposed=self.transposed,
                          codes_dtype=self.codes_dtype),
        grid=grid,
        in_specs=[pl.BlockSpec((2,), lambda i, j: (0,)),
                  pl.BlockSpec((tr, tc), lambda i, j: (i, j)),
                  pl.BlockSpec((tr,), lambda i, j: (i,)), x_spec],
        out_specs=pl.BlockSpec((tr, tc), lambda i, j: (i, j)),
        out_shape=jax.ShapeDtypeStruct(codes.shape, self.dtype),
        compiler_params=pltriton.CompilerParams(
            num_warps=self.cfg.num_warps, num_stages=1),
        interpret=self.interpret,
        name="mor_wide_operand",
    )(flags, jax.lax.bitcast_convert_type(codes, jnp.uint8), recip, x),)

  def plan(self, arg_shapes):
    mesh, (ra, ka) = sharding.layout(arg_shapes[0])
    r, k = sharding.entry(ra), sharding.entry(ka)
    x_spec = P(k, r) if self.transposed else P(r, k)
    return (mesh, sharding.named(mesh, P(r, k)),
            sharding.named(mesh, P(r, k), P(r), x_spec, P()), lambda o: o)


def wide_operand(fallback: jax.Array, accepted: jax.Array, codes: jax.Array,
                 recip: jax.Array, x: jax.Array, *, transposed: bool,
                 dtype, cfg: WideConfig, interpret: bool) -> jax.Array:
  """The operand [R, K] of a GEMM's BF16 path; unwritten unless ``fallback``.

  Args:
    fallback: bool scalar: the GEMM runs its BF16 path.
    accepted: bool scalar: this operand was accepted in FP8.
    codes: [R, K] FP8 codes of the operand.
    recip: [R] float32 reciprocals of its per-row scales.
    x: the operand as it came: [R, K], or [K, R] if ``transposed``.
    transposed: whether ``x`` is the transpose of the GEMM's view.
    dtype: the output's dtype (the compute dtype).
    cfg: the tiles.
    interpret: run the kernel in interpret mode (off a GPU).

  Returns:
    [R, K] in ``dtype``.
  """
  flags = jnp.stack([fallback, accepted]).astype(jnp.int32)
  op = _Wide(cfg, transposed, jnp.dtype(dtype), codes.dtype, interpret)
  return sharding.per_shard(op)(codes, recip, x, flags)[0]
