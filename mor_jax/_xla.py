"""The XLA implementation of the quantization passes: the reference.

docs/numerics.md sections 2-4, written in jnp on the blocked view of the
array. Every other implementation (the Pallas kernels) must match it bit for
bit in codes, scales and decisions. Rounding to the FP8 grid is exact integer
and bit arithmetic (``mor_jax._numerics``), never a cast round trip that XLA
could delete on GPUs (docs/numerics.md section 7).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from mor_jax import _formats
from mor_jax import _numerics
from mor_jax import _partition
from mor_jax import _passes
from mor_jax import _scaling


def prepare(x: jax.Array, part: _partition.Partition) -> jax.Array:
  """Blocked float32 view of ``x`` with subnormals flushed (section 3)."""
  return _numerics.flush_subnormals(part.to_blocks(_numerics.to_float32(x)))


class Scaled(NamedTuple):
  """Blocked-view results of scaling and rounding one array.

  Attributes:
    y: x * scale, float32 (the scaled domain).
    q: y clipped and rounded to the format's grid, float32; NaN and +-inf of
      x pass through unchanged.
  """

  y: jax.Array
  q: jax.Array


def scale_and_round(xb: jax.Array, scale_b: jax.Array,
                    fmt: _formats.Representation) -> Scaled:
  """q = round(clip(x * scale, -F, F)) on the blocked view (section 3)."""
  y = xb * scale_b
  finite = jnp.isfinite(y)
  # Clip before rounding: E4M3 has no inf, an overflowing cast would be NaN.
  # Only rounding in the scale can push |y| past F, by at most half an ulp.
  yc = jnp.clip(jnp.where(finite, y, 0.0), -fmt.max, fmt.max)
  q = jnp.where(finite, _numerics.round_to_grid(yc, fmt), y)
  return Scaled(y, q)


def nonzero_finite(xb: jax.Array) -> jax.Array:
  return (xb != 0) & jnp.isfinite(xb)


def error_terms(xb: jax.Array, s: Scaled) -> jax.Array:
  """Per-element relative error |x - x_hat| / |x|, taken in the scaled domain.

  |x*s - q| / |x*s| equals |x - q/s| / |x| but cannot underflow: for a
  tensor of magnitude 1e-36, x - x_hat would be a float32 subnormal that XLA
  flushes to zero. y - q is exact (Sterbenz). An element that rounds to zero
  has error exactly 1; zeros and non-finite elements contribute nothing.
  """
  counted = nonzero_finite(xb)
  ay = jnp.abs(s.y)
  term = jnp.where(s.q == 0, 1.0,
                   jnp.abs(s.y - s.q) / jnp.where(ay == 0, 1.0, ay))
  return jnp.where(counted, term, 0.0)


def to_codes(q: jax.Array, fmt: _formats.Representation) -> jax.Array:
  """Casts grid values to FP8 codes; NaN and +-inf get ml_dtypes' codes.

  The cast of a finite grid value is exact on every backend. Non-finite codes
  are set explicitly because GPU conversions saturate infinities.
  """
  nan, pos_inf, neg_inf = _numerics.special_codes(fmt)
  finite = jnp.isfinite(q)
  codes = jax.lax.bitcast_convert_type(
      jnp.where(finite, q, 0.0).astype(fmt.dtype), jnp.uint8)
  special = jnp.where(jnp.isnan(q), nan, jnp.where(q > 0, pos_inf, neg_inf))
  codes = jnp.where(finite, codes, special.astype(jnp.uint8))
  return jax.lax.bitcast_convert_type(codes, fmt.dtype)


def dequantize_blocks(values: jax.Array, scale_b: jax.Array,
                      dtype) -> jax.Array:
  """x_hat = q / scale in ``dtype``, as ``_numerics.dequantize_values``.

  NaN and +-inf codes stay as they are.
  """
  return _numerics.dequantize_values(values, _scaling.reciprocal(scale_b),
                                     dtype)


@dataclasses.dataclass(frozen=True)
class XlaPasses:
  """``mor_jax._passes.Passes`` in jnp, for any partition."""

  part: _partition.Partition

  def block_stats(self, x: jax.Array) -> _passes.BlockStats:
    xb = prepare(x, self.part)
    finite = jnp.isfinite(xb)
    ax = jnp.where(finite, jnp.abs(xb), 0.0)
    nonzero = ax != 0
    axes = self.part.block_axes
    return _passes.BlockStats(
        amax=jnp.max(ax, axis=axes, initial=0.0),
        nonfinite=jnp.any(~finite, axis=axes),
        count=jnp.sum(nonzero, axis=axes, dtype=jnp.int32),
        min_nonzero=jnp.min(jnp.where(nonzero, ax, jnp.inf), axis=axes,
                            initial=jnp.inf))

  def quantize_with_scales(self, x, scale, nonfinite, fmt, output):
    del nonfinite  # Non-finite elements are handled element by element here.
    part = self.part
    xb = prepare(x, part)
    scale_b = part.expand(scale)
    s = scale_and_round(xb, scale_b, fmt)
    err_sum = _partition.block_sum(error_terms(xb, s), part)
    if output == "codes":
      out = part.from_blocks(to_codes(s.q, fmt))
    elif output == "values":
      out = part.from_blocks(dequantize_blocks(s.q, scale_b, x.dtype))
      out = jnp.where(jnp.isfinite(x), out, x)
    else:
      out = None
    return out, err_sum


def _rows(shape) -> _partition.Partition:
  return _partition.Partition.build(shape, (1, None))


@dataclasses.dataclass(frozen=True)
class XlaDual:
  """``mor_jax._passes.DualPasses`` in jnp: the passes on x and on x^T."""

  def stats(self, x):
    # Under jit the rows' other statistics are never computed.
    return _passes.DualStats(XlaPasses(_rows(x.shape)).block_stats(x).amax,
                             XlaPasses(_rows(x.T.shape)).block_stats(x.T))

  def codes(self, x, row_scale, col_scale, fmt):
    codes, row_err = XlaPasses(_rows(x.shape)).quantize_with_scales(
        x, row_scale[:, None], None, fmt, "codes")
    codes_t, col_err = XlaPasses(_rows(x.T.shape)).quantize_with_scales(
        x.T, col_scale[:, None], None, fmt, "codes")
    return codes, codes_t, row_err, col_err
