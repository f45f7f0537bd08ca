"""MoR statistics of GEMM operands, and their flat form for loggers.

Shared by the linen layers (``mor_jax.dense``) and the NNX layers
(``mor_jax.nnx``), and by ``mor_jax.dot_general_with_stats``.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from mor_jax import _mor
from mor_jax import _recipes

# The layers' two collections: forward statistics, and the zero probes whose
# gradient carries the backward ones.
STATS = "mor_stats"
GRADS = "mor_grads"


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=[f.name for f in dataclasses.fields(_mor.MoRStats)],
    meta_fields=["names"])
@dataclasses.dataclass(frozen=True)
class NamedMoRStats(_mor.MoRStats):
  """``MoRStats`` of one GEMM operand, float32 throughout, with its candidates' names.

  Every leaf is float32 (``nonfinite`` is 0.0 or 1.0) so that the backward
  statistics can be the cotangent of float32 probes; ``names`` is static
  pytree metadata, so the statistics pass through jit, grad and scan.

  Attributes:
    names: the recipe's candidate names, indexing ``fraction_blocks``,
      ``fraction_elements`` and ``error``; e.g. ("E4M3", "BF16").
  """

  names: tuple[str, ...] = ()

  @classmethod
  def from_result(cls, r: _mor.MoRResult) -> NamedMoRStats:
    return cls.of(r.stats, r.names)

  @classmethod
  def of(cls, stats: _mor.MoRStats, names: tuple[str, ...]) -> NamedMoRStats:
    s = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), stats)
    return cls(**{f.name: getattr(s, f.name)
                  for f in dataclasses.fields(_mor.MoRStats)}, names=names)

  @classmethod
  def zeros(cls, recipe: _recipes.Recipe) -> NamedMoRStats:
    k = len(recipe.candidates)
    vec, scalar = jnp.zeros((k,), jnp.float32), jnp.zeros((), jnp.float32)
    return cls(fraction_blocks=vec, fraction_elements=vec, error=vec,
               chosen_error=scalar, amax=scalar, dynamic_range=scalar,
               nonfinite=scalar, names=recipe.names)


def _state_dict(stats: NamedMoRStats) -> dict[str, jax.Array]:
  return {f.name: getattr(stats, f.name)
          for f in dataclasses.fields(_mor.MoRStats)}


def _from_state_dict(target: NamedMoRStats, state: dict) -> NamedMoRStats:
  # The names are the target's, as when a pytree is restored onto a target.
  return dataclasses.replace(target, **{
      name: flax.serialization.from_state_dict(value, state[name], name)
      for name, value in _state_dict(target).items()})


# flax.serialization (``to_bytes``, ``to_state_dict``) handles a model's
# whole variables, statistics included.
flax.serialization.register_serialization_state(
    NamedMoRStats, _state_dict, _from_state_dict)


def flatten_stats(mor_stats: Mapping | None = None,
                  mor_grads: Mapping | None = None) -> dict[str, jax.Array]:
  """The statistics as one flat ``{name: scalar}`` dict, ready for a logger.

  Keys are ``"<module path>/<gemm>/<role>/<metric>"``, e.g.
  ``"Block_0/qkv/fprop/activation/fraction_e4m3"``, with gemm/role one of
  fprop/activation, fprop/weight (from ``mor_stats``), dgrad/gradient,
  dgrad/weight, wgrad/activation, wgrad/gradient (from the gradient of
  ``mor_grads``). Metrics, for candidate names lowercased (e4m3, bf16, ...):

  - ``fraction_<name>``: share of decision units (the tensor, or blocks) in
    that representation; ``elements_<name>``: share of elements;
  - ``chosen_error``: mean relative error of the tensor as quantized (0
    when it stayed in BF16); ``error_<name>``: the error had every unit
    taken that FP8 candidate;
  - ``amax``, ``dynamic_range`` (in bits, log2 of amax / min|x != 0|);
    ``nonfinite`` (1.0 if a NaN or Inf).

  Statistics with leading axes (layers stacked by ``nn.scan``, or a
  ``vmap``) are split: ``"<module path>/<i>/<gemm>/<role>/<metric>"`` for
  layer i (indices joined by "/" for several axes). Pure JAX: works inside
  jit.

  Args:
    mor_stats: the ``"mor_stats"`` collection (or any nesting of it).
    mor_grads: the gradient with respect to the ``"mor_grads"`` collection.

  Returns:
    A dict of 0-d float32 arrays.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from mor_jax.dense import MoRDense, flatten_stats
    >>> layer = MoRDense(4)
    >>> v = layer.init(jax.random.key(0), jnp.ones((2, 8)))
    >>> _, state = layer.apply(v, jnp.ones((2, 8)), mutable=["mor_stats"])
    >>> m = flatten_stats(state["mor_stats"])
    >>> float(m["fprop/activation/fraction_e4m3"]), float(m["fprop/activation/chosen_error"])
    (1.0, 0.0)
  """
  out = {}
  for path, stats in walk_collections("flatten_stats", mor_stats, mor_grads):
    _add_metrics(out, path, stats)
  return out


def walk_collections(caller: str, mor_stats, mor_grads):
  """Yields (path, stats) for every NamedMoRStats in the two collections.

  A collection's own name at the top is the variables (or apply's mutable
  state) passed whole: its paths would all start with it, so it is refused.
  """
  for arg, tree in (("mor_stats", mor_stats), ("mor_grads", mor_grads)):
    if tree is None:
      continue
    held = [name for name in (STATS, GRADS)
            if isinstance(tree, Mapping) and name in tree]
    if held:
      raise ValueError(
          f"{caller}: {arg} holds the collection {held[0]!r} at its top: "
          f"pass the collection itself, e.g. state[{STATS!r}] of "
          f"apply's mutable state and grads[{GRADS!r}] of the gradient, not "
          "the variables that hold it.")
    yield from _walk(tree, (), caller)


def _walk(tree, path: tuple[str, ...], caller: str):
  if isinstance(tree, NamedMoRStats):
    yield path, tree
  elif isinstance(tree, Mapping):
    for key, value in tree.items():
      yield from _walk(value, path + (str(key),), caller)
  else:
    raise TypeError(
        f"{caller} expects the {STATS!r} collection and the gradient of the "
        f"{GRADS!r} collection (nested dicts of NamedMoRStats); found "
        f"{type(tree).__name__} at {'/'.join(path)!r}.")


def _add_metrics(out: dict, path: tuple[str, ...], s: NamedMoRStats) -> None:
  if len(path) < 2:
    raise ValueError(f"flatten_stats: statistics at {'/'.join(path)!r} lack "
                     "the <gemm>/<role> keys that the layers write.")
  names = [n.lower() for n in s.names]
  metrics = {f"fraction_{n}": s.fraction_blocks[..., i]
             for i, n in enumerate(names)}
  metrics.update({f"elements_{n}": s.fraction_elements[..., i]
                  for i, n in enumerate(names)})
  metrics["chosen_error"] = s.chosen_error
  # The last candidate is the BF16 fallback, whose error is 0 by definition.
  metrics.update({f"error_{n}": s.error[..., i]
                  for i, n in enumerate(names[:-1])})
  metrics.update(amax=s.amax, dynamic_range=s.dynamic_range,
                 nonfinite=s.nonfinite)
  module, leaf = path[:-2], path[-2:]
  for idx in np.ndindex(*s.amax.shape):
    prefix = "/".join(module + tuple(map(str, idx)) + leaf)
    for metric, value in metrics.items():
      out[f"{prefix}/{metric}"] = value[idx]
