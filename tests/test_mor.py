"""MoR selection against the NumPy reference, transforms, recipes and errors.

The numerics tests take an implementation (``tests.cases.IMPLS``) and run
every call under it, checked (``cases.Impl.run``): one suite for XLA and
for the Pallas kernels.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mor_jax
from tests import cases
from tests import data
from tests import reference as ref

RNG = np.random.default_rng(0)


@pytest.mark.parametrize("recipe", list(cases.RECIPES))
@pytest.mark.parametrize("impl", cases.IMPLS)
def test_matches_reference(impl, recipe):
  """Every tensor of cases.TENSORS, in one compiled function."""
  recipe, desc = cases.RECIPES[recipe]
  xs = {name: make() for name, make in cases.TENSORS.items()}
  got = impl.run(lambda *vs: [mor_jax.mor_quantize(v, recipe) for v in vs],
                 *xs.values())
  cases.check_each(
      (name, functools.partial(cases.check_mor, r, x, desc))
      for (name, x), r in zip(xs.items(), got))


def _choices(recipes):
  """x -> each recipe's choice: one traced function for many recipes."""
  return lambda v: [mor_jax.mor_quantize(v, r).choice for r in recipes]


@pytest.mark.parametrize("impl", cases.IMPLS)
def test_crafted_decisions(impl):
  """The decisions the spec predicts on crafted tensors."""
  tensor_level = [mor_jax.TensorLevelMoR(block_shape=b)
                  for b in ((None, None), (1, None), (None, 1), (128, 128))]
  mixed = cases.mixed_blocks()

  def fn(gauss, out, mix):
    return (_choices(tensor_level)(gauss), _choices(tensor_level[:3])(out),
            *_choices([mor_jax.SubTensorMoR(mode="three_way"),
                       mor_jax.SubTensorMoR()])(mix),
            mor_jax.mor_quantize(mix, mor_jax.SubTensorMoR()))

  gauss, out, three, two, r = impl.run(fn, cases.gaussian(),
                                       cases.outlier_columns(), mixed)
  assert [int(c) for c in gauss] == [0] * 4
  # Outlier channels: BF16 per-tensor and per-row, E4M3 per-column.
  assert [int(c) for c in out] == [1, 1, 0]
  # Mixed blocks: E4M3 / E5M2 / BF16 side by side; the zero block is E4M3.
  np.testing.assert_array_equal(three, [[0, 1], [0, 2]])
  np.testing.assert_array_equal(two, [[0, 1], [0, 1]])
  np.testing.assert_array_equal(np.asarray(r.value)[128:, :128], 0.0)
  np.testing.assert_array_equal(np.asarray(r.value)[:128, 128:],
                                mixed[:128, 128:])  # BF16: unchanged


@pytest.mark.parametrize("impl", cases.IMPLS)
def test_threshold_just_above_and_below(impl):
  x = cases.student_t()
  e = ref.mor(x, [("E4M3", ("error_below", 1.0))], "tensor", (1, None),
              "gam")[2][0]
  factors, wants = (1 + 1e-4, 1 - 1e-4), [0, 1]
  got = impl.run(_choices([mor_jax.TensorLevelMoR(
      threshold=float(e * f), block_shape=(1, None)) for f in factors]), x)
  assert [int(c) for c in got] == wants, e


@pytest.mark.parametrize("impl", cases.IMPLS)
def test_non_finite_falls_back_unchanged(impl):
  x = cases.gaussian((256, 256))
  x[3, 5], x[200, 7] = np.nan, -np.inf
  recipes = (mor_jax.TensorLevelMoR(), mor_jax.SubTensorMoR(mode="three_way"),
             mor_jax.Static(mor_jax.E5M2, block_shape=(128, 128)))
  r, *got = impl.run(
      lambda v: [mor_jax.mor_quantize(v, rc) for rc in recipes], x)
  assert int(r.choice) == 1 and bool(r.stats.nonfinite)
  np.testing.assert_array_equal(np.asarray(r.value), x)  # NaN == NaN here
  assert np.isfinite(float(r.stats.error[0])) and float(r.stats.amax) > 0
  for recipe, r in zip(recipes[1:], got):
    k = len(recipe.candidates) - 1
    cases.check_mor(r, x, (
        [("E4M3", ("error_not_above", "E5M2")), ("E5M2", ("dynamic_range",))]
        if k == 2 else [("E5M2", ("always",))], "block", (128, 128),
        recipe.scaling))
    np.testing.assert_array_equal(np.asarray(r.choice)[0, 0], k)
    np.testing.assert_array_equal(np.asarray(r.choice)[1, 0], k)
    np.testing.assert_array_equal(np.asarray(r.value)[:128, :128],
                                  x[:128, :128])
    assert np.isfinite(np.asarray(r.value)[:, 128:]).all()


