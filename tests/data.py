"""Deterministic test tensors and exact comparisons shared by the tests."""

from __future__ import annotations

import ml_dtypes
import numpy as np

DTYPES = {
    "float32": np.float32,
    "bfloat16": ml_dtypes.bfloat16,
    "float16": np.float16,
}

# Kinds whose magnitudes float16 cannot hold are paired with the wide dtypes.
KINDS = ("normal", "tiny", "huge", "pow2", "outlier_cols", "wide", "zero_blocks")
F16_KINDS = ("normal", "pow2", "outlier_cols", "zero_blocks")


def make(kind: str, shape, dtype, seed: int = 0) -> np.ndarray:
  """A tensor of the given kind; float16 kinds stay inside its range."""
  rng = np.random.default_rng(seed)
  n = rng.standard_normal(shape)
  if kind == "normal":
    x = n
  elif kind == "tiny":
    x = n * 1e-30
  elif kind == "huge":
    x = n * 1e36
  elif kind == "pow2":
    lo, hi = (-10, 10) if np.dtype(dtype) == np.float16 else (-60, 60)
    x = np.sign(n) * 2.0 ** rng.integers(lo, hi, shape)
  elif kind == "outlier_cols":
    x = n
    if len(shape) >= 1 and shape[-1] > 1:
      cols = rng.choice(shape[-1], max(1, shape[-1] // 16), replace=False)
      x[..., cols] *= 1e3
  elif kind == "wide":
    x = np.sign(n) * 10.0 ** rng.uniform(-30, 30, shape)
  elif kind == "zero_blocks":
    x = n
    flat = x.reshape(-1)
    flat[: flat.size // 3] = 0.0
    if x.ndim >= 2:
      x[: max(1, x.shape[0] // 4)] = 0.0
  else:
    raise ValueError(kind)
  return np.asarray(x).astype(dtype)


def code_bits(codes) -> np.ndarray:
  """uint8 view of FP8 codes with every NaN code mapped to one value."""
  codes = np.asarray(codes)
  bits = codes.view(np.uint8).copy()
  bits[np.isnan(codes.astype(np.float32))] = 0xFF
  return bits


def assert_codes_equal(got, want):
  got_b, want_b = code_bits(got), code_bits(want)
  bad = np.flatnonzero(got_b != want_b)
  assert bad.size == 0, (
      f"{bad.size} codes differ; first at flat index {bad[0]}: got "
      f"{got_b.flat[bad[0]]:#04x}, want {want_b.flat[bad[0]]:#04x}")


def assert_bits_equal(got, want):
  got = np.asarray(got, np.float32)
  want = np.asarray(want, np.float32)
  assert got.shape == want.shape, (got.shape, want.shape)
  bad = np.flatnonzero(got.view(np.uint32) != want.view(np.uint32))
  assert bad.size == 0, (
      f"{bad.size} values differ bitwise; first at {bad[0]}: got "
      f"{got.flat[bad[0]]!r}, want {want.flat[bad[0]]!r}")


def ulp_distance(a, b) -> np.ndarray:
  """Distance in units in the last place between same-dtype float arrays."""
  a, b = np.asarray(a), np.asarray(b)
  assert a.dtype == b.dtype, (a.dtype, b.dtype)
  itype = {2: np.int16, 4: np.int32}[a.dtype.itemsize]
  ai = a.view(itype).astype(np.int64)
  bi = b.view(itype).astype(np.int64)
  # Map the sign-magnitude encoding to a monotonic integer line.
  top = np.int64(1) << (8 * a.dtype.itemsize - 1)
  ai = np.where(ai < 0, -(ai + top), ai)
  bi = np.where(bi < 0, -(bi + top), bi)
  both_nan = np.isnan(a.astype(np.float32)) & np.isnan(b.astype(np.float32))
  return np.where(both_nan, 0, np.abs(ai - bi))


def assert_within_ulp(got, want, ulps: int = 1):
  got, want = np.asarray(got), np.asarray(want)
  assert got.shape == want.shape, (got.shape, want.shape)
  d = ulp_distance(got, want)
  bad = np.flatnonzero(d > ulps)
  assert bad.size == 0, (
      f"{bad.size} values off by more than {ulps} ulp; first at {bad[0]}: "
      f"got {got.flat[bad[0]]!r}, want {want.flat[bad[0]]!r}")
