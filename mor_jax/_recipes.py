"""MoR recipes: candidate representations and their acceptance predicates.

A recipe is an ordered list of candidate representations, most aggressive
first, each with an acceptance predicate, ending in BF16 (always accepted);
docs/numerics.md section 5. Recipes are frozen, hashable dataclasses
validated where they are built, so they key jit caches.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import typing
from collections.abc import Callable
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from mor_jax import _formats
from mor_jax import _partition
from mor_jax import _scaling

if typing.TYPE_CHECKING:
  from mor_jax._mor import Measurements

Representation = _formats.Representation
E4M3, E5M2, BF16 = _formats.E4M3, _formats.E5M2, _formats.BF16
Granularity = Literal["tensor", "block"]
GRANULARITIES: tuple[Granularity, ...] = typing.get_args(Granularity)


Predicate = Callable[["Measurements", Representation], jax.Array]


def check_threshold(threshold) -> float:
  """A mean-relative-error bound in (0, 1] as a Python float, or ValueError."""
  if isinstance(threshold, (np.ndarray, jax.Array)) and threshold.ndim == 0:
    # A 0-d array (jnp.float32(0.05)) is read as its value, as a NumPy
    # scalar is; a traced one raises jax's concretization error.
    threshold = threshold.item()
  if isinstance(threshold, (bool, np.bool_)) or not isinstance(
      threshold, numbers.Real):
    raise ValueError("threshold must be a real number in (0, 1] (a mean "
                     f"relative error, 0.045 for 4.5%), got {threshold!r}.")
  value = float(threshold)
  if not 0 < value <= 1:
    hint = (f" (for {value}% write {value / 100:g})"
            if 1 < value <= 100 else "")
    raise ValueError("threshold must be a real number in (0, 1] (a mean "
                     f"relative error, 0.045 for 4.5%), got {threshold!r}"
                     f"{hint}.")
  return value


@dataclasses.dataclass(frozen=True)
class ErrorBelow:
  """Accepts a unit whose relative error in the candidate format is < threshold."""

  threshold: float

  def __post_init__(self):
    object.__setattr__(self, "threshold", check_threshold(self.threshold))

  def __call__(self, m: "Measurements", fmt: Representation) -> jax.Array:
    return m.error(fmt) < self.threshold


@dataclasses.dataclass(frozen=True)
class ErrorNotAbove:
  """Accepts a unit whose error in the candidate format is <= its error in ``yardstick``."""

  yardstick: Representation = E5M2

  def __post_init__(self):
    # BF16 would measure no error (and the per-row path quantizes the
    # yardstick with the candidate's scales): FP8 formats only.
    _formats.as_fp8(self.yardstick, name="ErrorNotAbove's yardstick")

  def __call__(self, m: "Measurements", fmt: Representation) -> jax.Array:
    return m.error(fmt) <= m.error(self.yardstick)


@dataclasses.dataclass(frozen=True)
class DynamicRangeWithin:
  """Accepts a unit whose max|x| / min|x != 0| fits the candidate's normal range.

  Compared in log2 (``Measurements.dynamic_range`` is in bits), which cannot
  overflow.
  """

  def __call__(self, m: "Measurements", fmt: Representation) -> jax.Array:
    return m.dynamic_range <= math.log2(fmt.max / fmt.smallest_normal)


@dataclasses.dataclass(frozen=True)
class Always:
  """Accepts every finite unit."""

  def __call__(self, m: "Measurements", fmt: Representation) -> jax.Array:
    return jnp.ones_like(m.nonfinite)


def _check_candidates(candidates) -> tuple[tuple[Representation, Any], ...]:
  try:
    candidates = tuple((fmt, pred) for fmt, pred in candidates)
  except (TypeError, ValueError):
    raise ValueError(
        "candidates must be a sequence of (representation, predicate) pairs, "
        f"got {candidates!r}.") from None
  if not candidates or candidates[-1] != (BF16, None):
    raise ValueError(
        "candidates must end with (mor_jax.BF16, None), the fallback that is "
        f"always accepted; got {candidates!r}.")
  for i, (fmt, pred) in enumerate(candidates[:-1]):
    _formats.as_fp8(fmt, name=f"candidates[{i}][0]")
    if not callable(pred):
      raise ValueError(
          f"candidates[{i}][1] must be a predicate (measurements, fmt) -> "
          f"bool array, got {pred!r}.")
    try:
      hash(pred)
    except TypeError:
      # The recipe is a static argument of jitted functions: fail here, not
      # at the first quantization.
      raise ValueError(
          f"candidates[{i}][1] must be hashable (recipes are static "
          "arguments of jit; make it a frozen dataclass), got "
          f"{pred!r}.") from None
  return candidates


@dataclasses.dataclass(frozen=True, kw_only=True)
class Recipe:
  """A MoR recipe: ordered (representation, predicate) candidates ending in BF16.

  The generic form; ``TensorLevelMoR``, ``SubTensorMoR``, ``Static`` and
  ``NoQuant`` are instances of it. A predicate is any callable
  ``(Measurements, Representation) -> bool array`` (one value per decision
  unit), hashable (a frozen dataclass): recipes key jit caches, so one that
  is not is refused here.

  Attributes:
    candidates: ((fmt, predicate), ..., (mor_jax.BF16, None)).
    granularity: "tensor" (one decision) or "block" (one per block).
    block_shape: the partition inside FP8 candidates, one int or None per
      dimension; per-block recipes also decide per block of it.
    scaling: "fp32", "e8m0" or "gam".
    group_shape: gam groups (a multiple of block_shape), None for one group.

  Examples:
    >>> import jax.numpy as jnp, mor_jax
    >>> recipe = mor_jax.Recipe(
    ...     candidates=((mor_jax.E5M2, mor_jax.ErrorBelow(0.06)),
    ...                 (mor_jax.BF16, None)),
    ...     granularity="tensor", block_shape=(1, None))
    >>> int(mor_jax.mor_quantize(jnp.ones((4, 8)), recipe).choice)
    0
  """

  candidates: tuple[tuple[Representation, Predicate | None], ...]
  granularity: Granularity = "tensor"
  block_shape: tuple[int | None, ...] | None = (128, 128)
  scaling: _scaling.Scaling = "gam"
  group_shape: tuple[int | None, ...] | None = None

  def __post_init__(self):
    object.__setattr__(self, "candidates", _check_candidates(self.candidates))
    if self.granularity not in GRANULARITIES:
      raise ValueError(f"granularity must be one of {GRANULARITIES}, got "
                       f"{self.granularity!r}.")
    _scaling.check_scaling(self.scaling)
    if self.block_shape is None:
      if len(self.candidates) > 1 or self.group_shape is not None:
        raise ValueError("block_shape is required when an FP8 candidate is "
                         "present.")
      return
    block = _partition.check_shape_arg(self.block_shape,
                                       _rank_of(self.block_shape),
                                       "block_shape")
    object.__setattr__(self, "block_shape", block)
    object.__setattr__(self, "group_shape", _scaling.check_group_shape(
        self.group_shape, block, self.scaling))

  @property
  def formats(self) -> tuple[Representation, ...]:
    """The candidates' representations, indexed by choice code."""
    return tuple(fmt for fmt, _ in self.candidates)

  @property
  def names(self) -> tuple[str, ...]:
    """Names of the candidates, indexed by choice code."""
    return tuple(fmt.name for fmt in self.formats)


