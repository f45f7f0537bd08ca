"""An independent NumPy/ml_dtypes reference of docs/numerics.md sections 2-5.

Written from the spec, not from mor_jax: explicit loops over blocks, NumPy
float32 arithmetic (IEEE division), ``np.frexp`` for exponents, ml_dtypes for
the FP8 casts, float64 for errors. Slow and plain on purpose. It imports no
JAX.
"""

from __future__ import annotations

import itertools
import math

import ml_dtypes
import numpy as np

F32_TINY = np.float32(np.finfo(np.float32).smallest_normal)
SCALE_CAP = np.float32(2.0**126)

FORMATS = {
    "E4M3": ml_dtypes.float8_e4m3fn,
    "E5M2": ml_dtypes.float8_e5m2,
}


def fmax(fmt: str) -> np.float32:
  return np.float32(ml_dtypes.finfo(FORMATS[fmt]).max)


F32_MAX = np.float32(np.finfo(np.float32).max)


def to_float32(x) -> np.ndarray:
  """x in float32; finite values beyond float32's range saturate to +-max."""
  x = np.asarray(x)
  if x.dtype.itemsize > 4:
    x = np.where(np.isinf(x), x, np.clip(x, -float(F32_MAX), float(F32_MAX)))
  return x.astype(np.float32)


def to_dtype(v, dtype) -> np.ndarray:
  """float32 results cast to ``dtype``, finite ones saturated at its max."""
  v = np.asarray(v, np.float32)
  big = min(float(ml_dtypes.finfo(dtype).max), float(F32_MAX))
  return np.where(np.isfinite(v), np.clip(v, -big, big), v).astype(dtype)


def flush(x: np.ndarray) -> np.ndarray:
  """float32 copy of x with float32 subnormals set to (signed) zero."""
  x = to_float32(x)
  with np.errstate(invalid="ignore"):
    return np.where(np.abs(x) < F32_TINY, np.copysign(np.float32(0), x), x)


def resolve(shape, block_shape):
  return tuple(d if b is None else b for d, b in zip(shape, block_shape))


def grid_of(shape, block):
  return tuple(math.ceil(d / b) if d else 0 for d, b in zip(shape, block))


def blocks(shape, block_shape):
  """Yields (grid index, tuple of slices) for every block."""
  block = resolve(shape, block_shape)
  ranges = [range(g) for g in grid_of(shape, block)]
  for idx in itertools.product(*ranges):
    yield idx, tuple(slice(i * b, min((i + 1) * b, d))
                     for i, b, d in zip(idx, block, shape))


def _amax(values: np.ndarray) -> np.float32:
  finite = values[np.isfinite(values)]
  return np.float32(np.abs(finite).max()) if finite.size else np.float32(0)


def _ideal(fmt: str, amax: np.float32) -> np.float32:
  with np.errstate(over="ignore"):
    return np.minimum(fmax(fmt) / amax, SCALE_CAP).astype(np.float32)


def _split(s: np.float32):
  """s = m * 2**e with m in [1, 2)."""
  m, e = np.frexp(np.float32(s))
  return np.float32(m * 2), int(e) - 1


