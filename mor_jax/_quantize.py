"""Block-scaled FP8 quantization: scales, quantize, dequantize, fake-quantize.

This is the XLA implementation of MOR_SPEC sections 2-4, and the reference
every other implementation (the Pallas kernels) must match bit for bit.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mor_jax import _dispatch
from mor_jax import _formats
from mor_jax import _numerics
from mor_jax import _partition

Representation = _formats.Representation


@dataclasses.dataclass(frozen=True)
class QuantSpec:
  """A validated, hashable description of one quantization of one array."""

  fmt: Representation
  block_shape: tuple[int | None, ...]
  scaling: str = "gam"
  group_shape: tuple[int | None, ...] | None = None

  @classmethod
  def build(cls, x: jax.Array, fmt, block_shape, scaling="gam",
            group_shape=None) -> QuantSpec:
    check_input(x)
    fmt = _formats.as_fp8(fmt)
    block_shape = _partition.check_shape_arg(block_shape, x.ndim, "block_shape")
    scaling = _partition.check_scaling(scaling)
    group_shape = _partition.check_group_shape(group_shape, block_shape, scaling)
    return cls(fmt, block_shape, scaling, group_shape)

  def partition(self, shape) -> _partition.Partition:
    return _partition.Partition.build(shape, self.block_shape)


def check_input(x: jax.Array, name: str = "x") -> None:
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(
        f"{name} must be a floating-point array, got dtype {x.dtype}.")
  if x.size > _partition.MAX_ELEMENTS:
    raise ValueError(
        f"{name} has {x.size} elements; at most 2**31 - 1 are supported "
        "(block statistics are counted in int32).")


def prepare(x: jax.Array, part: _partition.Partition) -> jax.Array:
  """Blocked float32 view of ``x`` with subnormals flushed (MOR_SPEC 3)."""
  return _numerics.flush_subnormals(part.to_blocks(x.astype(jnp.float32)))


class BlockStats(NamedTuple):
  """Per-block statistics of an array (pass 1), each shaped like the grid.

  Attributes:
    amax: max |x| over the finite elements (float32, 0 for none).
    nonfinite: whether the block holds a NaN or an infinity.
    count: number of finite nonzero elements (int32).
    min_nonzero: min |x| over the finite nonzero elements (+inf for none).
  """

  amax: jax.Array
  nonfinite: jax.Array
  count: jax.Array
  min_nonzero: jax.Array


def _kernels(part: _partition.Partition, impl: str):
  """(kernel module, tiling, interpret) if ``impl`` runs ``part`` in Pallas."""
  use, interpret = _dispatch.resolve(impl)
  if not use:
    return None
  # Imported here: mor_jax.kernels builds on this module.
  from mor_jax.kernels import quantize as kq  # pylint: disable=g-import-not-at-top
  tiling = kq.plan(part)
  return None if tiling is None else (kq, tiling, interpret)


def block_stats(x: jax.Array, part: _partition.Partition,
                impl: str) -> BlockStats:
  """Pass 1: the statistics of every block of ``x``.

  ``impl`` ("auto", "pallas" or "xla", see ``mor_jax._dispatch``) picks the
  Pallas kernel or the XLA code below; partitions the kernels cannot tile
  use XLA.
  """
  kernels = _kernels(part, impl)
  if kernels is not None:
    kq, tiling, interpret = kernels
    return kq.block_stats(x, part, tiling, interpret=interpret)
  xb = prepare(x, part)
  finite = jnp.isfinite(xb)
  ax = jnp.where(finite, jnp.abs(xb), 0.0)
  nonzero = ax != 0
  axes = part.block_axes
  return BlockStats(
      amax=jnp.max(ax, axis=axes, initial=0.0),
      nonfinite=jnp.any(~finite, axis=axes),
      count=jnp.sum(nonzero, axis=axes, dtype=jnp.int32),
      min_nonzero=jnp.min(jnp.where(nonzero, ax, jnp.inf), axis=axes,
                          initial=jnp.inf))


def quantize_with_scales(x: jax.Array, part: _partition.Partition,
                         scale: jax.Array, nonfinite: jax.Array,
                         fmt: Representation, output: str, impl: str
                         ) -> tuple[jax.Array | None, jax.Array]:
  """Pass 2: quantizes ``x`` with given per-block scales.

  Args:
    x: the array, any floating dtype.
    part: its partition.
    scale: [G0, G1, ...] float32 scales.
    nonfinite: [G0, G1, ...] bool, the blocks holding NaN or +-inf (pass 1's
      ``BlockStats.nonfinite``): the kernels give the codes or values of
      those elements in a second, cheap step that skips all other blocks.
    fmt: E4M3 or E5M2.
    output: "codes" (FP8 codes), "values" (dequantized, in x's dtype, with
      NaN and +-inf of x passed through) or "none" (statistics only).
    impl: as for ``block_stats``.

  Returns:
    (out, err_sum): ``out`` is the codes, the values or None, shaped like
    ``x``; ``err_sum`` holds per-block sums of the relative error terms.
  """
  kernels = _kernels(part, impl)
  if kernels is not None:
    kq, tiling, interpret = kernels
    return kq.quantize_with_scales(x, part, scale, nonfinite, fmt, output,
                                   tiling, interpret=interpret)
  xb = prepare(x, part)
  scale_b = part.expand(scale)
  s = scale_and_round(xb, scale_b, fmt)
  err_sum = _partition.block_sum(error_terms(xb, s), part)
  if output == "codes":
    out = part.from_blocks(to_codes(s.q, fmt))
  elif output == "values":
    out = part.from_blocks(dequantize_blocks(s.q, scale_b)).astype(x.dtype)
    out = jnp.where(jnp.isfinite(x), out, x)
  else:
    out = None
  return out, err_sum


def scales_from_amax(amax: jax.Array, fmt: Representation, scaling: str,
                     group_blocks: tuple[int, ...] | None) -> jax.Array:
  """One float32 scale per block from the per-block amax (MOR_SPEC 3).

  Args:
    amax: [G0, G1, ...] finite block amax, float32, >= 0, normal or zero.
    fmt: the element format whose max F the scales aim at.
    scaling: "fp32", "e8m0" or "gam".
    group_blocks: gam groups in units of blocks, None for one group.

  Returns:
    The scales, shaped like ``amax``; 1 where a block is all zeros.
  """
  fmax = jnp.float32(fmt.max)
  zero = amax == 0
  safe = jnp.where(zero, 1.0, amax)
  ideal = _numerics.div_rn(jnp.broadcast_to(fmax, amax.shape), safe)
  if scaling == "fp32":
    scale = ideal
  elif scaling == "e8m0":
    scale = _numerics.pow2(_numerics.exponent(ideal))
  else:
    gamax = _partition.group_max(amax, group_blocks)
    gsafe = jnp.where(gamax == 0, 1.0, gamax)
    gideal = _numerics.div_rn(jnp.broadcast_to(fmax, amax.shape), gsafe)
    m_g = jnp.where(gamax == 0, 1.0, _numerics.mantissa(gideal))
    m_b = _numerics.mantissa(ideal)
    e_b = _numerics.exponent(ideal) - (m_g > m_b).astype(jnp.int32)
    scale = _numerics.with_exponent(m_g, e_b)
  return jnp.where(zero, 1.0, scale)


def reciprocal(scale: jax.Array) -> jax.Array:
  """Correctly rounded 1 / scale (scales lie in [2**-121, 2**126])."""
  return _numerics.div_rn(jnp.ones_like(scale), scale)


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
                    fmt: Representation) -> Scaled:
  """q = round(clip(x * scale, -F, F)) on the blocked view (MOR_SPEC 3)."""
  y = xb * scale_b
  finite = jnp.isfinite(y)
  # Clip before rounding: E4M3 has no inf, an overflowing cast would be NaN.
  # Only rounding in the scale can push |y| past F, by at most half an ulp.
  yc = jnp.clip(jnp.where(finite, y, 0.0), -fmt.max, fmt.max)
  q = jnp.where(finite, _numerics.round_to_grid(yc, fmt), y)
  return Scaled(y, q)


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


def nonzero_finite(xb: jax.Array) -> jax.Array:
  return (xb != 0) & jnp.isfinite(xb)


def to_codes(q: jax.Array, fmt: Representation) -> jax.Array:
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


def dequantize_blocks(values: jax.Array, scale_b: jax.Array) -> jax.Array:
  """x_hat = q / scale in float32, as q * (1 / scale), subnormals flushed.

  Multiplying by a correctly rounded reciprocal stays within 1 float32 ulp
  of the quotient, as MOR_SPEC section 3 allows, on every backend.
  """
  return _numerics.flush_subnormals(values * reciprocal(scale_b))


# ----------------------------------------------------------------------------
# Public API


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["data", "scale"],
    meta_fields=["fmt", "block_shape", "scaling", "group_shape", "dtype"])
@dataclasses.dataclass(frozen=True)
class QuantizedArray:
  """An FP8 array with one float32 scale per block.

  A pytree: ``data`` and ``scale`` are leaves, the rest is static metadata,
  so it passes through ``jit``, ``vmap`` and ``scan``.

  Attributes:
    data: the FP8 codes, shaped like the input.
    scale: the factor each block was multiplied by before the cast, shaped
      like the block grid (``ceil(x.shape / block)``).
    fmt: ``mor_jax.E4M3`` or ``mor_jax.E5M2``.
    block_shape: the partition, one int or None per dimension.
    scaling: "fp32", "e8m0" or "gam".
    group_shape: the gam groups, or None for one group.
    dtype: the input's dtype, which ``dequantize`` returns by default.
  """

  data: jax.Array
  scale: jax.Array
  fmt: Representation
  block_shape: tuple[int | None, ...]
  scaling: str
  group_shape: tuple[int | None, ...] | None
  dtype: np.dtype


def compute_scales(x: jax.typing.ArrayLike, fmt: Representation, *,
                   block_shape, scaling: str = "gam",
                   group_shape=None) -> jax.Array:
  """One float32 scale per block: the factor applied before the FP8 cast.

  For a block with amax a and format max F the ideal scale is s = F / a.
  ``fp32`` uses s; ``e8m0`` its power of two 2**floor(log2 s); ``gam`` keeps
  each block's exponent and the group's mantissa, one less in the exponent
  where the group mantissa exceeds the block's, so s/2 < scale <= s. Blocks of
  zeros get scale 1; every scale is capped at 2**126. NaN and Inf are left
  out of the amax (a block holding them gets the scale of its finite values).

  Args:
    x: a floating-point array of any rank (computed in float32).
    fmt: ``mor_jax.E4M3`` or ``mor_jax.E5M2``.
    block_shape: one entry per dimension of ``x``: an int, or None for the
      whole dimension. Edge blocks may be smaller.
    scaling: "fp32", "e8m0" or "gam".
    group_shape: gam only; one entry per dimension, each a multiple of the
      block entry or None. Default: the whole tensor is one group.

  Returns:
    float32 scales of shape ``ceil(x.shape / block_shape)``.

  Examples:
    >>> import jax.numpy as jnp, mor_jax
    >>> x = jnp.array([[1.0, -2.0], [0.5, 0.25]])
    >>> mor_jax.compute_scales(x, mor_jax.E4M3, block_shape=(1, None),
    ...                        scaling="fp32")
    Array([[224.],
           [896.]], dtype=float32)
  """
  x = jnp.asarray(x)
  return _compute_scales(
      x, QuantSpec.build(x, fmt, block_shape, scaling, group_shape),
      _dispatch.implementation())


# The public functions validate their arguments, then call a jitted body with
# the spec static: eagerly, one compiled call instead of hundreds of ops. The
# implementation setting is static too, so changing it retraces.
@functools.partial(jax.jit, static_argnums=(1, 2))
def _compute_scales(x: jax.Array, spec: QuantSpec, impl: str) -> jax.Array:
  return spec_scales(block_stats(x, spec.partition(x.shape), impl).amax, spec)


def spec_scales(amax: jax.Array, spec: QuantSpec) -> jax.Array:
  return scales_from_amax(
      amax, spec.fmt, spec.scaling,
      _partition.group_blocks(spec.group_shape, spec.block_shape))


def quantize(x: jax.typing.ArrayLike, fmt: Representation, *, block_shape,
             scaling: str = "gam", group_shape=None) -> QuantizedArray:
  """Quantizes ``x`` to FP8 codes with one scale per block.

  q = cast(clip(x * scale, -F, F)), rounding to nearest even, with scales as
  ``compute_scales``. float32 subnormals are treated as zeros. NaN stays NaN;
  +-inf stays +-inf in E5M2 and becomes NaN in E4M3, which has no infinity.

  Args:
    x: a floating-point array of any rank.
    fmt: ``mor_jax.E4M3`` or ``mor_jax.E5M2``.
    block_shape: one int or None per dimension (see ``compute_scales``).
    scaling: "fp32", "e8m0" or "gam".
    group_shape: gam groups (see ``compute_scales``).

  Returns:
    A ``QuantizedArray``.

  Examples:
    >>> import jax.numpy as jnp, mor_jax
    >>> qa = mor_jax.quantize(jnp.array([1.0, 3.0]), mor_jax.E4M3,
    ...                       block_shape=(None,), scaling="e8m0")
    >>> qa.data, qa.scale
    (Array([128, 384], dtype=float8_e4m3fn), Array([128.], dtype=float32))
  """
  x = jnp.asarray(x)
  spec = QuantSpec.build(x, fmt, block_shape, scaling, group_shape)
  codes, scale = _quantize(x, spec, "codes", _dispatch.implementation())
  return QuantizedArray(codes, scale, spec.fmt, spec.block_shape, spec.scaling,
                        spec.group_shape, np.dtype(x.dtype))


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _quantize(x: jax.Array, spec: QuantSpec, output: str, impl: str
              ) -> tuple[jax.Array, jax.Array]:
  part = spec.partition(x.shape)
  stats = block_stats(x, part, impl)
  scale = spec_scales(stats.amax, spec)
  out, _ = quantize_with_scales(x, part, scale, stats.nonfinite, spec.fmt,
                                output, impl)
  return out, scale


def dequantize(qa: QuantizedArray, dtype=None) -> jax.Array:
  """Decodes a ``QuantizedArray``: x_hat = f32(q) / scale, cast to ``dtype``.

  Args:
    qa: the result of ``quantize``.
    dtype: the output dtype; default: the dtype ``quantize`` was given.

  Returns:
    The dequantized array, shaped like ``qa.data``. Within 1 float32 ulp of
    f32(q) / scale before the cast; float32 subnormals flushed to zero.

  Examples:
    >>> import jax.numpy as jnp, mor_jax
    >>> x = jnp.array([1.0, 3.0, 0.1])
    >>> mor_jax.dequantize(mor_jax.quantize(x, mor_jax.E4M3,
    ...                                     block_shape=(None,)))
    Array([0.96428573, 3.        , 0.10044643], dtype=float32)
  """
  dtype = np.dtype(qa.dtype if dtype is None else dtype)
  return _dequantize(qa.data, qa.scale, qa.block_shape, dtype)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _dequantize(data: jax.Array, scale: jax.Array, block_shape, dtype):
  part = _partition.Partition.build(data.shape, block_shape)
  values = part.to_blocks(data.astype(jnp.float32))
  x_hat = dequantize_blocks(values, part.expand(scale))
  return part.from_blocks(x_hat).astype(dtype)


@jax.custom_vjp
def straight_through(x: jax.Array, value: jax.Array) -> jax.Array:
  """Returns ``value``; its gradient flows to ``x`` unchanged (an STE)."""
  return value


def _straight_through_fwd(x, value):
  return value, None


def _straight_through_bwd(_, g):
  return g, None


straight_through.defvjp(_straight_through_fwd, _straight_through_bwd)


def fake_quantize(x: jax.typing.ArrayLike, fmt: Representation, *,
                  block_shape, scaling: str = "gam",
                  group_shape=None) -> jax.Array:
  """Quantizes and dequantizes ``x``, in its dtype, with a straight-through grad.

  The values equal ``dequantize(quantize(x, ...))`` computed without a cast
  round trip that XLA could delete on GPUs (MOR_SPEC section 8): the grid
  value is found by exact arithmetic. NaN and +-inf pass through unchanged.
  The gradient is the straight-through estimator: d out / d x = identity.

  Args:
    x: a floating-point array of any rank.
    fmt: ``mor_jax.E4M3`` or ``mor_jax.E5M2``.
    block_shape: one int or None per dimension (see ``compute_scales``).
    scaling: "fp32", "e8m0" or "gam".
    group_shape: gam groups (see ``compute_scales``).

  Returns:
    An array of ``x``'s shape and dtype.

  Examples:
    >>> import jax, jax.numpy as jnp, mor_jax
    >>> f = lambda x: mor_jax.fake_quantize(x, mor_jax.E4M3,
    ...                                     block_shape=(None,)).sum()
    >>> jax.grad(f)(jnp.array([0.1, 1.0]))
    Array([1., 1.], dtype=float32)
  """
  x = jnp.asarray(x)
  spec = QuantSpec.build(x, fmt, block_shape, scaling, group_shape)
  values, _ = _quantize(jax.lax.stop_gradient(x), spec, "values",
                        _dispatch.implementation())
  return straight_through(x, values)


def relative_error(x: jax.typing.ArrayLike,
                   x_hat: jax.typing.ArrayLike) -> jax.Array:
  """Mean of |x - x_hat| / |x| over the finite nonzero elements of ``x``.

  Taken in float32 and safe from underflow: each pair is rescaled by the
  power of two that brings x into [1, 2) before subtracting, so a tensor of
  magnitude 1e-36 reports its true error. Sums are staged so that the result
  agrees with a float64 computation to about 1e-6 relative. Returns 0 when
  ``x`` has no finite nonzero element; float32 subnormals in ``x`` count as
  zeros. A non-finite ``x_hat`` where ``x`` is finite gives inf or NaN.

  Args:
    x: the reference array.
    x_hat: its approximation, broadcastable to ``x``.

  Returns:
    A float32 scalar.

  Examples:
    >>> import jax.numpy as jnp, mor_jax
    >>> mor_jax.relative_error(jnp.array([1.0, 2.0, 0.0]),
    ...                        jnp.array([1.5, 2.0, 7.0]))
    Array(0.25, dtype=float32)
  """
  x = jnp.asarray(x)
  x_hat = jnp.asarray(x_hat)
  check_input(x)
  check_input(x_hat, "x_hat")
  return _relative_error(x, x_hat)


@jax.jit
def _relative_error(x: jax.Array, x_hat: jax.Array) -> jax.Array:
  x32 = _numerics.flush_subnormals(x.astype(jnp.float32)).ravel()
  xh = jnp.broadcast_to(x_hat, x.shape).astype(jnp.float32).ravel()
  counted = nonzero_finite(x32)
  e = jnp.where(counted, _numerics.exponent(jnp.abs(x32)), 0)
  # 2**-e in two exact factors, each a normal float32.
  half = -e // 2
  xn = x32 * _numerics.pow2(half) * _numerics.pow2(-e - half)
  xhn = xh * _numerics.pow2(half) * _numerics.pow2(-e - half)
  term = jnp.where(counted, jnp.abs(xn - xhn) / jnp.abs(jnp.where(counted, xn, 1.0)), 0.0)
  part = _partition.Partition.build(term.shape, (None,))
  total = jnp.sum(_partition.block_sum(part.to_blocks(term), part))  # 0 or 1 block
  count = jnp.sum(counted, dtype=jnp.int32)
  return jnp.where(count > 0, total / jnp.maximum(count, 1), 0.0)