def _rank_of(shape) -> int:
  try:
    return len(shape)
  except TypeError:
    raise ValueError(
        "block_shape must be a sequence with one entry (int or None) per "
        f"dimension, got {shape!r}.") from None


def _derived(**kwargs):
  """A field a subclass computes in __post_init__ (not an argument)."""
  return dataclasses.field(init=False, repr=False, **kwargs)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TensorLevelMoR(Recipe):
  """Tensor-level MoR: the whole tensor in E4M3 if its error < threshold, else BF16.

  The paper's main result (98.38% of tensors in E4M3 with per-channel scales).

  Attributes:
    threshold: acceptance bound on the mean relative error (default 4.5%).
    block_shape: the partition of the E4M3 candidate: (1, None) is
      per-channel of a 2-D operand, (None, None) per-tensor.
    scaling: "fp32", "e8m0" or "gam".

  Examples:
    >>> import jax, mor_jax
    >>> x = jax.random.normal(jax.random.key(0), (256, 256))
    >>> r = mor_jax.mor_quantize(x, mor_jax.TensorLevelMoR(block_shape=(1, None)))
    >>> r.choice, r.stats.error
    (Array(0, dtype=int32), Array([0.02253294, 0.        ], dtype=float32))
  """

  threshold: float = 0.045
  candidates: tuple = _derived(default=())
  granularity: Granularity = _derived(default="tensor")

  def __post_init__(self):
    object.__setattr__(self, "threshold", check_threshold(self.threshold))
    object.__setattr__(self, "candidates",
                       ((E4M3, ErrorBelow(self.threshold)), (BF16, None)))
    super().__post_init__()


