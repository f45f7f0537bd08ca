"""split_variables and the warnings around the backward-statistics probes."""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import optax
import pytest

import mor_jax
from mor_jax.dense import MoRDense

X = jnp.ones((8, 16))
MODEL = MoRDense(4)


@pytest.fixture(scope="module")
def variables():
  return jax.jit(MODEL.init)(jax.random.key(0), X)  # Eager init is slow.


def _plain(tree):
  """The statistics as plain dicts, as a restore without a target gives them."""
  return jax.tree.map(
      lambda s: {k: v for k, v in vars(s).items() if k != "names"}, tree,
      is_leaf=lambda s: isinstance(s, mor_jax.NamedMoRStats))


def test_split_gives_params_and_zero_probes(variables):
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    params, probes = mor_jax.split_variables(variables)
  assert params is variables["params"]
  assert (jax.tree.structure(probes)
          == jax.tree.structure(variables["mor_grads"]))
  assert all(not jnp.any(a) for a in jax.tree.leaves(probes))
  assert mor_jax.split_variables({"params": {"w": 1.0}}) == ({"w": 1.0}, {})


def test_probes_trained_by_optax_warn_and_come_back_zero(variables):
  # The mistake: the whole variables dict handed to the optimizer.
  tx = optax.sgd(1.0)
  grads = jax.tree.map(jnp.ones_like, variables)
  trained = optax.apply_updates(variables, tx.update(grads, tx.init(variables))[0])
  with pytest.warns(UserWarning, match="optax then trains the probes"):
    _, probes = mor_jax.split_variables(trained)
  assert all(not jnp.any(a) for a in jax.tree.leaves(probes))
  # Under a trace the values are unknown: no warning, zeros all the same.
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    jax.jit(mor_jax.split_variables)(trained)


def test_restore_without_target_names_the_fix(variables):
  plain = {**variables, "mor_grads": _plain(variables["mor_grads"])}
  with pytest.raises(ValueError, match=r"'mor_grads/dgrad/gradient'.*restored "
                     r"without a target.*jax.eval_shape\(model.init"):
    mor_jax.split_variables(plain)
  with pytest.raises(ValueError, match="with 'params'"):
    mor_jax.split_variables(variables["params"])


def test_missing_probes_warn(variables):
  no_probes = {k: v for k, v in variables.items() if k != "mor_grads"}
  with pytest.warns(UserWarning, match="no backward statistics"):
    mor_jax.split_variables(no_probes)
  # A step that collects statistics but forgot the probes; the warning comes
  # at trace time (jitted: eager MoR is slow on a CPU).
  with_stats = jax.jit(functools.partial(MODEL.apply, mutable=["mor_stats"]))
  with pytest.warns(UserWarning, match="got no 'mor_grads' probes"):
    with_stats(no_probes, X)
  with warnings.catch_warnings():  # Inference, or a step with the probes.
    warnings.simplefilter("error")
    jax.jit(MODEL.apply)(no_probes, X)
    with_stats(variables, X)
