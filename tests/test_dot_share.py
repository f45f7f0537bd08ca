"""One quantization per tensor where the partition is symmetric (numerics 6).

For square blocks or the whole tensor, the backward pass reuses the forward's
quantizations of X and W, and dY's dgrad quantization serves wgrad too, when
the two views of a tensor are exact transposes. Checked here against six
explicit ``mor_jax.mor_quantize`` calls, one per view, made in the test.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mor_jax
from mor_jax import _block
from mor_jax import _dot
from mor_jax import _mor
from tests import cases

DENSE = (((1,), (0,)), ((), ()))
DENSE_3D = (((2,), (0,)), ((), ()))
MOR_BLOCK = mor_jax.TensorLevelMoR(block_shape=(128, 128))
SUB2 = mor_jax.SubTensorMoR(mode="two_way")
SUB3 = mor_jax.SubTensorMoR(mode="three_way")
CHANNEL = mor_jax.TensorLevelMoR(block_shape=(1, None))


def _policy(recipe, execution="emulate", **roles):
  kw = dict(activation=recipe, weight=recipe, gradient=recipe)
  kw.update(roles)
  return mor_jax.Policy(execution=execution, **kw)


def _operands(lhs_shape, rhs_shape, seed=0):
  """Gaussian X and W; X's first 128x128 block spans 1e-9..1e9 (BF16) and
  its second diagonal block 1e-3..1e3 (E5M2's range, not E4M3's)."""
  rng = np.random.default_rng(seed)
  x = rng.standard_normal(lhs_shape).astype(np.float32)
  w = rng.standard_normal(rhs_shape).astype(np.float32)
  x2 = x.reshape(-1, x.shape[-1])
  x2[:128, :128] *= np.geomspace(1e-9, 1e9, 128, dtype=np.float32)
  x2[128:256, 128:256] = (np.geomspace(1e-3, 1e3, 128 * 128).reshape(128, 128)
                          * np.sign(x2[128:256, 128:256]))
  return x2.reshape(lhs_shape), w


def _count(monkeypatch, module, name):
  """A list that gets an entry per traced call of ``module.name``."""
  calls = []
  fn = getattr(module, name)

  def counted(*args, **kwargs):
    calls.append(name)
    return fn(*args, **kwargs)

  monkeypatch.setattr(module, name, counted)
  return calls


@pytest.mark.parametrize("recipe,want", [
    (MOR_BLOCK, True), (SUB2, True), (SUB3, True),
    (mor_jax.SubTensorMoR(block_shape=(16, 16)), True),
    (mor_jax.Static(mor_jax.E4M3), True),  # per-tensor
    (mor_jax.TensorLevelMoR(block_shape=(None, None)), True),
    (mor_jax.NoQuant(), True),
    (mor_jax.SubTensorMoR(block_shape=(128, 128), group_shape=(256, 256)),
     True),
    (CHANNEL, False),
    (mor_jax.Static(mor_jax.E4M3, block_shape=(1, 32), scaling="e8m0"), False),
    (mor_jax.SubTensorMoR(block_shape=(8, 16)), False),
    (mor_jax.SubTensorMoR(block_shape=(128, 128), group_shape=(128, 256)),
     False),
    (mor_jax.SubTensorMoR(block_shape=(128, 128), group_shape=(None, 256)),
     False),
])
def test_symmetric_partitions(recipe, want):
  assert _dot.symmetric(recipe) is want


@pytest.mark.parametrize("dims,ndims,want", [
    (DENSE, (2, 2), dict(activation=True, weight=True, gradient=True)),
    (DENSE_3D, (3, 2), dict(activation=True, weight=True, gradient=True)),
    # X [K, M] and W [N, K]: views are still transposes of each other.
    ((((0,), (1,)), ((), ())), (2, 2),
     dict(activation=True, weight=True, gradient=True)),
    # Two contracting dimensions out of axis order on both sides: X's and
    # W's K is (3, 1) / (2, 0) in fprop, their rows (1, 3) / (0, 2) in the
    # backward; dY's two views still are transposes.
    ((((3, 1), (2, 0)), ((), ())), (4, 3),
     dict(activation=False, weight=False, gradient=True)),
    # Batch dimensions are rows of every view.
    ((((3,), (3,)), ((0, 2), (0, 2))), (4, 4),
     dict(activation=False, weight=False, gradient=False)),
])
def test_shared_needs_exact_transposes(dims, ndims, want):
  assert _dot.shared(dims, ndims, _policy(MOR_BLOCK)) == want
  assert not any(_dot.shared(dims, ndims, _policy(CHANNEL)).values())


@pytest.mark.parametrize("policy,lhs_shape,rhs_shape,dims,want", [
    (_policy(MOR_BLOCK), (300, 260), (260, 136), DENSE, 3),
    (_policy(SUB3), (2, 150, 260), (260, 136), DENSE_3D, 3),
    (_policy(mor_jax.NoQuant()), (8, 16), (16, 4), DENSE, 3),
    # Per-row X and dY: only W shares.
    (_policy(CHANNEL, weight=SUB2), (300, 260), (260, 136), DENSE, 5),
    (_policy(mor_jax.SubTensorMoR(block_shape=(8, 16))), (64, 48), (48, 32),
     DENSE, 6),
    (_policy(MOR_BLOCK), (4, 70, 3, 50), (70, 130, 50),
     (((3, 1), (2, 0)), ((), ())), 5),
    (_policy(MOR_BLOCK), (2, 16, 3, 8), (2, 16, 3, 8),
     (((3,), (3,)), ((0, 2), (0, 2))), 6),
], ids=["mor_block", "sub3_3d", "noquant", "channel_and_block", "rectangular",
        "contracting_out_of_order", "batch"])
def test_quantization_count(policy, lhs_shape, rhs_shape, dims, want,
                            monkeypatch):
  """MoR runs once per shared tensor in the traced fwd+bwd (the view path)."""
  x, w = (jnp.ones(s, jnp.float32) for s in (lhs_shape, rhs_shape))
  out = jax.eval_shape(lambda a, b: jax.lax.dot_general(a, b, dims), x, w)
  calls = _count(monkeypatch, _mor, "mor_quantize")
  cases.dot_with_stats(x, w, jnp.ones(out.shape, out.dtype), dims, policy)
  assert len(calls) == want


@pytest.mark.parametrize("recipe,lhs_shape,dtype,tol", [
    (MOR_BLOCK, (300, 260), np.float32, 1e-5),
    (SUB2, (300, 260), np.float32, 1e-5),
    (SUB3, (300, 260), np.float32, 1e-5),
    (SUB3, (2, 150, 260), jnp.bfloat16, 1e-2),
], ids=["mor_block", "sub2", "sub3", "sub3_3d_bf16"])
def test_block_gemm_quantizes_each_tensor_once(recipe, lhs_shape, dtype, tol,
                                               monkeypatch):
  """Under "fp8" the block GEMM's backward operands are the forward's,
  transposed (on a CPU its jnp twin runs): decisions and statistics those of
  "emulate" bit for bit; outputs within tests/test_fp8.py's tolerances."""
  x, w = _operands(lhs_shape, (260, 136))
  x, w = jnp.asarray(x, dtype), jnp.asarray(w, dtype)
  dims = DENSE if len(lhs_shape) == 2 else DENSE_3D
  g = np.cos(np.arange(300 * 136, dtype=np.float32)).reshape(
      lhs_shape[:-1] + (136,))
  em = cases.dot_with_stats(x, w, jnp.asarray(g, dtype), dims,
                            _policy(recipe))
  calls = _count(monkeypatch, _block, "quantize")
  f8 = cases.dot_with_stats(x, w, jnp.asarray(g, dtype), dims,
                            _policy(recipe, "fp8"))
  assert len(calls) == 3
  for key in em[1]:
    for a, b in zip(jax.tree.leaves(em[1][key]), jax.tree.leaves(f8[1][key])):
      np.testing.assert_array_equal(a, b, err_msg=str(key))
  for a, b in zip(em[0], f8[0]):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    assert np.linalg.norm(a - b) <= tol * np.linalg.norm(b)


