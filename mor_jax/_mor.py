"""MoR selection (MOR_SPEC section 5, the paper's Algorithm 2).

A recipe is an ordered list of candidate representations, most aggressive
first, each with an acceptance predicate, ending in BF16 (always accepted).
Each decision unit (the whole tensor, or each block) takes the first
candidate whose predicate holds. A unit holding NaN or Inf fails every
predicate, falls back to BF16, and passes through unchanged.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mor_jax import _dispatch
from mor_jax import _formats
from mor_jax import _partition
from mor_jax import _quantize

Representation = _formats.Representation
E4M3, E5M2, BF16 = _formats.E4M3, _formats.E5M2, _formats.BF16
GRANULARITIES = ("tensor", "block")


class Measurements:
  """What acceptance predicates look at, one value per decision unit.

  Per decision unit means a 0-d array for tensor-level recipes and an array
  shaped like the block grid for per-block ones. Quantization errors are
  computed on first use and cached, so a predicate that compares two formats
  (sub-tensor MoR's E4M3-versus-E5M2 test) costs one pass per format.

  Attributes:
    stats: the per-block ``BlockStats`` the units are reduced from.
    amax: max |x| over finite elements.
    min_nonzero: min |x| over finite nonzero elements (+inf if none).
    dynamic_range: amax / min_nonzero (0 where there is no nonzero element).
    nonfinite: whether the unit holds a NaN or an infinity.
    count: number of finite nonzero elements.
  """

  def __init__(self, x: jax.Array, part: _partition.Partition,
               stats: _quantize.BlockStats, recipe: Recipe, impl: str):
    self._x, self._part, self.stats, self._recipe = x, part, stats, recipe
    self._impl = impl
    self._quantized: dict[Representation, tuple[jax.Array, jax.Array]] = {}
    self._tensor = recipe.granularity == "tensor"
    self.amax = self._reduce(stats.amax, jnp.max)
    self.min_nonzero = self._reduce(stats.min_nonzero, jnp.min)
    self.nonfinite = self._reduce(stats.nonfinite, jnp.any)
    self.count = self._reduce(stats.count, jnp.sum)
    self.dynamic_range = _dynamic_range(self.amax, self.min_nonzero)

  def _reduce(self, grid, fn):
    return fn(grid) if self._tensor else grid

  def quantized(self, fmt: Representation) -> tuple[jax.Array, jax.Array]:
    """(values of x quantized to ``fmt`` and back, per-block error sums)."""
    if fmt not in self._quantized:
      r = self._recipe
      scale = _quantize.scales_from_amax(
          self.stats.amax, fmt, r.scaling,
          _partition.group_blocks(r.group_shape, r.block_shape))
      self._quantized[fmt] = _quantize.quantize_with_scales(
          self._x, self._part, scale, self.stats.nonfinite, fmt, "values",
          self._impl)
    return self._quantized[fmt]

  def error(self, fmt: Representation) -> jax.Array:
    """Mean relative error of quantizing each unit to ``fmt`` (0 if empty)."""
    err_sum = self._reduce(self.quantized(fmt)[1], jnp.sum)
    return err_sum / jnp.maximum(self.count, 1)


def _dynamic_range(amax: jax.Array, min_nonzero: jax.Array) -> jax.Array:
  """amax / min |x != 0|, 0 where there is no nonzero element."""
  some = jnp.isfinite(min_nonzero)
  return jnp.where(some, amax / jnp.where(some, min_nonzero, 1.0), 0.0)


Predicate = Callable[[Measurements, Representation], jax.Array]


@dataclasses.dataclass(frozen=True)
class ErrorBelow:
  """Accepts a unit whose relative error in the candidate format is < threshold."""

  threshold: float

  def __post_init__(self):
    if not (isinstance(self.threshold, (int, float)) and
            0 < self.threshold and np.isfinite(self.threshold)):
      raise ValueError(
          f"threshold must be a positive finite number, got {self.threshold!r}.")

  def __call__(self, m: Measurements, fmt: Representation) -> jax.Array:
    return m.error(fmt) < self.threshold


@dataclasses.dataclass(frozen=True)
class ErrorNotAbove:
  """Accepts a unit whose error in the candidate format is <= its error in ``yardstick``."""

  yardstick: Representation = E5M2

  def __call__(self, m: Measurements, fmt: Representation) -> jax.Array:
    return m.error(fmt) <= m.error(self.yardstick)


@dataclasses.dataclass(frozen=True)
class DynamicRangeWithin:
  """Accepts a unit whose max|x| / min|x != 0| fits the candidate's normal range."""

  def __call__(self, m: Measurements, fmt: Representation) -> jax.Array:
    return m.dynamic_range <= fmt.max / fmt.smallest_normal


@dataclasses.dataclass(frozen=True)
class Always:
  """Accepts every finite unit."""

  def __call__(self, m: Measurements, fmt: Representation) -> jax.Array:
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
  return candidates


@dataclasses.dataclass(frozen=True, kw_only=True)
class Recipe:
  """A MoR recipe: ordered (representation, predicate) candidates ending in BF16.

  The generic form; ``TensorLevelMoR``, ``SubTensorMoR``, ``Static`` and
  ``NoQuant`` are instances of it. A predicate is any callable
  ``(Measurements, Representation) -> bool array`` (one value per decision
  unit); make it hashable (a frozen dataclass) so recipes can key jit caches.

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
  granularity: str = "tensor"
  block_shape: tuple[int | None, ...] | None = (128, 128)
  scaling: str = "gam"
  group_shape: tuple[int | None, ...] | None = None

  def __post_init__(self):
    object.__setattr__(self, "candidates", _check_candidates(self.candidates))
    if self.granularity not in GRANULARITIES:
      raise ValueError(f"granularity must be one of {GRANULARITIES}, got "
                       f"{self.granularity!r}.")
    _partition.check_scaling(self.scaling)
    if self.block_shape is None:
      if len(self.candidates) > 1 or self.group_shape is not None:
        raise ValueError("block_shape is required when an FP8 candidate is "
                         "present.")
      return
    block = _partition.check_shape_arg(self.block_shape,
                                       _rank_of(self.block_shape),
                                       "block_shape")
    object.__setattr__(self, "block_shape", block)
    object.__setattr__(self, "group_shape", _partition.check_group_shape(
        self.group_shape, block, self.scaling))

  @property
  def names(self) -> tuple[str, ...]:
    """Names of the candidates, indexed by choice code."""
    return tuple(fmt.name for fmt, _ in self.candidates)


def _accept(pred: Predicate, m: Measurements, fmt: Representation):
  ok = jnp.asarray(pred(m, fmt))
  if ok.dtype != jnp.bool_ or ok.shape != m.nonfinite.shape:
    raise TypeError(
        f"predicate {pred!r} for {fmt.name} must return a bool array of shape "
        f"{m.nonfinite.shape} (one per decision unit), got {ok.dtype}{list(ok.shape)}.")
  return ok


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
  granularity: str = _derived(default="tensor")

  def __post_init__(self):
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
  granularity: str = _derived(default="block")

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
  scaling: str = "fp32"
  candidates: tuple = _derived(default=())
  granularity: str = _derived(default="block")

  def __post_init__(self):
    object.__setattr__(self, "candidates",
                       ((_formats.as_fp8(self.fmt), Always()), (BF16, None)))
    super().__post_init__()


@dataclasses.dataclass(frozen=True, kw_only=True)
class NoQuant(Recipe):
  """The BF16 baseline: values unchanged (in their own dtype)."""

  candidates: tuple = _derived(default=())
  granularity: str = _derived(default="tensor")
  block_shape: None = _derived(default=None)

  def __post_init__(self):
    object.__setattr__(self, "candidates", ((BF16, None),))
    super().__post_init__()


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["fraction_blocks", "fraction_elements", "error",
                                "chosen_error", "amax", "dynamic_range",
                                "nonfinite"],
                   meta_fields=[])
@dataclasses.dataclass(frozen=True)
class MoRStats:
  """Statistics of one MoR quantization (every field a float32/bool array).

  Attributes:
    fraction_blocks: [k] share of decision units per candidate.
    fraction_elements: [k] share of elements per candidate.
    error: [k] mean relative error the whole tensor would have if every
      unit took candidate i (0 for BF16).
    chosen_error: mean relative error of the returned value.
    amax: max |x| over finite elements.
    dynamic_range: amax / min |x != 0| (0 if no nonzero element).
    nonfinite: whether x holds a NaN or an infinity.
  """

  fraction_blocks: jax.Array
  fraction_elements: jax.Array
  error: jax.Array
  chosen_error: jax.Array
  amax: jax.Array
  dynamic_range: jax.Array
  nonfinite: jax.Array


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["value", "choice", "stats"],
                   meta_fields=["names"])
@dataclasses.dataclass(frozen=True)
class MoRResult:
  """The outcome of ``mor_quantize``: a pytree.

  Attributes:
    value: x with each part in its chosen representation, dequantized, in
      x's dtype.
    choice: int32 codes indexing ``names`` (the recipe's candidates): a 0-d
      array for tensor-level recipes, the block grid for per-block ones.
    stats: a ``MoRStats``.
    names: the candidates' names, e.g. ("E4M3", "BF16").
  """

  value: jax.Array
  choice: jax.Array
  stats: MoRStats
  names: tuple[str, ...]


def mor_quantize(x: jax.typing.ArrayLike, recipe: Recipe) -> MoRResult:
  """Picks, per tensor or per block, the first representation that holds ``x``.

  Runs under jit, vmap, grad and scan with no host synchronisation: every
  candidate is evaluated and the choice is made with selects. The gradient of
  ``.value`` is straight-through (identity to ``x``).

  Args:
    x: a floating-point array; per-block and FP8 candidates need one
      ``recipe.block_shape`` entry per dimension.
    recipe: a ``Recipe`` (``TensorLevelMoR``, ``SubTensorMoR``, ``Static``,
      ``NoQuant`` or a generic one).

  Returns:
    A ``MoRResult``.

  Examples:
    >>> import jax, jax.numpy as jnp, mor_jax
    >>> x = jax.random.normal(jax.random.key(1), (256, 256))
    >>> x = x.at[:128, :128].multiply(jnp.geomspace(1e-9, 1e9, 128))
    >>> r = mor_jax.mor_quantize(x, mor_jax.SubTensorMoR(mode="three_way"))
    >>> r.names, r.choice
    (('E4M3', 'E5M2', 'BF16'), Array([[2, 0],
           [0, 0]], dtype=int32))
  """
  x = jnp.asarray(x)
  _quantize.check_input(x)
  if not isinstance(recipe, Recipe):
    raise TypeError(f"recipe must be a mor_jax.Recipe, got {recipe!r}.")
  if recipe.block_shape is not None and len(recipe.block_shape) != x.ndim:
    raise ValueError(
        f"recipe.block_shape {recipe.block_shape} has {len(recipe.block_shape)} "
        f"entries but x has {x.ndim} dimensions (shape {x.shape}).")
  value, choice, stats = _mor_quantize(jax.lax.stop_gradient(x), recipe,
                                       _dispatch.implementation())
  return MoRResult(_quantize.straight_through(x, value), choice, stats,
                   recipe.names)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _mor_quantize(x: jax.Array, recipe: Recipe, impl: str):
  block_shape = recipe.block_shape or (None,) * x.ndim
  part = _partition.Partition.build(x.shape, block_shape)
  m = Measurements(x, part, _quantize.block_stats(x, part, impl), recipe,
                   impl)

  accepted = [_accept(pred, m, fmt) & ~m.nonfinite
              for fmt, pred in recipe.candidates[:-1]]
  accepted.append(jnp.ones_like(m.nonfinite))
  # The first accepted candidate: argmax returns the first True.
  choice = jnp.argmax(jnp.stack(accepted), axis=0).astype(jnp.int32)

  value = x
  for i, (fmt, _) in reversed(list(enumerate(recipe.candidates[:-1]))):
    chosen = choice == i
    if recipe.granularity == "block":
      chosen = part.from_blocks(jnp.broadcast_to(part.expand(chosen),
                                                 part.blocked_shape))
    value = jnp.where(chosen, m.quantized(fmt)[0], value)

  k = len(recipe.candidates)
  onehot = (choice[..., None] == jnp.arange(k)).astype(jnp.float32)
  if recipe.granularity == "block":
    flat = onehot.reshape(-1, k)
    fraction_blocks = jnp.sum(flat, axis=0) / max(flat.shape[0], 1)
    sizes = jnp.asarray(part.block_sizes().ravel(), jnp.float32)
    fraction_elements = sizes @ flat / max(x.size, 1)
  else:
    fraction_blocks = fraction_elements = onehot

  total = jnp.maximum(jnp.sum(m.count), 1)
  error = jnp.stack([jnp.sum(m.quantized(fmt)[1]) / total if fmt.is_fp8
                     else jnp.float32(0) for fmt, _ in recipe.candidates])
  chosen_sum = sum(jnp.sum(jnp.where(choice == i, m.quantized(fmt)[1], 0.0))
                   for i, (fmt, _) in enumerate(recipe.candidates[:-1]))
  st = m.stats
  amax = jnp.max(st.amax, initial=0.0)
  min_nonzero = jnp.min(st.min_nonzero, initial=jnp.inf)
  stats = MoRStats(
      fraction_blocks=fraction_blocks,
      fraction_elements=fraction_elements,
      error=error,
      chosen_error=jnp.asarray(chosen_sum, jnp.float32) / total,
      amax=amax,
      dynamic_range=_dynamic_range(amax, min_nonzero),
      nonfinite=jnp.any(st.nonfinite))
  return value, choice, stats
