"""What every Triton kernel here does to a tile: masks, loads, bit tests.

The kernels are bound by instructions as much as by memory (pass 2 ran at
58% of the HBM ceiling with a float formulation), so the tests on each
element are integer compares on the float32 bits: one range test says
finite, normal and nonzero (float32 subnormals count as zeros, as in the XLA
path), and positive floats order like their bits.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from mor_jax import _numerics


def check_powers_of_two(config, flags: tuple[str, ...] = ()) -> None:
  """Raises ValueError unless every field of a tile config is a power of two,
  or, for the fields named in ``flags``, a bool."""
  for name, value in vars(config).items():
    if name in flags:
      if not isinstance(value, bool):
        raise ValueError(f"{type(config).__name__}.{name} must be a bool, "
                         f"got {value!r}.")
      continue
    if (isinstance(value, bool) or not isinstance(value, int) or value < 1 or
        value & (value - 1)):
      raise ValueError(f"{type(config).__name__}.{name} must be a positive "
                       f"power of two, got {value!r}.")


def _f32_bits(value) -> np.int32:
  return np.float32(value).view(np.int32)


EXP_FIELD = _f32_bits(np.inf)  # all exponent bits: +inf
SIGN_BIT = _f32_bits(-0.0)
ABS_BITS = ~SIGN_BIT
MIN_NORMAL_BITS = _f32_bits(np.finfo(np.float32).smallest_normal)


def in_array(rows: int, cols: int, tile_rows: int, tile_cols: int
             ) -> jax.Array:
  """Which elements of this program's tile (grid axes 0, 1) lie in the array."""
  i, j = pl.program_id(0), pl.program_id(1)
  r = i * tile_rows + jax.lax.broadcasted_iota(jnp.int32,
                                               (tile_rows, tile_cols), 0)
  c = j * tile_cols + jax.lax.broadcasted_iota(jnp.int32,
                                               (tile_rows, tile_cols), 1)
  return (r < rows) & (c < cols)


def load(x_ref, mask: jax.Array | None):
  """(x in float32, its bits, |x|'s bits, counted) of the tile.

  ``counted``: finite, normal and nonzero. Where ``mask`` is False (outside
  the array) x is zero; None loads the whole tile.
  """
  return decode(read(x_ref, mask))


def read(x_ref, mask: jax.Array | None) -> jax.Array:
  """The tile as stored, zero where ``mask`` is False (None: the whole tile)."""
  if mask is None:
    return x_ref[...]
  x = pltriton.load(x_ref, mask=mask, other=0)
  return jnp.where(mask, x, 0)  # interpret mode pads with garbage, not `other`


def decode(x: jax.Array):
  """``load``'s tuple from the tile as ``read`` gives it."""
  x = _numerics.to_float32(x)
  bits = jax.lax.bitcast_convert_type(x, jnp.int32)
  abs_bits = bits & ABS_BITS
  counted = (abs_bits >= MIN_NORMAL_BITS) & (abs_bits < EXP_FIELD)
  return x, bits, abs_bits, counted


def store(out_ref, out: jax.Array, mask: jax.Array | None) -> None:
  if mask is not None:
    pltriton.store(out_ref, out, mask=mask)
  else:
    out_ref[...] = out


def as_float(bits: jax.Array) -> jax.Array:
  return jax.lax.bitcast_convert_type(bits, jnp.float32)


# The reciprocal ``error_terms`` takes on NVIDIA GPUs (PTX; within 1 ulp).
RECIPROCAL_PTX = "rcp.approx.ftz.f32"


def flushed(x: jax.Array, bits: jax.Array, counted: jax.Array) -> jax.Array:
  """x where counted, else a zero of x's sign: what the scales multiply.

  Zeros, float32 subnormals (zeros in the XLA path too) and non-finite
  elements (whose codes are unspecified) scale to that zero, whose code is
  a zero and whose term in ``error_terms`` is 0. One select per element
  serves every scale a pass applies.
  """
  return jnp.where(counted, x, as_float(bits & SIGN_BIT))


def error_terms(y: jax.Array, q: jax.Array, if_zero: jax.Array, *,
                ptx: bool) -> jax.Array:
  """|y - q| / |y|, and ``if_zero`` where q is 0.

  ``if_zero`` is 1 for counted elements, whose term is 1 when they round to
  0, and 0 for the rest, which ``flushed`` made a zero: so y = 0 needs no
  select of its own, and one ``if_zero`` serves every scale.

  Not correctly rounded on a GPU: error sums may differ from XLA's in the
  last bits, as summation order makes them anyway. ``ptx`` (compiled for
  an NVIDIA GPU: not interpret mode, which runs no PTX, nor another GPU's
  Triton) multiplies by ``RECIPROCAL_PTX``.
  That is the core of Triton's division (div.full.f32, within 2 ulp)
  without its fixes for divisors above 2**126 or subnormal: 16 of the 60
  instructions per element of the dual codes pass (Nsight
  Compute; the pass took 0.311 ms instead of 0.344 at (16384, 8192),
  docs/benchmarks.md). Neither kind of divisor reaches a term: scales from
  the amax keep |y| <= F (1 + 2**-23), and a |y| below float32's normals
  rounds to q = 0, whose term is ``if_zero``.
  """
  if ptx:
    [inv] = pltriton.elementwise_inline_asm(
        f"{RECIPROCAL_PTX} $0, $1;", args=[jnp.abs(y)], constraints="=r,r",
        pack=1, result_shape_dtypes=[jax.ShapeDtypeStruct(y.shape,
                                                          jnp.float32)])
    ratio = jnp.abs(y - q) * inv
  else:
    ratio = jnp.abs(y - q) / jnp.abs(y)
  return jnp.where(q == 0, if_zero, ratio)
