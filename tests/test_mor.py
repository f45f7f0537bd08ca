"""MoR selection against the NumPy reference, transforms, recipes and errors."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mor_jax
from tests import data
from tests import reference as ref

RNG = np.random.default_rng(0)


def _gaussian(shape=(256, 256), dtype=np.float32, seed=0):
  return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _outlier_columns(shape=(256, 256)):
  x = _gaussian(shape, seed=1)
  x[:, ::32] *= 1e4  # a few channels 4 orders of magnitude larger
  return x


def _student_t(shape=(256, 256)):
  return np.random.default_rng(2).standard_t(3, shape).astype(np.float32)


def _mixed_blocks():
  """Four 128x128 blocks: Gaussian; magnitudes 1e-4..1e4; zeros; 1e-12..1e12."""
  x = _gaussian((256, 256), seed=3)
  rng = np.random.default_rng(4)
  x[:128, 128:] = np.sign(x[:128, 128:]) * 10 ** rng.uniform(-4, 4, (128, 128))
  x[128:, :128] = 0.0
  x[128:, 128:] *= np.geomspace(1e-12, 1e12, 128, dtype=np.float32)
  return x


RECIPES = {
    # name: (recipe, reference description)
    "tensor_per_tensor": (mor_jax.TensorLevelMoR(block_shape=(None, None)),
                          ([("E4M3", ("error_below", 0.045))], "tensor",
                           (None, None), "gam")),
    "tensor_per_row": (mor_jax.TensorLevelMoR(block_shape=(1, None)),
                       ([("E4M3", ("error_below", 0.045))], "tensor",
                        (1, None), "gam")),
    "tensor_per_col_fp32": (
        mor_jax.TensorLevelMoR(block_shape=(None, 1), scaling="fp32"),
        ([("E4M3", ("error_below", 0.045))], "tensor", (None, 1), "fp32")),
    "tensor_128": (mor_jax.TensorLevelMoR(),
                   ([("E4M3", ("error_below", 0.045))], "tensor",
                    (128, 128), "gam")),
    "two_way": (mor_jax.SubTensorMoR(),
                ([("E4M3", ("error_not_above", "E5M2"))], "block",
                 (128, 128), "gam")),
    "three_way": (mor_jax.SubTensorMoR(mode="three_way", block_shape=(64, 64)),
                  ([("E4M3", ("error_not_above", "E5M2")),
                    ("E5M2", ("dynamic_range",))], "block", (64, 64), "gam")),
    "static_e4m3": (mor_jax.Static(mor_jax.E4M3),
                    ([("E4M3", ("always",))], "block", (None, None), "fp32")),
    "static_mx": (mor_jax.Static(mor_jax.E4M3, block_shape=(1, 32),
                                 scaling="e8m0"),
                  ([("E4M3", ("always",))], "block", (1, 32), "e8m0")),
    "noquant": (mor_jax.NoQuant(), ([], "tensor", None, "gam")),
}
TENSORS = {
    "gaussian": _gaussian,
    "outlier_columns": _outlier_columns,
    "student_t": _student_t,
    "mixed_blocks": _mixed_blocks,
}


def _check_against_reference(x, recipe, desc):
  cands, granularity, block_shape, scaling = desc
  r = mor_jax.mor_quantize(x, recipe)
  want_value, want_choice, want_err = ref.mor(x, cands, granularity,
                                              block_shape, scaling)
  np.testing.assert_array_equal(np.asarray(r.choice), want_choice)
  assert r.choice.dtype == jnp.int32
  assert r.value.dtype == x.dtype
  data.assert_within_ulp(np.asarray(r.value), want_value.astype(x.dtype))
  np.testing.assert_allclose(np.asarray(r.stats.error), want_err, rtol=1e-5,
                             atol=2e-7)
  np.testing.assert_allclose(
      float(r.stats.chosen_error),
      ref.relative_error(x, np.asarray(r.value, np.float32)), rtol=1e-5,
      atol=2e-7)
  return r


@pytest.mark.parametrize("tensor", list(TENSORS))
@pytest.mark.parametrize("recipe", list(RECIPES))
def test_matches_reference(tensor, recipe):
  _check_against_reference(TENSORS[tensor](), *RECIPES[recipe])


def test_crafted_decisions():
  """The decisions the spec predicts on crafted tensors."""
  choose = lambda x, recipe: np.asarray(  # noqa: E731
      mor_jax.mor_quantize(x, recipe).choice)
  gauss = _gaussian()
  for block in ((None, None), (1, None), (None, 1), (128, 128)):
    assert choose(gauss, mor_jax.TensorLevelMoR(block_shape=block)) == 0
  # Outlier channels: BF16 per-tensor and per-row, E4M3 per-column.
  out = _outlier_columns()
  assert choose(out, mor_jax.TensorLevelMoR(block_shape=(None, None))) == 1
  assert choose(out, mor_jax.TensorLevelMoR(block_shape=(1, None))) == 1
  assert choose(out, mor_jax.TensorLevelMoR(block_shape=(None, 1))) == 0
  # Mixed blocks: E4M3 / E5M2 / BF16 side by side; the zero block is E4M3.
  mixed = _mixed_blocks()
  np.testing.assert_array_equal(
      choose(mixed, mor_jax.SubTensorMoR(mode="three_way")), [[0, 1], [0, 2]])
  np.testing.assert_array_equal(
      choose(mixed, mor_jax.SubTensorMoR()), [[0, 1], [0, 1]])
  r = mor_jax.mor_quantize(mixed, mor_jax.SubTensorMoR())
  np.testing.assert_array_equal(np.asarray(r.value)[128:, :128], 0.0)
  np.testing.assert_array_equal(np.asarray(r.value)[:128, 128:],
                                mixed[:128, 128:])  # BF16: unchanged


def test_threshold_just_above_and_below():
  x = _student_t()
  e = ref.mor(x, [("E4M3", ("error_below", 1.0))], "tensor", (1, None),
              "gam")[2][0]
  for factor, want in ((1 + 1e-4, 0), (1 - 1e-4, 1)):
    r = mor_jax.mor_quantize(x, mor_jax.TensorLevelMoR(
        threshold=float(e * factor), block_shape=(1, None)))
    assert int(r.choice) == want, (e, factor)


def test_non_finite_falls_back_unchanged():
  x = _gaussian((256, 256))
  x[3, 5], x[200, 7] = np.nan, -np.inf
  r = mor_jax.mor_quantize(x, mor_jax.TensorLevelMoR())
  assert int(r.choice) == 1 and bool(r.stats.nonfinite)
  np.testing.assert_array_equal(np.asarray(r.value), x)  # NaN == NaN here
  assert np.isfinite(float(r.stats.error[0])) and float(r.stats.amax) > 0
  for recipe in (mor_jax.SubTensorMoR(mode="three_way"),
                 mor_jax.Static(mor_jax.E5M2, block_shape=(128, 128))):
    r = mor_jax.mor_quantize(x, recipe)
    k = len(recipe.candidates) - 1
    np.testing.assert_array_equal(np.asarray(r.choice)[0, 0], k)
    np.testing.assert_array_equal(np.asarray(r.choice)[1, 0], k)
    np.testing.assert_array_equal(np.asarray(r.value)[:128, :128],
                                  x[:128, :128])
    assert np.isfinite(np.asarray(r.value)[:, 128:]).all()
    _check_against_reference(x, recipe, (
        [("E4M3", ("error_not_above", "E5M2")), ("E5M2", ("dynamic_range",))]
        if k == 2 else [("E5M2", ("always",))], "block", (128, 128),
        recipe.scaling))


def test_stats():
  x = _mixed_blocks()[:200, :]  # edge blocks of 72 rows
  r = mor_jax.mor_quantize(x, mor_jax.SubTensorMoR(mode="three_way"))
  choice = np.asarray(r.choice)
  np.testing.assert_array_equal(choice, [[0, 1], [0, 2]])
  np.testing.assert_allclose(np.asarray(r.stats.fraction_blocks),
                             [0.5, 0.25, 0.25])
  np.testing.assert_allclose(np.asarray(r.stats.fraction_elements),
                             np.array([128 * 128 + 72 * 128, 128 * 128,
                                       72 * 128]) / x.size)
  a = np.abs(x[x != 0])
  np.testing.assert_allclose(float(r.stats.amax), a.max())
  np.testing.assert_allclose(float(r.stats.dynamic_range), a.max() / a.min(),
                             rtol=1e-6)
  assert not bool(r.stats.nonfinite)
  zero = mor_jax.mor_quantize(jnp.zeros((4, 4)), mor_jax.TensorLevelMoR())
  assert int(zero.choice) == 0 and float(zero.stats.dynamic_range) == 0.0
  np.testing.assert_array_equal(np.asarray(zero.value), 0.0)


def test_bf16_keeps_the_compute_dtype():
  x = _outlier_columns()
  for dtype in (np.float32, jnp.bfloat16):
    r = mor_jax.mor_quantize(x.astype(dtype), mor_jax.TensorLevelMoR(
        block_shape=(None, None)))
    assert int(r.choice) == 1 and r.value.dtype == dtype
    np.testing.assert_array_equal(np.asarray(r.value), x.astype(dtype))
  r = mor_jax.mor_quantize(x, mor_jax.NoQuant())
  assert r.choice.shape == () and r.names == ("BF16",)
  np.testing.assert_array_equal(np.asarray(r.value), x)


# Transforms: jit, vmap, grad, scan; no host sync, no value-dependent Python.


def test_jit_vmap_grad_scan():
  recipe = mor_jax.TensorLevelMoR(block_shape=(1, None))
  xs = np.stack([_gaussian((64, 32), seed=s) for s in range(3)] +
                [_outlier_columns((64, 32))])
  batched = jax.jit(jax.vmap(lambda v: mor_jax.mor_quantize(v, recipe)))(xs)
  for i, x in enumerate(xs):
    one = mor_jax.mor_quantize(x, recipe)
    assert int(batched.choice[i]) == int(one.choice)
    np.testing.assert_array_equal(np.asarray(batched.value[i]),
                                  np.asarray(one.value))
  np.testing.assert_array_equal(np.asarray(batched.choice), [0, 0, 0, 1])

  w = RNG.standard_normal(xs.shape[1:]).astype(np.float32)
  loss = lambda v: jnp.sum(mor_jax.mor_quantize(v, recipe).value * w)  # noqa: E731
  np.testing.assert_array_equal(np.asarray(jax.jit(jax.grad(loss))(xs[0])), w)

  def step(carry, x):
    r = mor_jax.mor_quantize(x, mor_jax.SubTensorMoR(block_shape=(32, 32)))
    return carry + r.stats.fraction_blocks, r.choice

  total, choices = jax.lax.scan(step, jnp.zeros(2), xs)
  assert choices.shape == (4, 2, 1)
  np.testing.assert_allclose(float(total.sum()), 4.0)


def test_traces_without_values_or_callbacks():
  recipe = mor_jax.SubTensorMoR(mode="three_way")
  spec = jax.ShapeDtypeStruct((256, 384), jnp.bfloat16)
  # eval_shape would fail on any Python branch on an array value.
  out = jax.eval_shape(lambda v: mor_jax.mor_quantize(v, recipe), spec)
  assert out.choice.shape == (2, 3) and out.value.dtype == jnp.bfloat16
  jaxpr = str(jax.make_jaxpr(lambda v: mor_jax.mor_quantize(v, recipe))(
      jnp.zeros((256, 384), jnp.bfloat16)))
  assert "callback" not in jaxpr


# The generic form.


@dataclasses.dataclass(frozen=True)
class AmaxBelow:
  """A user-defined metric: accept units whose amax is below a bound."""

  bound: float

  def __call__(self, m: mor_jax.Measurements, fmt):
    del fmt
    return m.amax < self.bound


def test_generic_recipe_with_user_candidate_and_metric():
  x = _gaussian((128, 128))
  recipe = mor_jax.Recipe(
      candidates=((mor_jax.E4M3, mor_jax.ErrorBelow(0.001)),
                  (mor_jax.E5M2, AmaxBelow(100.0)),
                  (mor_jax.BF16, None)),
      granularity="block", block_shape=(64, 128))
  r = mor_jax.mor_quantize(x, recipe)
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