def scales(x, fmt, block_shape, scaling, group_shape=None) -> np.ndarray:
  x = flush(x)
  block = resolve(x.shape, block_shape)
  out = np.ones(grid_of(x.shape, block), np.float32)
  for idx, sl in blocks(x.shape, block_shape):
    a = _amax(x[sl])
    if a == 0:
      continue
    s = _ideal(fmt, a)
    if scaling == "fp32":
      out[idx] = s
    elif scaling == "e8m0":
      out[idx] = np.float32(2.0 ** _split(s)[1])
    elif scaling == "gam":
      group = (None,) * x.ndim if group_shape is None else group_shape
      gsize = resolve(x.shape, group)
      start = [s_.start for s_ in sl]
      gsl = tuple(slice((st // g) * g, (st // g + 1) * g)
                  for st, g in zip(start, gsize))
      ag = _amax(x[gsl])
      m_g = np.float32(1) if ag == 0 else _split(_ideal(fmt, ag))[0]
      m_b, e_b = _split(s)
      if m_g > m_b:
        e_b -= 1
      out[idx] = np.float32(np.ldexp(np.float64(m_g), e_b))
    else:
      raise ValueError(scaling)
  return out


def quantize(x, fmt, block_shape, scaling, group_shape=None):
  """Returns (codes as ml_dtypes FP8 array, scales)."""
  x32 = flush(x)
  sc = scales(x, fmt, block_shape, scaling, group_shape)
  codes = np.zeros(x32.shape, FORMATS[fmt])
  f = fmax(fmt)
  for idx, sl in blocks(x32.shape, block_shape):
    with np.errstate(over="ignore", invalid="ignore"):
      y = (x32[sl] * sc[idx]).astype(np.float32)
      y = np.where(np.isfinite(y), np.clip(y, -f, f), y)
      codes[sl] = y.astype(FORMATS[fmt])
  return codes, sc


def dequantize(codes, sc, block_shape) -> np.ndarray:
  """f32(q) / scale in float32, float32 subnormal results flushed, finite
  codes saturated at float32's max."""
  out = np.zeros(codes.shape, np.float32)
  for idx, sl in blocks(codes.shape, block_shape):
    with np.errstate(invalid="ignore", over="ignore"):
      q = codes[sl].astype(np.float32)
      v = q / sc[idx]
      out[sl] = np.where(np.isfinite(q), np.clip(v, -F32_MAX, F32_MAX), v)
  return flush(out)


def fake_quantize(x, fmt, block_shape, scaling, group_shape=None):
  """float32 values of dequantize(quantize(x)), non-finite x passed through."""
  codes, sc = quantize(x, fmt, block_shape, scaling, group_shape)
  x32 = to_float32(x)
  return np.where(np.isfinite(x32), dequantize(codes, sc, block_shape), x32)


def relative_error(x, x_hat) -> float:
  """docs/numerics.md section 4 in float64: mean over finite nonzero x."""
  x64 = flush(x).astype(np.float64)
  xh = np.broadcast_to(to_float32(x_hat), x64.shape)
  xh = xh.astype(np.float64)
  mask = (x64 != 0) & np.isfinite(x64)
  if not mask.any():
    return 0.0
  with np.errstate(invalid="ignore", over="ignore"):
    return float(np.mean(np.abs(x64[mask] - xh[mask]) / np.abs(x64[mask])))


def scaled_errors(x, fmt, block_shape, scaling, group_shape=None):
  """Per block (error sum, count) of MoR's statistic (docs/numerics.md
  section 4): |y - q| / |y| with y = x * scale in float32 and q its FP8 value,
  1 where q is 0, over the finite nonzero x; sums in float64."""
  x32 = flush(x)
  codes, sc = quantize(x, fmt, block_shape, scaling, group_shape)
  grid = sc.shape
  sums, counts = np.zeros(grid), np.zeros(grid, np.int64)
  for idx, sl in blocks(x32.shape, block_shape):
    xv = x32[sl]
    mask = (xv != 0) & np.isfinite(xv)
    with np.errstate(over="ignore", under="ignore"):
      y = (xv[mask] * sc[idx]).astype(np.float64)
    q = codes[sl][mask].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
      term = np.where(q == 0, 1.0, np.abs(y - q) / np.abs(y))
    sums[idx] = term.sum()
    counts[idx] = mask.sum()
  return sums, counts


def block_errors(x, x_hat, block_shape):
  """Per block (error sum, nonzero finite count) in float64."""
  x64 = flush(x).astype(np.float64)
  xh = np.asarray(x_hat).astype(np.float32).astype(np.float64)
  shape = x64.shape
  grid = grid_of(shape, resolve(shape, block_shape))
  sums, counts = np.zeros(grid), np.zeros(grid, np.int64)
  for idx, sl in blocks(shape, block_shape):
    xv, hv = x64[sl], xh[sl]
    mask = (xv != 0) & np.isfinite(xv)
    sums[idx] = np.sum(np.abs(xv[mask] - hv[mask]) / np.abs(xv[mask]))
    counts[idx] = mask.sum()
  return sums, counts


def mor(x, candidates, granularity, block_shape, scaling, group_shape=None):
  """docs/numerics.md section 5: (value as float32, choice, tensor-level errors).

  ``candidates`` lists (format name, rule) pairs before the BF16 fallback,
  with rule one of ("error_below", threshold), ("error_not_above", "E5M2"),
  ("dynamic_range",) or ("always",).
  """
  x = np.asarray(x)
  x32 = flush(x)
  block_shape = (None,) * x.ndim if block_shape is None else block_shape
  block = resolve(x.shape, block_shape)
  grid = grid_of(x.shape, block)
  fq = {fmt: fake_quantize(x, fmt, block_shape, scaling, group_shape)
        for fmt, _ in candidates}
  for fmt, rule in candidates:
    if rule[0] == "error_not_above":
      fq.setdefault(rule[1], fake_quantize(x, rule[1], block_shape, scaling,
                                           group_shape))
  errs = {fmt: scaled_errors(x, fmt, block_shape, scaling, group_shape)
          for fmt in fq}
  nonfinite = np.zeros(grid, bool)
  amax = np.zeros(grid)
  minnz = np.full(grid, np.inf)
  for idx, sl in blocks(x.shape, block_shape):
    b = x32[sl].astype(np.float64)
    nonfinite[idx] = not np.isfinite(b).all()
    fin = np.abs(b[np.isfinite(b) & (b != 0)])
    if fin.size:
      amax[idx], minnz[idx] = fin.max(), fin.min()
  if granularity == "tensor":
    reduce = lambda a, f: f(a).reshape(())  # noqa: E731
    nonfinite, amax, minnz = (reduce(nonfinite, np.any), reduce(amax, np.max),
                              reduce(minnz, np.min))
    errs = {f: (s.sum(), c.sum()) for f, (s, c) in errs.items()}
  mean = {f: s / np.maximum(c, 1) for f, (s, c) in errs.items()}
  some = np.isfinite(minnz)
  with np.errstate(divide="ignore"):
    dyn = np.where(some, np.log2(amax / np.where(some, minnz, 1)), 0)
  choice = np.full(np.shape(nonfinite), len(candidates), np.int32)
  for i in reversed(range(len(candidates))):
    fmt, rule = candidates[i]
    if rule[0] == "error_below":
      ok = mean[fmt] < rule[1]
    elif rule[0] == "error_not_above":
      ok = mean[fmt] <= mean[rule[1]]
    elif rule[0] == "dynamic_range":
      info = ml_dtypes.finfo(FORMATS[fmt])
      ok = dyn <= np.log2(float(info.max) / float(info.smallest_normal))
    else:
      ok = np.ones(np.shape(nonfinite), bool)
    choice = np.where(ok & ~nonfinite, i, choice)
  value = to_float32(x).copy()
  for i, (fmt, _) in enumerate(candidates):
    for idx, sl in blocks(x.shape, block_shape):
      c = choice if granularity == "tensor" else choice[idx]
      if c == i:
        value[sl] = fq[fmt][sl]
  total = int(((x32 != 0) & np.isfinite(x32)).sum())
  tensor_err = [errs[f][0].sum() / max(total, 1) for f, _ in candidates]
  return value, choice, np.array(tensor_err + [0.0])