SUB_TENSOR_MODES = ("two_way", "three_way")


@dataclasses.dataclass(frozen=True, kw_only=True)
class SubTensorMoR(Recipe):
  """Sub-tensor MoR: each block in E4M3, (E5M2,) or BF16.

  two_way: E4M3 where its block error is <= E5M2's (E5M2 is the yardstick),
  else BF16. three_way: E4M3 as above, else E5M2 where the block's dynamic
  range fits E5M2's normal range, else BF16.

  Attributes:
    mode: "two_way" or "three_way".
    block_shape: the blocks, default 128x128.
    scaling: default "gam" with the whole tensor as one group.
  """

  mode: str = "two_way"
  candidates: tuple = _derived(default=())
  granularity: Granularity = _derived(default="block")

  def __post_init__(self):
    if self.mode not in SUB_TENSOR_MODES:
      raise ValueError(
          f"mode must be one of {SUB_TENSOR_MODES}, got {self.mode!r}.")
    e4m3 = (E4M3, ErrorNotAbove(E5M2))
    extra = ((E5M2, DynamicRangeWithin()),) if self.mode == "three_way" else ()
    object.__setattr__(self, "candidates", (e4m3, *extra, (BF16, None)))
    super().__post_init__()


@dataclasses.dataclass(frozen=True, kw_only=True)
class Static(Recipe):
  """Always one FP8 format; only blocks holding NaN or Inf fall back to BF16.

  The usual FP8 baselines: ``Static(E4M3)`` is per-tensor current scaling;
  ``Static(E4M3, block_shape=(1, 32), scaling="e8m0")`` is MXFP8-like.
  """

  fmt: Representation = dataclasses.field(kw_only=False)
  block_shape: tuple[int | None, ...] = (None, None)
  scaling: _scaling.Scaling = "fp32"
  candidates: tuple = _derived(default=())
  granularity: Granularity = _derived(default="block")

  def __post_init__(self):
    object.__setattr__(self, "candidates",
                       ((_formats.as_fp8(self.fmt), Always()), (BF16, None)))
    super().__post_init__()


@dataclasses.dataclass(frozen=True, kw_only=True)
class NoQuant(Recipe):
  """The BF16 baseline: values unchanged (in their own dtype)."""

  candidates: tuple = _derived(default=())
  granularity: Granularity = _derived(default="tensor")
  block_shape: None = _derived(default=None)
  # Nothing is scaled: not arguments, so that NoQuant() is all there is.
  scaling: _scaling.Scaling = _derived(default="gam")
  group_shape: None = _derived(default=None)

  def __post_init__(self):
    object.__setattr__(self, "candidates", ((BF16, None),))
    super().__post_init__()
