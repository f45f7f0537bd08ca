"""Block-scaled FP8 quantization: the public API.

compute_scales, quantize, dequantize, fake_quantize and relative_error
(docs/numerics.md sections 2-4). Each validates its arguments, then calls a
jitted body that runs the two quantization passes of the implementation
``mor_jax._dispatch`` picks (the XLA reference ``mor_jax._xla`` or the Pallas
kernels) and the scaling rules of ``mor_jax._scaling``.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from mor_jax import _axes
from mor_jax import _dispatch
from mor_jax import _formats
from mor_jax import _numerics
from mor_jax import _partition
from mor_jax import _passes
from mor_jax import _scaling
from mor_jax import _xla

Representation = _formats.Representation


@dataclasses.dataclass(frozen=True)
class QuantSpec:
  """A validated, hashable description of one quantization of one array."""

  fmt: Representation
  block_shape: tuple[int | None, ...]
  scaling: _scaling.Scaling = "gam"
  group_shape: tuple[int | None, ...] | None = None

  @classmethod
  def build(cls, x: jax.Array, fmt, block_shape, scaling="gam",
            group_shape=None) -> QuantSpec:
    check_input(x)
    fmt = _formats.as_fp8(fmt)
    block_shape = _partition.check_shape_arg(block_shape, x.ndim, "block_shape")
    _partition.Partition.build(x.shape, block_shape).check_blocks("x")
    scaling = _scaling.check_scaling(scaling)
    group_shape = _scaling.check_group_shape(group_shape, block_shape, scaling)
    return cls(fmt, block_shape, scaling, group_shape)

  def partition(self, shape) -> _partition.Partition:
    return _partition.Partition.build(shape, self.block_shape)

  def scales(self, amax: jax.Array) -> jax.Array:
    return _scaling.scales_from_amax(
        amax, self.fmt, self.scaling,
        _scaling.group_blocks(self.group_shape, self.block_shape))


def check_input(x: jax.Array, name: str = "x") -> None:
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(
        f"{name} must be a floating-point array, got dtype {x.dtype}.")


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
  scaling: _scaling.Scaling
  group_shape: tuple[int | None, ...] | None
  dtype: np.dtype


def compute_scales(x: jax.typing.ArrayLike, fmt: Representation, *,
                   block_shape, scaling: _scaling.Scaling = "gam",
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
  spec = QuantSpec.build(x, fmt, block_shape, scaling, group_shape)
  impl = _dispatch.current()
  return _axes.run(lambda x: _compute_scales(x, spec, impl), x)


# The public functions validate their arguments, then call a jitted body with
# the spec static: eagerly, one compiled call instead of hundreds of ops. The
# implementation setting is static too, so changing it retraces.
@functools.partial(jax.jit, static_argnums=(1, 2))
def _compute_scales(x: jax.Array, spec: QuantSpec,
                    impl: _dispatch.Implementation) -> jax.Array:
  part = spec.partition(x.shape)
  return spec.scales(_dispatch.passes(part, impl).block_stats(x).amax)


def quantize(x: jax.typing.ArrayLike, fmt: Representation, *, block_shape,
             scaling: _scaling.Scaling = "gam",
             group_shape=None) -> QuantizedArray:
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
  impl = _dispatch.current()
  codes, scale = _axes.run(lambda x: _quantize(x, spec, "codes", impl), x)
  return QuantizedArray(codes, scale, spec.fmt, spec.block_shape, spec.scaling,
                        spec.group_shape, np.dtype(x.dtype))


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _quantize(x: jax.Array, spec: QuantSpec, output: _passes.Output,
              impl: _dispatch.Implementation) -> tuple[jax.Array, jax.Array]:
  passes = _dispatch.passes(spec.partition(x.shape), impl)
  stats = passes.block_stats(x)
  scale = spec.scales(stats.amax)
  out, _ = passes.quantize_with_scales(x, scale, stats.nonfinite, spec.fmt,
                                       output)
  return out, scale


def dequantize(qa: QuantizedArray, dtype=None) -> jax.Array:
  """Decodes a ``QuantizedArray``: x_hat = f32(q) / scale, cast to ``dtype``.

  Args:
    qa: the result of ``quantize``.
    dtype: the output dtype; default: the dtype ``quantize`` was given.

  Returns:
    The dequantized array, shaped like ``qa.data``. Within 1 float32 ulp of
    f32(q) / scale before the cast; float32 subnormals flushed to zero;
    finite values saturated at ``dtype``'s largest (docs/numerics.md
    section 3.9).

  Raises:
    TypeError: ``qa`` is not a ``QuantizedArray``, its codes are not of its
      format, or ``dtype`` is not floating point.
    ValueError: ``qa.scale`` does not have one float32 per block.

  Examples:
    >>> import jax.numpy as jnp, mor_jax
    >>> x = jnp.array([1.0, 3.0, 0.1])
    >>> mor_jax.dequantize(mor_jax.quantize(x, mor_jax.E4M3,
    ...                                     block_shape=(None,)))
    Array([0.96428573, 3.        , 0.10044643], dtype=float32)
  """
  _check_quantized(qa)
  dtype = np.dtype(qa.dtype if dtype is None else dtype)
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(f"dtype must be a floating-point dtype, got {dtype}.")
  return _axes.run(
      lambda data, scale: _dequantize(data, scale, qa.block_shape, dtype),
      qa.data, qa.scale)


def _check_quantized(qa) -> None:
  """Raises unless ``qa`` is a consistent ``QuantizedArray``."""
  if not isinstance(qa, QuantizedArray):
    raise TypeError("qa must be a mor_jax.QuantizedArray (the result of "
                    f"mor_jax.quantize), got {type(qa).__name__}.")
  fmt = _formats.as_fp8(qa.fmt, name="qa.fmt")
  data, scale = jnp.asarray(qa.data), jnp.asarray(qa.scale)
  if data.dtype != fmt.dtype:
    raise TypeError(f"qa.data must hold {fmt.name} codes (dtype {fmt.dtype}), "
                    f"got dtype {data.dtype}.")
  block_shape = _partition.check_shape_arg(qa.block_shape, data.ndim,
                                           "qa.block_shape")
  grid = _partition.Partition.build(data.shape, block_shape).grid
  if scale.shape != grid or scale.dtype != jnp.float32:
    raise ValueError(
        f"qa.scale must be float32 of shape {grid} (one per block of "
        f"{block_shape} in qa.data's shape {data.shape}), got "
        f"{scale.dtype}{list(scale.shape)}.")


@functools.partial(jax.jit, static_argnums=(2, 3))
def _dequantize(data: jax.Array, scale: jax.Array, block_shape, dtype):
  part = _partition.Partition.build(data.shape, block_shape)
  values = part.to_blocks(data.astype(jnp.float32))
  x_hat = _xla.dequantize_blocks(values, part.expand(scale), dtype)
  return part.from_blocks(x_hat)


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
                  block_shape, scaling: _scaling.Scaling = "gam",
                  group_shape=None) -> jax.Array:
  """Quantizes and dequantizes ``x``, in its dtype, with a straight-through grad.

  The values equal ``dequantize(quantize(x, ...))`` computed without a cast
  round trip that XLA could delete on GPUs (docs/numerics.md section 7): the grid
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
  impl = _dispatch.current()
  values, _ = _axes.run(lambda x: _quantize(x, spec, "values", impl),
                        jax.lax.stop_gradient(x))
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
  try:
    fits = jnp.broadcast_shapes(x_hat.shape, x.shape) == x.shape
  except ValueError:
    fits = False
  if not fits:
    raise ValueError(f"x_hat of shape {x_hat.shape} does not broadcast to x's "
                     f"shape {x.shape}.")
  return _axes.run(_relative_error, x, x_hat)


