"""The backward-statistics probes of a linen model, kept apart from its params.

The backward statistics are the gradient of zero-valued probes (the
``"mor_grads"`` collection, ``mor_jax.dense``); a train step takes them as an
argument beside the params and differentiates with respect to both. Two
mistakes go unnoticed without a check: handing optax the whole variables
dict (it then "trains" the probes, and a global-norm clip counts the
statistics as gradients), and restoring a checkpoint without a target
(the statistics come back as plain dicts without their candidate names).
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mor_jax import _stats

STATS, GRADS = _stats.STATS, _stats.GRADS

RESTORE_HINT = (
    "Restore with a target, e.g. for orbax "
    "`checkpointer.restore(path, jax.eval_shape(model.init, key, *example_args))`"
    " (docs/checkpointing.md), or restore only 'params' and take the probes "
    "from a fresh `model.init`: "
    "`_, probes = mor_jax.split_variables(model.init(key, *example_args))`.")


def split_variables(variables: Mapping[str, Any]) -> tuple[Any, Any]:
  """``(params, probes)`` of a linen model's variables: what optax trains, and
  the zero probes whose gradient is the backward statistics.

  Hand only ``params`` to the optimizer and pass ``probes`` to the step
  as ``{"params": params, "mor_grads": probes}``; differentiate with respect
  to both. The probes returned are fresh zeros of the stored ones'
  structure, so calling this again on the variables of a later step (or a
  restored checkpoint) refreshes them.

  Args:
    variables: what ``model.init`` returns (or a restored copy of it).

  Returns:
    ``(variables["params"], probes)``; probes ``{}`` for a model without
    MoR layers.

  Raises:
    ValueError: if ``"params"`` is missing, or if the probes were restored
      without a target (plain dicts in place of ``NamedMoRStats``).

  Warns:
    UserWarning: if the probes are not zero (something updated them: an
      optimizer handed the whole variables dict), or if the variables hold
      forward statistics (``"mor_stats"``) but no probes, so a step would
      get no backward statistics.

  Examples:
    >>> import jax, jax.numpy as jnp, optax, mor_jax
    >>> from mor_jax.dense import MoRDense
    >>> model = MoRDense(4)
    >>> x = jnp.ones((8, 16))
    >>> params, probes = mor_jax.split_variables(
    ...     jax.jit(model.init)(jax.random.key(0), x))
    >>> sorted(params), sorted(probes)
    (['bias', 'kernel'], ['dgrad', 'wgrad'])
    >>> opt_state = optax.adam(1e-3).init(params)   # never the probes
  """
  if not isinstance(variables, Mapping) or "params" not in variables:
    found = sorted(variables) if isinstance(variables, Mapping) else type(
        variables).__name__
    raise ValueError("split_variables expects a linen model's variables (what "
                     f"model.init returns), with 'params'; got {found}.")
  params = variables["params"]
  if GRADS not in variables:
    if STATS in variables:
      warnings.warn(
          f"The variables hold '{STATS}' but no '{GRADS}': the model has MoR "
          "layers, and without their probes a step gets no backward "
          f"statistics. Take '{GRADS}' from model.init. " + RESTORE_HINT,
          stacklevel=2)
    return params, {}
  probes = variables[GRADS]
  _check_restored(probes, (GRADS,))
  if not _all_zero(jax.tree.leaves(probes)):
    warnings.warn(
        f"The '{GRADS}' probes are not zero: something updated them, most "
        "likely an optimizer handed the whole variables dict (optax then "
        "trains the probes, and a global-norm clip counts the statistics as "
        "gradients). Hand the optimizer only the params of "
        "mor_jax.split_variables(variables); the probes returned are zeros.",
        stacklevel=2)
  return params, jax.tree.map(jnp.zeros_like, probes)


def _all_zero(leaves: list[Any]) -> bool:
  """Whether every leaf is zero; True under a trace, where values are unknown."""
  try:
    return not any(np.any(np.asarray(a)) for a in leaves)
  except (jax.errors.ConcretizationTypeError,
          jax.errors.TracerArrayConversionError):
    return True


def restored_without_target(tree: Any) -> bool:
  """Whether statistics under ``tree`` are plain dicts, as a checkpoint
  restored without a target gives them."""
  return isinstance(tree, Mapping) and (
      "fraction_blocks" in tree
      or any(restored_without_target(v) for v in tree.values()))


def _check_restored(tree: Any, path: tuple[str, ...]) -> None:
  """Raises where statistics are plain dicts (a restore without a target)."""
  if isinstance(tree, _stats.NamedMoRStats):
    return
  where = "/".join(path)
  if isinstance(tree, Mapping):
    if "fraction_blocks" in tree:
      raise ValueError(
          f"variables[{where!r}] is a plain dict, not a "
          "mor_jax.NamedMoRStats: the checkpoint was restored without a "
          "target, which drops the statistics' candidate names. "
          + RESTORE_HINT)
    for key, value in tree.items():
      _check_restored(value, path + (str(key),))
    return
  raise ValueError(f"variables[{where!r}] is a {type(tree).__name__}, not the "
                   "nested dicts of mor_jax.NamedMoRStats that model.init "
                   "makes. " + RESTORE_HINT)