def _per_view(x2, w, g2, recipe):
  """The six quantizations of the 2-D problem Y = X W, each on its own view:
  {(GEMM, role): (value on the view, choice, MoRStats)}."""
  views = {("fprop", "activation"): x2, ("wgrad", "activation"): x2.T,
           ("fprop", "weight"): w.T, ("dgrad", "weight"): w,
           ("dgrad", "gradient"): g2, ("wgrad", "gradient"): g2.T}
  out = {}
  for key, v in views.items():
    r = mor_jax.mor_quantize(jnp.asarray(np.ascontiguousarray(v)), recipe)
    out[key] = (np.asarray(r.value, np.float64), np.asarray(r.choice),
                r.stats)
  return out


@pytest.mark.parametrize("recipe", [
    MOR_BLOCK, SUB2, SUB3, mor_jax.SubTensorMoR(block_shape=(16, 16)),
    mor_jax.Static(mor_jax.E4M3, block_shape=(128, 128)),
], ids=["mor_block", "sub2", "sub3", "sub2_16", "static_tiles"])
def test_shared_equals_six_quantizations(recipe):
  """Against six explicit quantizations, one per view.

  Each transposed view's decisions and quantized values are those of the
  view itself, bit for bit. The statistics are equal bit for bit except the
  error sums, float32 sums over the same elements in another order: equal
  to rtol 1e-5 (a few ulps of each block's sum). Y, dX and dW differ by
  float32 accumulation order only: relative Frobenius 1e-6 of float64
  products of the six quantized views.
  """
  x, w = _operands((2, 150, 260), (260, 136), seed=1)
  g = np.random.default_rng(2).standard_normal((2, 150, 136)).astype(
      np.float32)
  x2, g2 = x.reshape(300, 260), g.reshape(300, 136)
  q = _per_view(x2, w, g2, recipe)
  for first, second in [(("fprop", "activation"), ("wgrad", "activation")),
                        (("fprop", "weight"), ("dgrad", "weight")),
                        (("dgrad", "gradient"), ("wgrad", "gradient"))]:
    np.testing.assert_array_equal(q[first][1], q[second][1].T)
    np.testing.assert_array_equal(q[first][0], q[second][0].T)
  (y, dx, dw), stats = cases.dot_with_stats(x, w, g, DENSE_3D, _policy(recipe))
  v = {key: val for key, (val, _, _) in q.items()}
  want_y = v["fprop", "activation"] @ v["fprop", "weight"].T
  want_dx = v["dgrad", "gradient"] @ v["dgrad", "weight"].T
  want_dw = v["wgrad", "activation"] @ v["wgrad", "gradient"].T
  for name, got, want in (("Y", y, want_y), ("dX", dx, want_dx),
                          ("dW", dw, want_dw)):
    got = np.asarray(got, np.float64).reshape(want.shape)
    assert np.linalg.norm(got - want) <= 1e-6 * np.linalg.norm(want), name
  for key, (_, _, st) in q.items():
    for field in ("fraction_blocks", "fraction_elements", "amax",
                  "dynamic_range", "nonfinite"):
      np.testing.assert_array_equal(getattr(stats[key], field),
                                    getattr(st, field), err_msg=str(key))
    for field in ("error", "chosen_error"):
      np.testing.assert_allclose(getattr(stats[key], field),
                                 getattr(st, field), rtol=1e-5, atol=0,
                                 err_msg=str(key))
  # The data reach every candidate of three-way MoR.
  if recipe is SUB3:
    assert np.all(stats["fprop", "activation"].fraction_blocks > 0)