@jax.jit
def _relative_error(x: jax.Array, x_hat: jax.Array) -> jax.Array:
  x32 = _numerics.flush_subnormals(_numerics.to_float32(x)).ravel()
  xh = _numerics.to_float32(jnp.broadcast_to(x_hat, x.shape)).ravel()
  counted = _xla.nonzero_finite(x32)
  e = jnp.where(counted, _numerics.exponent(jnp.abs(x32)), 0)
  # 2**-e in two exact factors, each a normal float32.
  half = -e // 2
  xn = x32 * _numerics.pow2(half) * _numerics.pow2(-e - half)
  xhn = xh * _numerics.pow2(half) * _numerics.pow2(-e - half)
  term = jnp.where(counted, jnp.abs(xn - xhn) / jnp.abs(jnp.where(counted, xn, 1.0)), 0.0)
  part = _partition.Partition.build(term.shape, (None,))
  total = jnp.sum(_partition.block_sum(part.to_blocks(term), part))  # 0 or 1 block
  # Each chunk's count fits int32; their total need not.
  chunks = _partition.Partition.build(term.shape, (_partition.SUM_CHUNK,))
  count = _numerics.total_count(
      jnp.sum(chunks.to_blocks(counted), axis=1, dtype=jnp.int32))
  return jnp.where(count > 0, total / jnp.maximum(count, 1), 0.0)
