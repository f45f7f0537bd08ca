"""mor_jax.dot_general: the three GEMMs and six quantizations against NumPy.

The reference (``tests/dot_reference.py``) is written from docs/numerics.md section 6:
each operand's 2-D view [rows, K], ``tests/reference.py``'s MoR on the view,
then float64 einsums of the quantized operands.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mor_jax
from tests import cases
from tests import dot_reference

TENSOR = mor_jax.TensorLevelMoR(block_shape=(1, None))


def _outlier_features(shape, seed, axis=-1, scale=1e4):
  """Gaussian with 1 in 16 slices along ``axis`` scaled by ``scale``.

  With scale 1e4, one scale per slice across ``axis`` holds it in E4M3 (error
  about 2.3%) and one scale per slice along it does not (about 9.5%).
  """
  rng = np.random.default_rng(seed)
  x = rng.standard_normal(shape).astype(np.float32)
  idx = [slice(None)] * len(shape)
  idx[axis] = slice(0, None, 16)
  x[tuple(idx)] *= np.float32(scale)
  return x


def _gaussian(shape, seed):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


LAYOUTS = {
    # name: (lhs shape, rhs shape, dimension numbers)
    "dense_3d": ((4, 8, 64), (64, 24), (((2,), (0,)), ((), ()))),
    "transposed_operands": ((64, 24), (16, 64), (((0,), (1,)), ((), ()))),
    "batch_and_two_contracting": ((8, 3, 16, 4), (4, 12, 3, 8),
                                  (((0, 3), (3, 0)), ((1,), (2,)))),
    # Attention: scores "bqhd,bkhd->bhqk" and context "bhqk,bkhd->bhqd".
    "attention_scores": ((2, 16, 3, 8), (2, 16, 3, 8),
                         (((3,), (3,)), ((0, 2), (0, 2)))),
    "attention_context": ((2, 3, 16, 16), (2, 16, 3, 8),
                          (((3,), (1,)), ((0, 1), (0, 2)))),
}
POLICIES = {
    "default": mor_jax.Policy(),
    "mixed": mor_jax.Policy(
        activation=mor_jax.SubTensorMoR(block_shape=(8, 8)),
        weight=mor_jax.SubTensorMoR(mode="three_way", block_shape=(4, 16)),
        gradient=mor_jax.Static(mor_jax.E5M2, block_shape=(1, None),
                                scaling="e8m0")),
    "static_tiles": mor_jax.Policy.uniform(
        mor_jax.Static(mor_jax.E4M3, block_shape=(128, 128))),
    "sub_tensor": mor_jax.Policy.uniform(
        mor_jax.SubTensorMoR(block_shape=(16, 16))),
}
# Every layout under the default policy, and each other policy on a few.
CASES = ([(layout, "default") for layout in LAYOUTS] +
         [("dense_3d", "mixed"), ("batch_and_two_contracting", "mixed"),
          ("attention_scores", "mixed"), ("dense_3d", "static_tiles"),
          ("transposed_operands", "static_tiles"),
          ("attention_context", "sub_tensor")])


def _operands(layout, seed=0):
  lhs_shape, rhs_shape, dims = LAYOUTS[layout]
  x = _outlier_features(lhs_shape, seed, axis=dims[0][0][0])
  w = _gaussian(rhs_shape, seed + 1)
  w[..., :3] *= np.float32(1e-4)  # some small channels
  out_shape = jax.eval_shape(
      lambda a, b: jax.lax.dot_general(a, b, dims), x, w).shape
  g = _outlier_features(out_shape, seed + 2, axis=0, scale=1e3)
  return x, w, g, dims


@pytest.mark.parametrize("layout,policy", CASES)
def test_three_gemms_match_reference(layout, policy):
  policy = POLICIES[policy]
  x, w, g, dims = _operands(layout)
  got, stats = cases.dot_with_stats(x, w, g, dims, policy)
  want, bounds, decisions = dot_reference.dot_general(x, w, g, dims, policy)
  for name, a, b, bound in zip(("Y", "dX", "dW"), got, want, bounds):
    dot_reference.assert_close(a, b, bound, name)
  for key, (choice, errs) in decisions.items():
    dot_reference.assert_decision(stats[key], choice, errs,
                                  getattr(policy, key[1]), key)


def test_reference_cases_exercise_both_decisions():
  """The default-policy cases are not all E4M3: both branches are checked."""
  chosen = set()
  for layout in LAYOUTS:
    x, w, g, dims = _operands(layout)
    _, _, decisions = dot_reference.dot_general(x, w, g, dims,
                                                POLICIES["default"])
    chosen |= {int(c) for c, _ in decisions.values()}
  assert chosen == {0, 1}


def test_one_tensor_decides_differently_per_gemm():
  """Outlier features: per-token scales fail, per-feature scales hold."""
  dims = (((1,), (0,)), ((), ()))
  x = _outlier_features((256, 64), 3)
  w = _gaussian((64, 32), 4)
  g = _gaussian((256, 32), 5)
  _, stats = cases.dot_with_stats(x, w, g, dims, mor_jax.Policy())
  _, _, decisions = dot_reference.dot_general(x, w, g, dims, mor_jax.Policy())
  assert int(decisions["fprop", "activation"][0]) == 1  # BF16
  assert int(decisions["wgrad", "activation"][0]) == 0  # E4M3
  np.testing.assert_array_equal(stats["fprop", "activation"].fraction_blocks,
                                [0.0, 1.0])
  np.testing.assert_array_equal(stats["wgrad", "activation"].fraction_blocks,
                                [1.0, 0.0])


@pytest.mark.parametrize("layout,dtype,pet", [
    *[(layout, jnp.float32, None) for layout in LAYOUTS],
    ("dense_3d", jnp.bfloat16, None), ("dense_3d", jnp.bfloat16, jnp.float32),
    ("batch_and_two_contracting", jnp.bfloat16, jnp.float32)])
def test_noquant_is_lax_dot_general_bit_for_bit(layout, dtype, pet):
  lhs_shape, rhs_shape, dims = LAYOUTS[layout]
  x = jnp.asarray(_gaussian(lhs_shape, 0), dtype)
  w = jnp.asarray(_gaussian(rhs_shape, 1), dtype)
  policy = mor_jax.Policy.uniform(mor_jax.NoQuant())

  def output_and_vjp(dot):
    def f(x, w):
      y, vjp = jax.vjp(dot, x, w)
      return y, vjp(jax.random.normal(jax.random.key(2), y.shape, y.dtype))
    return jax.jit(f)(x, w)

  got = output_and_vjp(lambda a, b: mor_jax.dot_general(
      a, b, dims, policy=policy, preferred_element_type=pet))
  want = output_and_vjp(lambda a, b: jax.lax.dot_general(
      a, b, dims, preferred_element_type=pet))
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    assert a.dtype == b.dtype
    np.testing.assert_array_equal(np.asarray(a, np.float32),
                                  np.asarray(b, np.float32))


def test_vmap_decides_per_slice():
  dims = (((1,), (0,)), ((), ()))
  xs = np.stack([_gaussian((32, 64), 0), _outlier_features((32, 64), 1)])
  w = _gaussian((64, 16), 2)

  def f(x):
    return mor_jax.dot_general_with_stats(x, w, dims, policy=mor_jax.Policy())

  ys, fwd = jax.jit(jax.vmap(f))(xs)
  np.testing.assert_array_equal(
      fwd["fprop"]["activation"].fraction_blocks, [[1, 0], [0, 1]])
  for i, x in enumerate(xs):
    np.testing.assert_array_equal(np.asarray(ys[i]), np.asarray(f(x)[0]))
  # Unbatched probes under vmap: the cotangent sums the slices' statistics.
  probes = mor_jax.zero_probes(mor_jax.Policy())

  def loss(probes):
    return jnp.sum(jax.vmap(lambda x: mor_jax.dot_general_with_stats(
        x, w, dims, probes, policy=mor_jax.Policy())[0])(xs))

  bwd = jax.grad(loss)(probes)
  # Per-feature scales hold both slices in E4M3: counted twice.
  np.testing.assert_array_equal(bwd["wgrad"]["activation"].fraction_blocks,
                                [2, 0])


def test_statistics_need_no_callbacks():
  policy = mor_jax.Policy()
  x, w = jnp.ones((8, 16)), jnp.ones((16, 4))

  def f(x, w, probes):
    y, fwd = mor_jax.dot_general_with_stats(
        x, w, (((1,), (0,)), ((), ())), probes, policy=policy)
    return jnp.sum(y), fwd

  jaxpr = str(jax.make_jaxpr(jax.grad(f, (0, 1, 2), has_aux=True))(
      x, w, mor_jax.zero_probes(policy)))
  assert "callback" not in jaxpr
  assert jaxpr.count("dot_general") == 3


def test_policy_defaults_and_uniform():
  p = mor_jax.Policy()
  assert p.activation == p.weight == p.gradient == TENSOR
  u = mor_jax.Policy.uniform(mor_jax.NoQuant())
  assert u == mor_jax.Policy(activation=mor_jax.NoQuant(),
                             weight=mor_jax.NoQuant(),
                             gradient=mor_jax.NoQuant())
  assert hash(p) == hash(mor_jax.Policy())
  with pytest.raises(TypeError):
    mor_jax.Policy(TENSOR)  # keyword-only


@pytest.mark.parametrize("build,error,match", [
    (lambda: mor_jax.Policy(activation="e4m3"), TypeError,
     "Policy.activation must be a mor_jax.Recipe"),
    (lambda: mor_jax.Policy(weight=mor_jax.TensorLevelMoR(
        block_shape=(1, None, None))), ValueError,
     r"Policy.weight.block_shape must have 2 entries"),
    (lambda: mor_jax.PolicyRules(rules=(("(", mor_jax.Policy()),)), ValueError,
     r"PolicyRules.rules\[0\]\[0\] must be a regular expression"),
    (lambda: mor_jax.PolicyRules(rules=((".*", "fp8"),)), TypeError,
     r"PolicyRules.rules\[0\]\[1\] must be a mor_jax.Policy"),
    (lambda: mor_jax.PolicyRules(rules=5), ValueError,
     "PolicyRules.rules must be a sequence"),
    (lambda: mor_jax.PolicyRules(default=TENSOR), TypeError,
     "PolicyRules.default must be"),
])
def test_bad_policies_fail_where_built(build, error, match):
  with pytest.raises(error, match=match):
    build()


DENSE = (((1,), (0,)), ((), ()))


@pytest.mark.parametrize("call,error,match", [
    (lambda: mor_jax.dot_general(jnp.ones((2, 3), jnp.int32), jnp.ones((3, 4)),
                                 DENSE, policy=mor_jax.Policy()),
     TypeError, "lhs must be a floating-point array, got dtype int32"),
    (lambda: mor_jax.dot_general(jnp.ones((2, 3)), jnp.ones((3, 4), bool),
                                 DENSE, policy=mor_jax.Policy()),
     TypeError, "rhs must be a floating-point array"),
    (lambda: mor_jax.dot_general(jnp.ones((2, 3)), jnp.ones((3, 4)),
                                 (((2,), (0,)), ((), ())),
                                 policy=mor_jax.Policy()),
     ValueError, r"names dimension\(s\) \[2\] of lhs, which has rank 2"),
    (lambda: mor_jax.dot_general(jnp.ones((2, 3)), jnp.ones((4, 3)), DENSE,
                                 policy=mor_jax.Policy()),
     ValueError, r"contracting dimension 1 of lhs \(shape \(2, 3\)\) does not "
     r"match dimension 0 of rhs \(shape \(4, 3\)\)"),
    (lambda: mor_jax.dot_general(jnp.ones((2, 3)), jnp.ones((3, 4)),
                                 (((1,), (0, 1)), ((), ())),
                                 policy=mor_jax.Policy()),
     ValueError, "pairs 1 contracting dimension"),
    (lambda: mor_jax.dot_general(jnp.ones((2, 3)), jnp.ones((3, 4)),
                                 (((1, 1), (0, 0)), ((), ())),
                                 policy=mor_jax.Policy()),
     ValueError, "uses a dimension of lhs twice"),
    (lambda: mor_jax.dot_general(jnp.ones((2, 3)), jnp.ones((3, 4)), (1, 0),
                                 policy=mor_jax.Policy()),
     ValueError, "dimension_numbers must be"),
    (lambda: mor_jax.dot_general(jnp.ones((2, 3)), jnp.ones((3, 4)), DENSE,
                                 policy=TENSOR),
     TypeError, "policy must be a mor_jax.Policy"),
    (lambda: mor_jax.dot_general_with_stats(
        jnp.ones((2, 3)), jnp.ones((3, 4)), DENSE,
        mor_jax.zero_probes(mor_jax.Policy.uniform(mor_jax.NoQuant())),
        policy=mor_jax.Policy()),
     ValueError, r"probes must be mor_jax.zero_probes\(policy\)"),
])
def test_bad_calls_name_the_argument(call, error, match):
  with pytest.raises(error, match=match):
    call()
