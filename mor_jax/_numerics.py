"""Exact float32 building blocks shared by the XLA path and the Pallas kernels.

Everything here is integer and bit arithmetic on float32, written with ops
that both XLA and the Pallas Triton backend lower (no ``lax.round``, no
float division where the result must be exact), because:

* XLA's float32 division on GPUs is not correctly rounded (about 29% of
  ``448 / amax`` differ from IEEE on an H100), and a scale must be bit-exact;
* ``x.astype(float8).astype(float32)`` is deleted by XLA on GPUs
  (docs/numerics.md section 7), so the FP8 grid value is computed by arithmetic and
  never depends on a cast round trip;
* float32 subnormals are flushed by XLA on CPU but not always on GPU, so we
  flush them explicitly and no result depends on them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from mor_jax import _formats

_F32 = np.finfo(np.float32)
_MANT_BITS = int(_F32.nmant)  # 23
_BIAS = int(_F32.maxexp) - 1  # 127
_MANT_MASK = (1 << _MANT_BITS) - 1
_HIDDEN = 1 << _MANT_BITS
_EXP_MASK = (1 << (_F32.bits - 1 - _MANT_BITS)) - 1  # 0xFF
_SIGN = np.int32(np.float32(-0.0).view(np.int32))
TINY = float(_F32.smallest_normal)
# docs/numerics.md section 3: scales are capped at 2^126.
SCALE_CAP_EXPONENT = int(_F32.maxexp) - 2
# div_rn's quotient bits after the first, at most 7 at a time (see there).
_DIV_CHUNKS = tuple(min(7, _MANT_BITS + 1 - i)
                    for i in range(0, _MANT_BITS + 1, 7))


def _bits(x: jax.Array) -> jax.Array:
  return jax.lax.bitcast_convert_type(x, jnp.int32)


def _from_bits(b: jax.Array) -> jax.Array:
  return jax.lax.bitcast_convert_type(b, jnp.float32)


def flush_subnormals(x: jax.Array) -> jax.Array:
  """float32 ``x`` with subnormals replaced by a zero of the same sign."""
  return jnp.where(jnp.abs(x) < TINY, _from_bits(_bits(x) & _SIGN), x)


def to_float32(x: jax.Array) -> jax.Array:
  """``x`` in float32, finite values beyond float32's range saturated.

  Every computation runs in float32; a wider input's finite values beyond
  +-float32 max would otherwise become +-inf (docs/numerics.md section 3.9).
  """
  if jnp.dtype(x.dtype).itemsize > 4:
    big = float(_F32.max)
    x = jnp.where(jnp.isinf(x), x, jnp.clip(x, -big, big))
  return x.astype(jnp.float32)


def saturate(x: jax.Array, dtype) -> jax.Array:
  """float32 ``x`` clipped to +-(``dtype``'s max, at most float32's).

  A dequantized value q / scale can round past the largest finite value of
  the output dtype (float32 near 3.4e38 with e8m0 or gam scales, float16
  near 65504): it saturates there instead of becoming +-inf (docs/numerics.md
  section 3.9). NaN stays NaN; +-inf becomes +-max, so callers apply this
  only where q is finite.
  """
  big = min(float(jnp.finfo(dtype).max), float(_F32.max))
  return jnp.clip(x, -big, big)


def dequantize_values(q: jax.Array, recip: jax.Array, dtype, *,
                      q_finite: bool = False) -> jax.Array:
  """FP8 values ``q`` (float32) times ``recip`` = 1 / scale, in ``dtype``.

  The one dequantization of every path (XLA, emulated GEMM, the kernels):
  multiplying by a correctly rounded reciprocal stays within 1 float32 ulp
  of q / scale (section 3); float32 subnormal products are flushed
  (section 3.5), and finite codes saturate at ``dtype``'s largest value
  instead of rounding past it (section 3.9).

  Args:
    q: float32 values of FP8 codes.
    recip: float32 reciprocals of the scales, broadcastable to ``q``.
    dtype: the output dtype.
    q_finite: every ``q`` is known finite (the kernels), which skips the
      select that keeps NaN and +-inf codes as they are.

  Returns:
    ``q * recip`` in ``dtype``.
  """
  x = flush_subnormals(q * recip)
  out = saturate(x, dtype)
  if not q_finite:
    out = jnp.where(jnp.isfinite(q), out, x)
  return out.astype(dtype)


def dequantize_is_plain(recip: jax.Array, fmt, dtype) -> jax.Array:
  """Whether ``dequantize_values(q, recip, dtype)`` is ``(q * recip)
  .astype(dtype)`` for every finite code ``q`` of ``fmt``.

  It is where no product needs the flush or the saturation: the smallest
  nonzero code times ``recip`` is at least float32's smallest normal (a
  product of exact reals at least that rounds to at least that), and the
  largest code times ``recip``, rounded, at most ``dtype``'s largest value
  (rounding is monotonic, so smaller codes' products are no larger). A
  kernel checks this once per tile of rows and skips four operations per
  element where it holds. NaN factors are not plain.

  Args:
    recip: float32 reciprocals of the scales.
    fmt: the codes' FP8 dtype.
    dtype: the output dtype.

  Returns:
    bool, elementwise over ``recip``.
  """
  info = jnp.finfo(fmt)
  lowest = np.float32(TINY / float(info.smallest_subnormal))
  big = min(float(jnp.finfo(dtype).max), float(_F32.max))
  return (recip >= lowest) & (recip * np.float32(info.max) <= big)


def exponent(x: jax.Array) -> jax.Array:
  """Unbiased exponent of a positive normal float32 (int32)."""
  return ((_bits(x) >> _MANT_BITS) & _EXP_MASK) - _BIAS


def mantissa(x: jax.Array) -> jax.Array:
  """Significand of a positive normal float32, as a float32 in [1, 2)."""
  return _from_bits((_bits(x) & _MANT_MASK) | (_BIAS << _MANT_BITS))


def pow2(e: jax.Array) -> jax.Array:
  """2.0**e as float32, exact for int32 ``e`` in [-126, 127]."""
  return _from_bits((e + _BIAS) << _MANT_BITS)


def with_exponent(m: jax.Array, e: jax.Array) -> jax.Array:
  """m * 2**e for ``m`` in [1, 2) and ``e`` in [-126, 127], exactly."""
  return _from_bits((_bits(m) & _MANT_MASK) | ((e + _BIAS) << _MANT_BITS))


def div_rn(num: jax.Array, den: jax.Array) -> jax.Array:
  """Correctly rounded ``num / den``, capped at 2**126.

  Both arguments are positive normal float32. The significands are divided
  by integer long division (25 quotient bits, then round to nearest even with
  a sticky bit), so the result is the IEEE quotient whatever the platform's
  division does. Quotients at or above 2**126 return 2**126 (the spec's cap
  on scales); none of our callers produce a quotient below 2**-126.
  """
  nb, db = _bits(num), _bits(den)
  mn = (nb & _MANT_MASK) | _HIDDEN
  md = (db & _MANT_MASK) | _HIDDEN
  below = (mn < md).astype(jnp.int32)
  e = ((nb >> _MANT_BITS) & _EXP_MASK) - ((db >> _MANT_BITS) & _EXP_MASK) - below
  # md <= (mn << below) < 2 * md: the first quotient bit is 1, and the
  # remainder r < md < 2**24.
  q = jnp.ones_like(mn)
  r = (mn << below) - md
  # The other 24 quotient bits (23 significant and a guard bit) in chunks of
  # at most 7, each from one exact integer division: r << 7 < 2**31. One
  # division per chunk instead of one compare-subtract per bit keeps the
  # program, and its compile time, small.
  for bits in _DIV_CHUNKS:
    r = r << bits
    digit = jax.lax.div(r, md)
    q = (q << bits) | digit
    r = r - digit * md
  mant = q >> 1
  round_up = (q & 1) & ((r != 0).astype(jnp.int32) | (mant & 1))
  mant = mant + round_up
  carry = mant >> (_MANT_BITS + 1)
  mant = mant >> carry
  e = e + carry
  result = _from_bits((mant & _MANT_MASK) | ((e + _BIAS) << _MANT_BITS))
  return jnp.where(e >= SCALE_CAP_EXPONENT, pow2(jnp.int32(SCALE_CAP_EXPONENT)),
                   result)


def round_to_grid(y: jax.Array, fmt: _formats.Representation) -> jax.Array:
  """Rounds finite float32 ``y`` (|y| <= fmt.max) to ``fmt``'s grid, RNE.

  Returns float32 values that the format holds exactly, so casting them to the
  FP8 dtype is exact and a deleted cast round trip changes nothing. Subnormals
  of the format are handled by clamping the exponent at its smallest normal.
  """
  yb = _bits(y)
  ay = _from_bits(yb & ~_SIGN)
  e = jnp.maximum(((yb >> _MANT_BITS) & _EXP_MASK) - _BIAS, fmt.min_exponent)
  step = e - fmt.mantissa_bits
  v = ay * pow2(-step)  # exact: a power-of-two rescale, v < 2**(mbits + 1)
  t = v.astype(jnp.int32)  # truncation; v - t is exact below 2**24
  frac = v - t.astype(jnp.float32)
  up = (frac > 0.5) | ((frac == 0.5) & ((t & 1) == 1))
  r = (t + up.astype(jnp.int32)).astype(jnp.float32) * pow2(step)
  return _from_bits(_bits(r) | (yb & _SIGN))


def special_codes(fmt: _formats.Representation) -> tuple[int, int, int]:
  """(NaN, +inf, -inf) codes of ``fmt`` as ml_dtypes casts them.

  E4M3 has no infinity: ml_dtypes casts +-inf to NaN, and so do we.
  """
  vals = np.array([np.nan, np.inf, -np.inf], np.float32).astype(fmt.dtype)
  return tuple(int(c) for c in vals.view(np.uint8))


# Element counts past int32 (a sharded tensor's can be): a canonical pair
# (hi, lo), count = hi * 2**24 + lo with 0 <= lo < 2**24, whose sum is exact
# integer arithmetic in any order. Both halves are integers a float32 holds
# exactly (its significand has 24 bits), so the float32 of the count costs
# one rounding.
_COUNT_LO_BITS = _MANT_BITS + 1
_COUNT_LO_MASK = (1 << _COUNT_LO_BITS) - 1


def count_pair(count: jax.Array) -> tuple[jax.Array, jax.Array]:
  """A non-negative int32 count as its canonical (hi, lo) pair."""
  return count >> _COUNT_LO_BITS, count & _COUNT_LO_MASK


def add_counts(a: tuple[jax.Array, jax.Array], b: tuple[jax.Array, jax.Array]
               ) -> tuple[jax.Array, jax.Array]:
  """The sum of two canonical pairs, canonical (lo's carry moved to hi)."""
  lo = a[1] + b[1]  # < 2**25
  return a[0] + b[0] + (lo >> _COUNT_LO_BITS), lo & _COUNT_LO_MASK


def count_to_float32(pair: tuple[jax.Array, jax.Array]) -> jax.Array:
  """A canonical pair's count in float32, rounded once (to nearest even).

  Exact below 2**24 and, below 2**31, the bits of the int32 count's
  conversion; rounded once below 2**48 (hi * 2**24 is exact for hi < 2**24,
  and one addition of two exact terms rounds once).
  """
  hi, lo = pair
  return (hi.astype(jnp.float32) * pow2(jnp.int32(_COUNT_LO_BITS)) +
          lo.astype(jnp.float32))


def total_count(counts: jax.Array) -> jax.Array:
  """The sum of a non-negative int32 array, as ``count_to_float32``."""
  init = (jnp.int32(0), jnp.int32(0))
  return count_to_float32(jax.lax.reduce(
      count_pair(counts), init, add_counts, tuple(range(counts.ndim))))