@pytest.mark.parametrize("impl", cases.IMPLS)
def test_stats(impl):
  x = cases.mixed_blocks()[:200, :]  # edge blocks of 72 rows
  r, zero = impl.run(lambda v, z: (
      mor_jax.mor_quantize(v, mor_jax.SubTensorMoR(mode="three_way")),
      mor_jax.mor_quantize(z, mor_jax.TensorLevelMoR())), x, jnp.zeros((4, 4)))
  choice = np.asarray(r.choice)
  np.testing.assert_array_equal(choice, [[0, 1], [0, 2]])
  np.testing.assert_allclose(np.asarray(r.stats.fraction_blocks),
                             [0.5, 0.25, 0.25])
  np.testing.assert_allclose(np.asarray(r.stats.fraction_elements),
                             np.array([128 * 128 + 72 * 128, 128 * 128,
                                       72 * 128]) / x.size)
  a = np.abs(x[x != 0])
  np.testing.assert_allclose(float(r.stats.amax), a.max())
  np.testing.assert_allclose(float(r.stats.dynamic_range),
                             np.log2(np.float64(a.max()) / a.min()), rtol=1e-6)
  assert not bool(r.stats.nonfinite)
  assert int(zero.choice) == 0 and float(zero.stats.dynamic_range) == 0.0
  np.testing.assert_array_equal(np.asarray(zero.value), 0.0)


@pytest.mark.parametrize("impl", cases.IMPLS)
def test_bf16_keeps_the_compute_dtype(impl):
  x = cases.outlier_columns()
  per_tensor = mor_jax.TensorLevelMoR(block_shape=(None, None))
  r32, r16, r = impl.run(lambda a, b: (
      mor_jax.mor_quantize(a, per_tensor), mor_jax.mor_quantize(b, per_tensor),
      mor_jax.mor_quantize(a, mor_jax.NoQuant())), x, x.astype(jnp.bfloat16))
  for dtype, rd in ((np.float32, r32), (jnp.bfloat16, r16)):
    assert int(rd.choice) == 1 and rd.value.dtype == dtype
    np.testing.assert_array_equal(np.asarray(rd.value), x.astype(dtype))
  assert r.choice.shape == () and r.names == ("BF16",)
  np.testing.assert_array_equal(np.asarray(r.value), x)


# Transforms: jit, vmap, grad, scan; no host sync, no value-dependent Python.


@pytest.mark.parametrize("impl", cases.IMPLS)
def test_jit_vmap_grad_scan(impl):
  recipe, desc = cases.RECIPES["tensor_per_row"]
  xs = np.stack([cases.gaussian((64, 32), seed=s) for s in range(3)] +
                [cases.outlier_columns((64, 32))])
  w = RNG.standard_normal(xs.shape[1:]).astype(np.float32)

  def f(v):
    r = mor_jax.mor_quantize(v, recipe)
    return jnp.sum(r.value * w), r

  def step(carry, x):
    r = mor_jax.mor_quantize(x, mor_jax.SubTensorMoR(block_shape=(32, 32)))
    return carry + r.stats.fraction_blocks, r.choice

  # Under jit(vmap(value_and_grad)), and one by one under jit(value_and_grad).
  grad = jax.value_and_grad(f, has_aux=True)
  (losses, batched), grads = impl.run(jax.vmap(grad), xs)
  ones = impl.run(lambda v: [grad(v[i]) for i in range(len(xs))], xs)
  for i, ((loss, one), g) in enumerate(ones):
    want_value, want_choice, want_err = ref.mor(xs[i], *desc)
    assert int(batched.choice[i]) == int(one.choice) == int(want_choice)
    data.assert_within_ulp(np.asarray(one.value), want_value)
    np.testing.assert_allclose(np.asarray(one.stats.error), want_err,
                               rtol=1e-5, atol=2e-7)
    np.testing.assert_array_equal(np.asarray(batched.value[i]),
                                  np.asarray(one.value))
    np.testing.assert_allclose(np.asarray(batched.stats.error[i]),
                               np.asarray(one.stats.error), rtol=1e-6)
    # vmap may sum in another order.
    np.testing.assert_allclose(float(losses[i]), float(loss), rtol=1e-5)
    # Straight-through: the gradient of sum(value * w) is w.
    np.testing.assert_array_equal(np.asarray(g), w)
    np.testing.assert_array_equal(np.asarray(grads[i]), w)
  np.testing.assert_array_equal(np.asarray(batched.choice), [0, 0, 0, 1])

  total, choices = impl.run(lambda v: jax.lax.scan(step, jnp.zeros(2), v), xs)
  assert choices.shape == (4, 2, 1)
  np.testing.assert_allclose(float(total.sum()), 4.0)


