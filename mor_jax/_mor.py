"""MoR selection (docs/numerics.md section 5, the paper's Algorithm 2).

Each decision unit (the whole tensor, or each block) takes the first
candidate of the recipe (``mor_jax._recipes``) whose predicate holds. A unit
holding NaN or Inf fails every predicate, falls back to BF16, and passes
through unchanged. ``mor_quantize`` returns the tensor in its chosen
representations, dequantized; ``mor_codes`` returns the FP8 codes and scales
of the recipe's FP8 candidate, which is what a real FP8 GEMM reads. Both
share one selection, so their choices and statistics are the same bits.
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
from mor_jax import _quantize
from mor_jax import _recipes
from mor_jax import _scaling

Representation = _formats.Representation
Recipe = _recipes.Recipe


class Measurements:
  """What acceptance predicates look at, one value per decision unit.

  Per decision unit means a 0-d array for tensor-level recipes and an array
  shaped like the block grid for per-block ones. Quantizations are computed
  on first use and cached, so a predicate that compares two formats
  (sub-tensor MoR's E4M3-versus-E5M2 test) costs one pass per format; a
  format that is no candidate (a yardstick) writes nothing but error sums.

  Attributes:
    stats: the per-block ``BlockStats`` the units are reduced from.
    amax: max |x| over finite elements.
    min_nonzero: min |x| over finite nonzero elements (+inf if none).
    dynamic_range: log2(amax / min_nonzero), in bits (0 where there is no
      nonzero element).
    nonfinite: whether the unit holds a NaN or an infinity.
    count: number of finite nonzero elements, in float32 (rounded once
      past 2**24, as dividing by an int32 count would round it).
    whole: the whole tensor's ``BlockStats``, 0-d (``whole(stats)``; the
      caller's ``whole_stats`` where it has them, to spare a reduction).
  """

  def __init__(self, x: jax.Array, passes: _passes.Passes, recipe: Recipe,
               output: _passes.Output,
               whole_stats: _passes.BlockStats | None = None):
    self._x, self._passes, self._recipe = x, passes, recipe
    self._output = output
    self._quantized: dict[Representation, tuple] = {}
    self._tensor = recipe.granularity == "tensor"
    self.stats = passes.block_stats(x)
    self.whole = whole(self.stats) if whole_stats is None else whole_stats
    unit = self.whole if self._tensor else self.stats
    self.amax, self.min_nonzero = unit.amax, unit.min_nonzero
    self.nonfinite = unit.nonfinite
    self.count = unit.count.astype(jnp.float32)
    self.dynamic_range = _dynamic_range(self.amax, self.min_nonzero)

  def quantized(self, fmt: Representation
                ) -> tuple[jax.Array | None, jax.Array, jax.Array]:
    """(codes or values of x in ``fmt``, per-block error sums, scales)."""
    if fmt not in self._quantized:
      r = self._recipe
      scale = _scaling.scales_from_amax(
          self.stats.amax, fmt, r.scaling,
          _scaling.group_blocks(r.group_shape, r.block_shape),
          self.whole.amax)
      output = self._output if fmt in r.formats else "none"
      out, err_sum = self._passes.quantize_with_scales(
          self._x, scale, self.stats.nonfinite, fmt, output)
      self._quantized[fmt] = out, err_sum, scale
    return self._quantized[fmt]

  def error(self, fmt: Representation) -> jax.Array:
    """Mean relative error of quantizing each unit to ``fmt`` (0 if empty)."""
    err_sum = self.quantized(fmt)[1]
    if self._tensor:
      err_sum = jnp.sum(err_sum)
    return err_sum / jnp.maximum(self.count, 1)


def whole(st: _passes.BlockStats) -> _passes.BlockStats:
  """A grid's statistics reduced to 0-d arrays, in one reduction.

  One variadic reduce instead of four small kernels: max, min, or and
  integer sums are exact in any order, so the bits are those of four
  separate reductions. The identities make an empty grid reduce too.
  The count is summed as an exact (hi, lo) pair and comes out in float32,
  rounded once (``_numerics.count_to_float32``): a sharded tensor may hold
  more than int32's 2**31 - 1 elements. Below that its bits are the int32
  count's, which every reader divides by in float32.
  Statistics take no gradient: JAX differentiates no variadic reduce, and
  a second-order gradient (through a backward pass) reaches this one.
  """
  amax, nonfinite, count, low = jax.tree.map(jax.lax.stop_gradient, st)
  ops = (amax, nonfinite, *_numerics.count_pair(count), low)
  init = tuple(jnp.asarray(v, a.dtype)
               for v, a in zip((0, False, 0, 0, jnp.inf), ops))

  def combine(a, b):
    return (jnp.maximum(a[0], b[0]), a[1] | b[1],
            *_numerics.add_counts(a[2:4], b[2:4]), jnp.minimum(a[4], b[4]))

  amax, nonfinite, hi, lo, low = jax.lax.reduce(ops, init, combine,
                                                tuple(range(amax.ndim)))
  return _passes.BlockStats(amax, nonfinite,
                            _numerics.count_to_float32((hi, lo)), low)


def _log2(x: jax.Array) -> jax.Array:
  """log2 of a positive normal float32: its exponent, exactly, plus log2 of
  its significand in [1, 2)."""
  return (_numerics.exponent(x).astype(jnp.float32) +
          jnp.log2(_numerics.mantissa(x)))


def _dynamic_range(amax: jax.Array, min_nonzero: jax.Array) -> jax.Array:
  """log2(amax / min |x != 0|), 0 where there is no nonzero element.

  In log2 so that it cannot overflow: the ratio of two normal float32
  magnitudes reaches 2**254, far past float32's range; its log2 lies in
  [0, 254].
  """
  some = jnp.isfinite(min_nonzero)
  a = jnp.where(some, amax, 1.0)
  b = jnp.where(some, min_nonzero, 1.0)
  return jnp.where(some, jnp.maximum(_log2(a) - _log2(b), 0.0), 0.0)


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
    dynamic_range: log2(amax / min |x != 0|), the dynamic range in bits
      (0 if no nonzero element); in log2 so that it cannot overflow.
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


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["codes", "choice", "stats"],
                   meta_fields=["names"])
@dataclasses.dataclass(frozen=True)
class MoRCodes:
  """The outcome of ``mor_codes``: a pytree.

  Attributes:
    codes: a ``QuantizedArray``: x in the recipe's FP8 candidate, codes and
      one float32 scale per block of ``recipe.block_shape``, whatever the
      choice. A unit whose ``choice`` is 0 is represented by its codes; any
      other unit keeps x (BF16: "kept as it came").
    choice: as for ``MoRResult``.
    stats: as for ``MoRResult``, the same bits.
    names: as for ``MoRResult``.
  """

  codes: _quantize.QuantizedArray
  choice: jax.Array
  stats: MoRStats
  names: tuple[str, ...]


def _check(x, recipe) -> jax.Array:
  x = jnp.asarray(x)
  _quantize.check_input(x)
  if not isinstance(recipe, Recipe):
    raise TypeError(f"recipe must be a mor_jax.Recipe, got {recipe!r}.")
  if recipe.block_shape is not None and len(recipe.block_shape) != x.ndim:
    raise ValueError(
        f"recipe.block_shape {recipe.block_shape} has {len(recipe.block_shape)} "
        f"entries but x has {x.ndim} dimensions (shape {x.shape}).")
  partition(x.shape, recipe)  # its blocks' sizes, before tracing
  return x


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
  x = _check(x, recipe)
  impl = _dispatch.current()
  value, choice, stats = _axes.run(lambda x: _mor(x, recipe, "values", impl),
                                   jax.lax.stop_gradient(x))
  return MoRResult(_quantize.straight_through(x, value), choice, stats,
                   recipe.names)


def mor_codes(x: jax.typing.ArrayLike, recipe: Recipe) -> MoRCodes:
  """``mor_quantize``'s choice, with FP8 codes and scales instead of values.

  What an FP8 GEMM reads: the codes of the recipe's one FP8 candidate and
  their per-block scales, written by the same passes that make the choice
  (no dequantized copy). The choice and the statistics are those of
  ``mor_quantize(x, recipe)``, bit for bit. Not differentiable (codes have
  no gradient).

  Args:
    x: a floating-point array.
    recipe: a ``Recipe`` with exactly one FP8 candidate (``TensorLevelMoR``,
      ``Static``, two-way ``SubTensorMoR``, or a generic one).

  Returns:
    A ``MoRCodes``.

  Examples:
    >>> import jax, jax.numpy as jnp, mor_jax
    >>> x = jax.random.normal(jax.random.key(0), (4, 64))
    >>> r = mor_jax.mor_codes(x, mor_jax.TensorLevelMoR(block_shape=(1, None)))
    >>> r.codes.data.dtype, r.codes.scale.shape, int(r.choice)
    (dtype(float8_e4m3fn), (4, 1), 0)
    >>> y = mor_jax.dequantize(r.codes)   # what mor_quantize returns as .value
    >>> bool((y == mor_jax.mor_quantize(x, mor_jax.TensorLevelMoR(
    ...     block_shape=(1, None))).value).all())
    True
  """
  x = _check(x, recipe)
  fp8 = [fmt for fmt in recipe.formats if fmt.is_fp8]
  if len(fp8) != 1:
    raise ValueError(
        f"mor_codes needs a recipe with exactly one FP8 candidate, got "
        f"{recipe.names}: codes of one array hold one FP8 format.")
  impl = _dispatch.current()
  (codes, scale), choice, stats = _axes.run(
      lambda x: _mor(x, recipe, "codes", impl), jax.lax.stop_gradient(x))
  qa = _quantize.QuantizedArray(codes, scale, fp8[0], recipe.block_shape,
                                recipe.scaling, recipe.group_shape,
                                np.dtype(x.dtype))
  return MoRCodes(qa, choice, stats, recipe.names)


def _accept(pred, m: Measurements, fmt: Representation) -> jax.Array:
  ok = jnp.asarray(pred(m, fmt))
  if ok.dtype != jnp.bool_ or ok.shape != m.nonfinite.shape:
    raise TypeError(
        f"predicate {pred!r} for {fmt.name} must return a bool array of shape "
        f"{m.nonfinite.shape} (one per decision unit), got "
        f"{ok.dtype}{list(ok.shape)}.")
  return ok


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _mor(x: jax.Array, recipe: Recipe, output: _passes.Output,
         impl: _dispatch.Implementation):
  """(values, or (codes, scales) of the FP8 candidate; choice; MoRStats)."""
  part = partition(x.shape, recipe)
  m, choice, stats = select(x, _dispatch.passes(part, impl), recipe, output,
                            part)
  if output == "codes":
    out, _, scale = m.quantized(recipe.candidates[0][0])
    return (out, scale), choice, stats
  return chosen_value(x, choice, recipe, part,
                      lambda fmt: m.quantized(fmt)[0]), choice, stats


def chosen_value(x: jax.Array, choice: jax.Array, recipe: Recipe,
                 part: _partition.Partition, value_of) -> jax.Array:
  """x with each decision unit's chosen candidate's ``value_of(fmt)`` (x's
  shape), and x itself where BF16 was chosen."""
  value = x
  for i, (fmt, _) in reversed(list(enumerate(recipe.candidates[:-1]))):
    chosen = choice == i
    if recipe.granularity == "block":
      chosen = part.from_blocks(jnp.broadcast_to(part.expand(chosen),
                                                 part.blocked_shape))
    value = jnp.where(chosen, value_of(fmt), value)
  return value


def partition(shape, recipe: Recipe, name: str = "x"
              ) -> _partition.Partition:
  """The partition a recipe decides on (one block for BF16-only recipes).

  Raises a ValueError where a block is too large to count
  (``Partition.check_blocks``). A BF16-only recipe's block is exempt:
  nothing reads its count (its error statistics are 0).
  """
  if recipe.block_shape is None:
    return _partition.Partition.build(shape, (None,) * len(shape))
  part = _partition.Partition.build(shape, recipe.block_shape)
  part.check_blocks(name)
  return part


def select(x: jax.Array, passes: _passes.Passes, recipe: Recipe,
           output: _passes.Output, part: _partition.Partition,
           whole_stats: _passes.BlockStats | None = None
           ) -> tuple[Measurements, jax.Array, MoRStats]:
  """Algorithm 2 on ``x``: (its measurements, the choice, the statistics).

  ``whole_stats``: ``whole`` of the passes' block statistics, where the
  caller has taken them.
  """
  m = Measurements(x, passes, recipe, output, whole_stats)
  # An empty tensor has nothing to quantize: it stays in BF16, and its
  # statistics say no unit and no element took any candidate.
  accepted = [_accept(pred, m, fmt) & ~m.nonfinite & (x.size > 0)
              for fmt, pred in recipe.candidates[:-1]]
  accepted.append(jnp.ones_like(m.nonfinite))
  # The first accepted candidate, by selects rather than an argmax (a
  # reduction, one more kernel); the last, BF16, always is.
  choice = jnp.full(m.nonfinite.shape, len(accepted) - 1, jnp.int32)
  for i in reversed(range(len(accepted) - 1)):
    choice = jnp.where(accepted[i], jnp.int32(i), choice)
  return m, choice, _statistics(m, choice, recipe, part, x.size)


def _statistics(m: Measurements, choice: jax.Array, recipe: Recipe,
                part: _partition.Partition, size: int) -> MoRStats:
  k = len(recipe.candidates)
  onehot = (choice[..., None] == jnp.arange(k)).astype(jnp.float32)
  if recipe.granularity == "block":
    flat = onehot.reshape(-1, k)
    fraction_blocks = jnp.sum(flat, axis=0) / max(flat.shape[0], 1)
    sizes = jnp.asarray(part.block_sizes().ravel(), jnp.float32)
    fraction_elements = sizes @ flat / max(size, 1)
  else:
    fraction_blocks = fraction_elements = onehot * (size > 0)

  w = m.whole
  total = jnp.maximum(w.count, 1)
  error = jnp.stack([jnp.sum(m.quantized(fmt)[1]) / total if fmt.is_fp8
                     else jnp.float32(0) for fmt, _ in recipe.candidates])
  chosen_sum = sum(jnp.sum(jnp.where(choice == i, m.quantized(fmt)[1], 0.0))
                   for i, (fmt, _) in enumerate(recipe.candidates[:-1]))
  return MoRStats(
      fraction_blocks=fraction_blocks,
      fraction_elements=fraction_elements,
      error=error,
      chosen_error=jnp.asarray(chosen_sum, jnp.float32) / total,
      amax=w.amax,
      dynamic_range=_dynamic_range(w.amax, w.min_nonzero),
      nonfinite=w.nonfinite)
