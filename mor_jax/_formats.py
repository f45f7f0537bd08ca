"""Number representations: the FP8 formats MoR chooses among, BF16, and E8M0.

Every figure is read from ``ml_dtypes.finfo``; none is typed by hand.
"""

from __future__ import annotations

import dataclasses

import ml_dtypes
import numpy as np


@dataclasses.dataclass(frozen=True)
class Representation:
  """A number format a tensor (or a block of it) can be represented in.

  Attributes:
    name: short name, e.g. ``"E4M3"``.
    dtype: the NumPy / ml_dtypes dtype of the format.
    max: largest finite value, as a Python float.
    smallest_normal: smallest positive normal value.
    mantissa_bits: explicit mantissa bits (3 for E4M3).
    min_exponent: exponent of ``smallest_normal`` (-6 for E4M3).

  Examples:
    >>> import mor_jax
    >>> mor_jax.E4M3.max, mor_jax.E5M2.max
    (448.0, 57344.0)
  """

  name: str
  dtype: np.dtype
  max: float
  smallest_normal: float
  mantissa_bits: int
  min_exponent: int

  @classmethod
  def from_dtype(cls, name: str, dtype) -> Representation:
    info = ml_dtypes.finfo(dtype)
    return cls(
        name=name,
        dtype=np.dtype(dtype),
        max=float(info.max),
        smallest_normal=float(info.smallest_normal),
        mantissa_bits=int(info.nmant),
        min_exponent=int(info.minexp),
    )

  @property
  def is_fp8(self) -> bool:
    """True for the 8-bit element formats a tensor can be quantized to."""
    return self.dtype.itemsize == 1 and self.name != "E8M0"

  def __repr__(self) -> str:
    return f"mor_jax.{self.name}"


E4M3 = Representation.from_dtype("E4M3", ml_dtypes.float8_e4m3fn)
E5M2 = Representation.from_dtype("E5M2", ml_dtypes.float8_e5m2)
# BF16 is the fallback: a tensor "in BF16" is kept as it came, in its own
# compute dtype (float32 input stays float32). The dtype is informational.
BF16 = Representation.from_dtype("BF16", ml_dtypes.bfloat16)
# E8M0 is a scale format only (MX-style powers of two).
E8M0 = Representation.from_dtype("E8M0", ml_dtypes.float8_e8m0fnu)

FP8_FORMATS = (E4M3, E5M2)


def as_fp8(fmt, *, name: str = "fmt") -> Representation:
  """Returns ``fmt`` if it is E4M3 or E5M2, else raises a ValueError naming ``name``."""
  if not isinstance(fmt, Representation) or not fmt.is_fp8:
    raise ValueError(
        f"{name} must be mor_jax.E4M3 or mor_jax.E5M2, got {fmt!r}.")
  return fmt