@pytest.mark.parametrize("impl", cases.IMPLS)
def test_traces_without_values_or_callbacks(impl):
  recipe = mor_jax.SubTensorMoR(mode="three_way")
  fn = lambda v: mor_jax.mor_quantize(v, recipe)  # noqa: E731
  spec = jax.ShapeDtypeStruct((256, 384), jnp.bfloat16)
  # eval_shape would fail on any Python branch on an array value.
  out = jax.eval_shape(impl.wrap(fn), spec)
  assert out.choice.shape == (2, 3) and out.value.dtype == jnp.bfloat16
  traced = impl.trace(fn, jnp.zeros((256, 384), jnp.bfloat16))
  assert "callback" not in str(traced.jaxpr)


# The generic form.


@dataclasses.dataclass(frozen=True)
class AmaxBelow:
  """A user-defined metric: accept units whose amax is below a bound."""

  bound: float

  def __call__(self, m: mor_jax.Measurements, fmt):
    del fmt
    return m.amax < self.bound


@pytest.mark.parametrize("impl", cases.IMPLS)
def test_generic_recipe_with_user_candidate_and_metric(impl):
  x = cases.gaussian((128, 128))
  recipe = mor_jax.Recipe(
      candidates=((mor_jax.E4M3, mor_jax.ErrorBelow(0.001)),
                  (mor_jax.E5M2, AmaxBelow(100.0)),
                  (mor_jax.BF16, None)),
      granularity="block", block_shape=(64, 128))
  r = impl.run(lambda v: mor_jax.mor_quantize(v, recipe), x)
  assert r.names == ("E4M3", "E5M2", "BF16")
  np.testing.assert_array_equal(np.asarray(r.choice), [[1], [1]])
  want = ref.fake_quantize(x, "E5M2", (64, 128), "gam")
  data.assert_within_ulp(np.asarray(r.value), want)
  # TensorLevelMoR is the generic form with these candidates.
  t = mor_jax.TensorLevelMoR(threshold=0.03)
  assert isinstance(t, mor_jax.Recipe)
  assert t.candidates == ((mor_jax.E4M3, mor_jax.ErrorBelow(0.03)),
                          (mor_jax.BF16, None))
  assert hash(t) == hash(mor_jax.TensorLevelMoR(threshold=0.03))


@pytest.mark.parametrize("build,match", [
    (lambda: mor_jax.TensorLevelMoR(threshold=0), "threshold must be"),
    (lambda: mor_jax.TensorLevelMoR(threshold=float("nan")), "threshold must be"),
    (lambda: mor_jax.TensorLevelMoR(block_shape=(0, None)),
     r"block_shape\[0\] must be a positive"),
    (lambda: mor_jax.TensorLevelMoR(scaling="fp8"), "scaling must be one of"),
    (lambda: mor_jax.SubTensorMoR(mode="four_way"), "mode must be one of"),
    (lambda: mor_jax.SubTensorMoR(group_shape=(100, None)),
     r"group_shape\[0\]=100 is not a multiple"),
    (lambda: mor_jax.Static(mor_jax.BF16), "fmt must be mor_jax.E4M3"),
    (lambda: mor_jax.Recipe(candidates=((mor_jax.E4M3, mor_jax.Always()),)),
     "must end with"),
    (lambda: mor_jax.Recipe(candidates=((mor_jax.E4M3, None),
                                        (mor_jax.BF16, None))),
     r"candidates\[0\]\[1\] must be a predicate"),
    (lambda: mor_jax.Recipe(candidates=((mor_jax.BF16, None),),
                            granularity="row"), "granularity must be one of"),
    (lambda: mor_jax.Recipe(candidates=5), "candidates must be a sequence"),
])
def test_bad_recipes_fail_where_built(build, match):
  with pytest.raises(ValueError, match=match):
    build()


def test_predicate_must_return_bools():
  recipe = mor_jax.Recipe(candidates=((mor_jax.E4M3, lambda m, f: m.error(f)),
                                      (mor_jax.BF16, None)))
  with pytest.raises(TypeError, match="must return a bool array"):
    mor_jax.mor_quantize(jnp.ones((4, 4)), recipe)


def test_bad_calls():
  with pytest.raises(ValueError, match="has 2 entries but x has 3"):
    mor_jax.mor_quantize(jnp.ones((2, 3, 4)), mor_jax.TensorLevelMoR())
  with pytest.raises(TypeError, match="recipe must be a mor_jax.Recipe"):
    mor_jax.mor_quantize(jnp.ones((2, 3)), "tensor")
  with pytest.raises(TypeError, match="floating-point"):
    mor_jax.mor_quantize(jnp.ones((2, 3), jnp.int32), mor_jax.NoQuant())
  with pytest.raises(dataclasses.FrozenInstanceError):
    mor_jax.TensorLevelMoR().threshold = 0.1  # type: ignore[misc]
