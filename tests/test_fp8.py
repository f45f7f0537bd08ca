"""FP8 execution (Policy.execution): the same decisions as emulation, real FP8.

On a CPU "fp8" runs XLA's FP8 dot inside ``lax.cond`` and the Triton
kernels (dual passes, BF16-path operands) in interpret mode, and for
128x128-block recipes the block GEMM's jnp twin; on a Hopper GPU the tests
marked ``gpu`` run the compiled kernels, the Mosaic GPU GEMMs among them,
against the jnp references or emulation.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import mor_jax
from mor_jax import _dispatch
from mor_jax import _numerics
from mor_jax import kernels
from mor_jax.dense import MoRDense
from mor_jax.kernels import tile
from tests import cases
from tests import data
from tests import reference

PER_ROW = mor_jax.TensorLevelMoR(block_shape=(1, None))
REJECT = mor_jax.TensorLevelMoR(block_shape=(1, None), threshold=1e-9)
DENSE = (((1,), (0,)), ((), ()))
# FP8 execution against emulation in float32: on a CPU both accumulate in
# float32; GPUs run float32 dots at default precision on TF32 inputs and FP8
# dots with fast accumulation (3.5e-4 measured on the H200), and
# test_float32_accurate_mode_on_gpu holds precision HIGHEST to 1e-3.
ON_GPU = jax.default_backend() == "gpu"
F32_TOL = 1e-3 if ON_GPU else 1e-5


def _hopper() -> bool:
  return (jax.default_backend() == "gpu" and
          jax.devices()[0].compute_capability.startswith("9."))


def _rel(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def _run(x, w, dims, policy, impl="xla", precision=None):
  """(y, dx, dw, all six statistics) of a jitted value_and_grad.

  The loss is linear in y, so dY (and with it the gradient's statistics) is
  the same whatever y is: the modes are compared on equal inputs.
  """
  def loss(x, w, probes):
    y, fwd = mor_jax.dot_general_with_stats(x, w, dims, probes, policy=policy,
                                            precision=precision)
    c = jnp.cos(jnp.arange(y.size, dtype=jnp.float32)).reshape(y.shape)
    return jnp.sum(y.astype(jnp.float32) * c), (y, fwd)

  with mor_jax.use_implementation(impl):
    fn = jax.jit(jax.grad(loss, argnums=(0, 1, 2), has_aux=True))
    (dx, dw, bwd), (y, fwd) = fn(x, w, mor_jax.zero_probes(policy))
  return y, dx, dw, (fwd, bwd)


def _assert_same_stats(a, b):
  for (path, u), v in zip(jax.tree_util.tree_flatten_with_path(a)[0],
                          jax.tree.leaves(b)):
    name = jax.tree_util.keystr(path)
    if ON_GPU and "error" in name:
      # XLA on a GPU orders a float sum by the fusion it lands in, which
      # differs between the two modes' programs: the last bit may differ
      # (docs/numerics.md 6.1). Counts, fractions and decisions may not.
      np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-6,
                                 err_msg=name)
    else:
      assert np.array_equal(np.asarray(u), np.asarray(v)), (name, u, v)


def _operands(shape_x, shape_w, dtype, seed=0):
  x = data.make("normal", shape_x, np.float32, seed=seed)
  w = data.make("normal", shape_w, np.float32, seed=seed + 1) * 0.05
  return jnp.asarray(x, dtype), jnp.asarray(w, dtype)


@pytest.mark.parametrize("dtype,tol", [(jnp.float32, F32_TOL),
                                       (jnp.bfloat16, 1e-2)])
@pytest.mark.parametrize("policy", [
    mor_jax.Policy.uniform(PER_ROW),
    mor_jax.Policy.uniform(REJECT),
    # Mixed: activations rejected, so fprop and wgrad fall back and dgrad
    # runs in FP8.
    mor_jax.Policy(activation=REJECT),
    mor_jax.Policy.uniform(mor_jax.Static(mor_jax.E4M3)),
    mor_jax.Policy(gradient=mor_jax.NoQuant()),
    mor_jax.Policy(gradient=mor_jax.TensorLevelMoR(
        block_shape=(1, None), threshold=0.1, scaling="e8m0")),
], ids=["accepted", "rejected", "mixed", "per_tensor_static", "bf16_grads",
        "e8m0"])
def test_fp8_equals_emulation(policy, dtype, tol):
  x, w = _operands((48, 96), (96, 40), dtype)
  em = _run(x, w, DENSE, _with(policy, "emulate"))
  f8 = _run(x, w, DENSE, _with(policy, "fp8"))
  _assert_same_stats(em[3], f8[3])
  for got, want in zip(f8[:3], em[:3]):
    assert got.dtype == want.dtype and got.shape == want.shape
    assert _rel(got, want) <= tol


@pytest.mark.parametrize("execution", ["emulate", "fp8"])
def test_second_order_gradients_are_the_view_paths(execution):
  # A gradient penalty differentiates the backward pass: its quantized
  # operands are straight-through, as on the view path, where the same
  # recipe runs with group_shape spelled out. It used to fail (a variadic
  # reduce has no derivative), then gave zeros (codes carry no gradient).
  x, w = _operands((16, 32), (32, 8), jnp.float32)
  view = dataclasses.replace(PER_ROW, group_shape=(None, None))

  def penalty(recipe):
    policy = mor_jax.Policy.uniform(recipe, execution=execution)

    def grad_norm(x, w):
      g = jax.grad(lambda x, w: jnp.sum(
          mor_jax.dot_general(x, w, DENSE, policy=policy) ** 2), (0, 1))
      return sum(jnp.sum(d ** 2) for d in g(x, w))

    return jax.grad(grad_norm, (0, 1))(x, w)

  # F32_TOL: on a GPU the penalty reads "fp8"'s first-order gradients,
  # which FP8 tensor cores accumulate in fewer bits (failed at 1e-5 there).
  for got, want in zip(penalty(PER_ROW), penalty(view)):
    assert float(jnp.abs(want).max()) > 0
    assert _rel(got, want) <= F32_TOL


@pytest.mark.parametrize("recipe", [mor_jax.TensorLevelMoR(),
                                    mor_jax.SubTensorMoR()],
                         ids=["tensor_level", "sub_tensor"])
def test_block_second_order_gradients_are_emulations(recipe):
  # The block GEMM's operands are straight-through as well (they gave
  # zeros); bfloat16 (where the block GEMM runs), to bfloat16's tolerance.
  x, w = _operands((256, 256), (256, 128), jnp.bfloat16)

  def penalty(execution):
    policy = mor_jax.Policy.uniform(recipe, execution=execution)

    def grad_norm(x, w):
      g = jax.grad(lambda x, w: jnp.sum(mor_jax.dot_general(
          x, w, DENSE, policy=policy).astype(jnp.float32) ** 2), (0, 1))
      return sum(jnp.sum(d.astype(jnp.float32) ** 2) for d in g(x, w))

    return jax.grad(grad_norm, (0, 1))(x, w)

  for got, want in zip(penalty("fp8"), penalty("emulate")):
    assert float(jnp.abs(want).max()) > 0
    assert _rel(got, want) <= 1e-2


def test_straight_through_products_are_removed_when_not_differentiated():
  # Each FP8 GEMM carries its emulated product for a second-order gradient;
  # a first-order step compiles two dots per GEMM (XLA's FP8 dot and its
  # BF16 fallback inside the cond), not three, and none beside the Hopper
  # kernel (a custom call).
  x, w = _operands((32, 64), (64, 16), jnp.bfloat16)
  policy = _with(mor_jax.Policy(), "fp8")
  step = jax.jit(jax.grad(lambda x, w: jnp.sum(mor_jax.dot_general(
      x, w, DENSE, policy=policy).astype(jnp.float32) ** 2), (0, 1)))
  hlo = step.lower(x, w).compile().as_text()
  assert len(re.findall(r"= \S+ dot\(", hlo)) == (0 if _hopper() else 6)


def test_per_row_recipe_with_a_yardstick():
  """A per-row recipe whose predicate also measures E5M2, no candidate: the
  dual passes give E4M3's codes and errors, the single-orientation passes
  E5M2's error. Every operand's statistics equal mor_quantize's of its
  view, in both modes (with the kernels, in interpret mode on a CPU)."""
  recipe = mor_jax.Recipe(
      candidates=((mor_jax.E4M3, mor_jax.ErrorNotAbove(mor_jax.E5M2)),
                  (mor_jax.BF16, None)),
      granularity="tensor", block_shape=(1, None))
  policy = mor_jax.Policy.uniform(recipe)
  x, w = _operands((48, 96), (96, 40), jnp.float32)
  x = x.at[5, :3].set(jnp.asarray([1e4, -3e-3, 0.0]))
  for impl in ("xla", "pallas"):
    runs = [_run(x, w, DENSE, _with(policy, e), impl=impl)
            for e in ("emulate", "fp8")]
    _assert_same_stats(runs[0][3], runs[1][3])
    fwd = runs[1][3][0]
    for role, view in (("activation", x), ("weight", w.T)):
      with mor_jax.use_implementation(impl):
        want = mor_jax.mor_quantize(view, recipe).stats
      got = fwd["fprop"][role]
      np.testing.assert_allclose(np.asarray(got.error),
                                 np.asarray(want.error), rtol=1e-6)
      assert np.array_equal(np.asarray(got.fraction_blocks),
                            np.asarray(want.fraction_blocks))


def _with(policy, execution):
  return mor_jax.Policy(activation=policy.activation, weight=policy.weight,
                        gradient=policy.gradient, execution=execution)


@pytest.mark.parametrize("shapes,dims", [
    (((4, 6, 32), (32, 24)), (((2,), (0,)), ((), ()))),
    (((32, 20), (16, 32)), (((0,), (1,)), ((), ()))),
    (((3, 8, 4, 5), (4, 5, 12)), (((2, 3), (0, 1)), ((), ()))),
])
def test_fp8_layouts_equal_emulation(shapes, dims):
  x, w = _operands(*shapes, jnp.float32, seed=3)
  policy = mor_jax.Policy()
  em = _run(x, w, dims, _with(policy, "emulate"))
  f8 = _run(x, w, dims, _with(policy, "fp8"))
  _assert_same_stats(em[3], f8[3])
  for got, want in zip(f8[:3], em[:3]):
    assert _rel(got, want) <= F32_TOL
  # And the emulation equals lax.dot_general on the dequantized operands.
  ref = jax.lax.dot_general(x, w, dims)
  assert _rel(em[0], ref) < 0.05


def test_e5m2_operands():
  """E5M2 x E5M2 (XLA would compute it in F16 on cuBLAS): exact products."""
  e5 = mor_jax.Recipe(candidates=((mor_jax.E5M2, mor_jax.ErrorBelow(0.2)),
                                  (mor_jax.BF16, None)),
                      block_shape=(1, None))
  x, w = _operands((32, 64), (64, 16), jnp.float32)
  policy = mor_jax.Policy.uniform(e5)
  em = _run(x, w, DENSE, _with(policy, "emulate"))
  f8 = _run(x, w, DENSE, _with(policy, "fp8"))
  assert float(f8[3][0]["fprop"]["activation"].fraction_blocks[0]) == 1.0
  _assert_same_stats(em[3], f8[3])
  assert _rel(f8[0], em[0]) <= F32_TOL


def test_emulation_of_per_row_recipes_keeps_the_view_path_statistics():
  """The matrix path's statistics are those of MoR on each operand's view."""
  x, w = _operands((48, 96), (96, 40), jnp.float32)
  y, _, _, (fwd, _) = _run(x, w, DENSE, _with(mor_jax.Policy(), "emulate"))
  r = mor_jax.mor_quantize(x, PER_ROW)
  s = fwd["fprop"]["activation"]
  np.testing.assert_array_equal(s.error, r.stats.error)
  np.testing.assert_array_equal(s.amax, r.stats.amax)
  w_view = mor_jax.mor_quantize(w.T, PER_ROW)
  assert _rel(y, r.value @ w_view.value.T) <= 1e-6


@pytest.mark.parametrize("policy,shapes,dims", [
    # Batch dimensions.
    (mor_jax.Policy.uniform(mor_jax.TensorLevelMoR()),
     ((2, 48, 256), (2, 256, 128)), (((2,), (1,)), ((0,), (0,)))),
    # Per-row activations with 128x128-block weights: neither GEMM fits all.
    (mor_jax.Policy(weight=mor_jax.TensorLevelMoR()),
     ((48, 256), (256, 128)), DENSE),
], ids=["batched", "per_row_and_blocks"])
def test_ineligible_policies_run_as_before(policy, shapes, dims):
  """Both take the per-view path in any mode: fp8 is emulate, bit for bit."""
  x, w = _operands(*shapes, jnp.float32)
  a = _run(x, w, dims, _with(policy, "fp8"))
  b = _run(x, w, dims, _with(policy, "emulate"))
  for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


def test_policy_execution_is_checked():
  with pytest.raises(ValueError, match="execution must be one of"):
    mor_jax.Policy(execution="fast")
  assert mor_jax.Policy().execution == "auto"


@pytest.mark.parametrize("make,error", [
    (lambda: kernels.GemmConfig(delay_release=2), "delay_release must be 0"),
    (lambda: kernels.GemmConfig(delay_release=True), "delay_release must be 0"),
    (lambda: kernels.GemmConfig(tile_m=0), "tile_m must be a positive int"),
    (lambda: kernels.GemmConfig(cluster="k"), "cluster must be None, 'm'"),
    (lambda: kernels.GemmConfig(chain_fp8=1), "chain_fp8 must be a bool"),
    (lambda: kernels.GemmConfig(chain_wide="yes"), "chain_wide must be a bool"),
    (lambda: kernels.PassTiling(tile_rows=12), "tile_rows must be a positive "
     "power of two"),
    (lambda: kernels.DualConfig(stats=(8, 256)), "stats must be a "),
    (lambda: kernels.PassTiling(prefetch=1), "prefetch must be a bool"),
])
def test_kernel_configs_are_checked(make, error):
  with pytest.raises((ValueError, TypeError), match=error):
    make()


def test_auto_is_emulation_off_fp8_tensor_cores():
  from mor_jax import _fp8  # pylint: disable=g-import-not-at-top
  want = "fp8" if jax.default_backend() == "gpu" else "emulate"
  if jax.default_backend() == "gpu":
    cc = tuple(int(v) for v in jax.devices()[0].compute_capability.split("."))
    want = "fp8" if cc >= (8, 9) else "emulate"
  assert _fp8.resolve("auto", DENSE, mor_jax.Policy()) == want


def test_dispatch_follows_jax_default_device(monkeypatch):
  """On a GPU machine (faked: a Hopper device), work sent to a CPU with
  jax.default_device takes XLA's passes and emulation: the kernels' Triton
  and Mosaic GPU code would not lower there."""
  from mor_jax import _fp8  # pylint: disable=g-import-not-at-top

  class Hopper:
    platform, compute_capability = "gpu", "9.0"

  cpu = jax.devices("cpu")[0]
  monkeypatch.setattr(jax, "devices", lambda backend=None: (
      [cpu] if backend == "cpu" else [Hopper()]))
  policy = mor_jax.Policy()

  def placed():
    return (_dispatch.on_gpu(), _dispatch.fp8_tensor_cores(),
            _dispatch.Implementation("auto").uses_pallas((8, 8)),
            _fp8.resolve("auto", DENSE, policy))

  assert placed() == (True, True, True, "fp8")
  for chosen in (cpu, "cpu"):
    with jax.default_device(chosen):
      assert placed() == (False, False, False, "emulate")


def test_layer_trains_under_scan_remat_and_vmap():
  policy = _with(mor_jax.Policy(), "fp8")

  class Stack(__import__("flax").linen.Module):
    @__import__("flax").linen.compact
    def __call__(self, x):
      nn = __import__("flax").linen
      block = nn.remat(nn.scan(
          lambda mdl, h, _: (MoRDense(16, policy=policy)(h), None),
          variable_axes={"params": 0, "mor_stats": 0, "mor_grads": 0},
          split_rngs={"params": True}, length=3))
      return block(self, x, None)[0]

  model = Stack()
  x = jnp.ones((4, 16))
  v = model.init(jax.random.key(0), x)
  loss = lambda p, x: jnp.sum(model.apply(  # noqa: E731
      {**v, "params": p}, x, mutable=["mor_stats"])[0] ** 2)
  g = jax.jit(jax.grad(loss))(v["params"], x)
  assert all(np.isfinite(np.asarray(a)).all() for a in jax.tree.leaves(g))
  # vmap over a batch of inputs: the kernels' batching rules run.
  y = jax.vmap(lambda xi: mor_jax.dot_general(
      xi, jnp.ones((16, 8)), DENSE, policy=policy))(jnp.ones((2, 4, 16)))
  assert y.shape == (2, 4, 8)


# ----------------------------------------------------------------------------
# 128x128-block recipes: the block GEMM (kernels/block_gemm.py; its jnp twin
# on a CPU).

MOR_BLOCK = mor_jax.Policy.uniform(mor_jax.TensorLevelMoR(block_shape=(128,
                                                                      128)))
MOR_SUB2 = mor_jax.Policy.uniform(mor_jax.SubTensorMoR(mode="two_way"))
MOR_SUB3 = mor_jax.Policy.uniform(mor_jax.SubTensorMoR(mode="three_way"))


def _spoiled(shape_x, shape_w, dtype):
  """Ragged operands; in X's [M, K] view block (0, 0) spans 1e-9..1e9
  (no FP8 format holds it: BF16) and block (1, 1) 1e-3..1e3 (E5M2's range,
  not E4M3's)."""
  x, w = _operands(shape_x, shape_w, jnp.float32, seed=5)
  x = x.at[:128, :128].multiply(jnp.geomspace(1e-9, 1e9, 128))
  wide = jnp.geomspace(1e-3, 1e3, 128 * 128).reshape(128, 128)
  x = x.at[128:256, 128:256].set(wide * jnp.sign(x[128:256, 128:256]))
  return x.astype(dtype), w.astype(dtype)


def _count_block_gemms(monkeypatch):
  """A list that gets an entry per traced call of the block GEMM's twin."""
  calls = []
  twin = kernels.block_gemm.block_gemm_reference

  def counted(*args, **kwargs):
    calls.append(kwargs["out_dtype"])
    return twin(*args, **kwargs)

  monkeypatch.setattr(kernels.block_gemm, "block_gemm_reference", counted)
  return calls


@pytest.mark.skipif(ON_GPU, reason="the jnp twin; on a GPU the kernel runs "
                    "(test_block_fp8_on_gpu_equals_emulation)")
@pytest.mark.parametrize("policy,reps", [
    # X: the whole tensor in BF16 (every block pair of fprop and wgrad runs
    # wide), W in E4M3.
    (MOR_BLOCK, {"BF16"}),
    (MOR_SUB2, {"E4M3", "BF16"}),
    (MOR_SUB3, {"E4M3", "E5M2", "BF16"}),
], ids=["mor_block", "mor_sub2", "mor_sub3"])
# "pallas": the passes and the codes' transposes (kernels/transpose.py) in
# interpret mode.
@pytest.mark.parametrize("impl", ["xla", "pallas"])
def test_block_fp8_equals_emulation(policy, reps, impl, monkeypatch):
  x, w = _spoiled((300, 260), (260, 136), jnp.float32)
  em = _run(x, w, DENSE, _with(policy, "emulate"), impl=impl)
  calls = _count_block_gemms(monkeypatch)
  transposed = []
  kernel = kernels.transpose.transpose_codes

  def counted(codes, **kwargs):
    transposed.append(codes.shape)
    return kernel(codes, **kwargs)

  monkeypatch.setattr(kernels.transpose, "transpose_codes", counted)
  f8 = _run(x, w, DENSE, _with(policy, "fp8"), impl=impl)
  assert calls == [jnp.float32] * 3  # fprop, dgrad, wgrad
  # X's, W's and dY's codes for their second GEMMs: X^T, W, dY^T.
  assert transposed == ([(300, 260), (136, 260), (300, 136)]
                        if impl == "pallas" else [])
  _assert_same_stats(em[3], f8[3])
  x_stats = f8[3][0]["fprop"]["activation"]
  assert {n for n, f in zip(x_stats.names, x_stats.fraction_blocks)
          if f > 0} == reps
  assert float(f8[3][0]["fprop"]["weight"].fraction_blocks[0]) == 1.0
  for got, want in zip(f8[:3], em[:3]):
    assert got.dtype == want.dtype and got.shape == want.shape
    assert _rel(got, want) <= 1e-5


@pytest.mark.parametrize("capability,dtype,impl,want", [
    ((9, 0), jnp.bfloat16, "auto", True),    # Hopper: the kernel runs
    ((9, 0), jnp.float16, "auto", True),
    ((9, 0), jnp.float32, "auto", False),    # the kernel takes 16-bit values
    ((9, 0), jnp.bfloat16, "xla", False),    # kernels switched off
    ((8, 9), jnp.bfloat16, "auto", False),   # FP8 cores, no block GEMM
    (None, jnp.bfloat16, "auto", False),     # no GPU
])
def test_auto_runs_block_recipes_where_the_kernel_runs(capability, dtype, impl,
                                                       want, monkeypatch):
  """"auto" takes the block GEMM where its kernel runs, else emulates
  (its jnp twin would be slower than emulation); "fp8" asks for it always."""
  from mor_jax import _block  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(_dispatch, "on_gpu", lambda: capability is not None)
  monkeypatch.setattr(_dispatch, "nvidia_gpu", lambda: capability is not None)
  monkeypatch.setattr(_dispatch, "_capability", lambda: capability or (0, 0))
  shapes = ((256, 128), (128, 64), (256, 64))
  with mor_jax.use_implementation(impl):
    for policy in (MOR_BLOCK, MOR_SUB2, MOR_SUB3):
      assert _block.applies("auto", DENSE, policy, dtype, shapes) is want
      assert _block.applies("fp8", DENSE, policy, dtype, shapes)
      assert not _block.applies("emulate", DENSE, policy, dtype, shapes)
    assert not _block.applies("fp8", DENSE, mor_jax.Policy(), dtype, shapes)


@pytest.mark.parametrize("policy", [mor_jax.Policy(), MOR_BLOCK],
                         ids=["per_row", "block"])
def test_eager_statistics_are_emulations(policy):
  # Called without jit, the block path ran its selection op by op and its
  # error sums came out in another order than mor_quantize's (jitted): the
  # last bits differed, and a threshold between them flips a decision.
  x, w = _operands((130, 140), (140, 9), jnp.float32)
  em, f8 = (mor_jax.dot_general_with_stats(
      x, w, DENSE, mor_jax.zero_probes(policy),
      policy=_with(policy, execution))[1] for execution in ("emulate", "fp8"))
  _assert_same_stats(em, f8)


@pytest.mark.skipif(ON_GPU, reason="the jnp twin")
def test_block_fp8_layout_and_bf16_gradients(monkeypatch):
  """bfloat16; two contracting dimensions, listed out of axis order on both
  sides; BF16-only gradients, so only fprop runs the block GEMM."""
  policy = mor_jax.Policy(activation=mor_jax.SubTensorMoR(),
                          weight=mor_jax.SubTensorMoR(),
                          gradient=mor_jax.NoQuant())
  x, w = _operands((4, 70, 3, 50), (70, 130, 50), jnp.bfloat16, seed=3)
  dims = (((3, 1), (2, 0)), ((), ()))
  em = _run(x, w, dims, _with(policy, "emulate"))
  calls = _count_block_gemms(monkeypatch)
  f8 = _run(x, w, dims, _with(policy, "fp8"))
  assert calls == [jnp.bfloat16]
  _assert_same_stats(em[3], f8[3])
  for got, want in zip(f8[:3], em[:3]):
    assert got.dtype == want.dtype and got.shape == want.shape
    assert _rel(got, want) <= 1e-2


# ----------------------------------------------------------------------------
# The kernels against their jnp twins (interpret mode on a CPU).


@pytest.mark.parametrize("shape", [(70, 130), (128, 256)])
@pytest.mark.parametrize("fmt", [mor_jax.E4M3, mor_jax.E5M2])
@pytest.mark.parametrize("steps", [1, 2])
@pytest.mark.parametrize("prefetch", [True, False])
def test_dual_kernels_equal_xla(shape, fmt, steps, prefetch):
  from mor_jax import _scaling, _xla  # pylint: disable=g-import-not-at-top
  x = data.make("outlier_cols", shape, np.float32, seed=7)
  x[3, :4] = [np.nan, np.inf, 0.0, 1e-40]
  x = jnp.asarray(x, jnp.bfloat16)
  interpret = jax.default_backend() != "gpu"
  # Tilings unlike each other and the defaults: the passes share no grid.
  pallas = kernels.dual.PallasDual(
      kernels.DualConfig(
          stats=kernels.PassTiling(tile_rows=32, tile_cols=64,
                                   row_steps=steps, prefetch=prefetch),
          codes=kernels.PassTiling(tile_rows=16, tile_cols=128,
                                   row_steps=3 - steps, prefetch=prefetch)),
      interpret)
  xla = _xla.XlaDual()
  got, want = pallas.stats(x), xla.stats(x)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  rows, cols = (_scaling.scales_from_amax(a, fmt, "gam", None)[:, 0]
                for a in (want.row_amax, want.cols.amax))
  got, want = pallas.codes(x, rows, cols, fmt), xla.codes(x, rows, cols, fmt)
  finite = np.isfinite(np.asarray(x, np.float32))
  data.assert_codes_equal(np.asarray(got[0])[finite],
                          np.asarray(want[0])[finite])
  data.assert_codes_equal(np.asarray(got[1])[finite.T],
                          np.asarray(want[1])[finite.T])
  # Each orientation's error sum: the kernels add per column of x, the jnp
  # passes per row of each view.
  for a, b in zip(got[2:], want[2:]):
    np.testing.assert_allclose(np.sum(np.asarray(a, np.float64)),
                               np.sum(np.asarray(b, np.float64)), rtol=2e-6)


@pytest.mark.parametrize("ptx", [True, False])
def test_dual_passes_lower_for_cuda(ptx):
  """The compiled passes lower to Triton on any machine (``jax.export`` for
  CUDA, with Triton's calls allowed), the codes pass with its error terms'
  PTX reciprocal (which interpret mode does not run) where ``ptx`` says.
  The programs' partial results of the columns reduce in one variadic
  reduce per pass (one kernel), the rows' amaxes in one more."""
  dual = kernels.dual.PallasDual(kernels.DualConfig(), interpret=False,
                                 ptx=ptx)
  sd = jax.ShapeDtypeStruct
  x = sd((200, 300), jnp.bfloat16)
  for fn, args, rcp, reduces in (
      (dual.stats, (x,), False, 2),
      (functools.partial(dual.codes, fmt=mor_jax.E4M3),
       (x, sd((200,), jnp.float32), sd((300,), jnp.float32)), ptx, 1)):
    module = cases.lowered_for_cuda(fn, *args)
    assert "triton" in module
    assert (tile.RECIPROCAL_PTX in module) == rcp
    assert len(re.findall(r"= stablehlo\.reduce\(", module)) == reduces


def _gemm_operand(rows, k, accepted, transposed, dtype, fmt, seed,
                  recip=None):
  """(kernels.gemm.Operand, what the BF16 path must take for it, NumPy)."""
  rng = np.random.default_rng(seed)
  x = np.asarray(rng.standard_normal((rows, k)), dtype)
  codes = np.asarray(rng.standard_normal((rows, k)) * 100, fmt)
  if recip is None:
    # Row reciprocals whose products are float32 subnormals (flushed), and
    # large ones whose products float16 cannot hold (saturated).
    recip = rng.uniform(0.01, 1000, rows).astype(np.float32)
    recip[::5] = np.float32(2e-38)
  if accepted:
    with np.errstate(over="ignore"):
      want = reference.to_dtype(
          reference.flush(codes.astype(np.float32) * recip[:, None]), dtype)
  else:
    want = x
  op = kernels.gemm.Operand(jnp.asarray(x.T if transposed else x),
                            jnp.asarray(codes), jnp.asarray(recip),
                            jnp.bool_(accepted), transposed)
  return op, want


def _identity(k, accepted, dtype):
  """I [K, K] as a GEMM operand, exact on either path (codes 1, factor 1)."""
  eye = np.eye(k, dtype=np.float32)
  return kernels.gemm.Operand(
      jnp.asarray(eye, dtype), jnp.asarray(eye, jnp.float8_e4m3fn),
      jnp.ones((k,), jnp.float32), jnp.bool_(accepted), False)


@pytest.mark.parametrize("fmt", [ml_dtypes.float8_e4m3fn,
                                 ml_dtypes.float8_e5m2], ids=str)
@pytest.mark.parametrize("dtype", ["bfloat16", "float16", "float32"])
def test_plain_dequantization_is_the_emulated_one(fmt, dtype):
  """Where ``dequantize_is_plain`` holds for a factor, the bare product of
  every finite code with it, cast, is the emulated value (flushed,
  saturated; NumPy) bit for bit; a factor of two past its bounds, some
  code needs the flush or the saturation."""
  dtype = data.DTYPES[dtype]
  q = np.arange(256, dtype=np.uint8).view(fmt).astype(np.float32)
  q = q[np.isfinite(q)]
  big = min(float(ml_dtypes.finfo(dtype).max), float(reference.F32_MAX))

  def bare_and_emulated(r):
    with np.errstate(over="ignore"):
      v = q * np.float32(r)
      return (v.astype(dtype).view(np.uint8),
              np.clip(reference.flush(v), -big, big).astype(dtype
                                                           ).view(np.uint8))

  def plain(r):
    return bool(_numerics.dequantize_is_plain(jnp.float32(r), fmt, dtype))

  def edge(lo, hi):
    # Binary search over float32 bit patterns (positive floats are ordered
    # as their bits) for where ``plain`` flips between lo and hi.
    lo, hi = np.float32(lo).view(np.int32), np.float32(hi).view(np.int32)
    want = plain(hi.view(np.float32))
    while hi - lo > 1:
      mid = np.int32((int(lo) + int(hi)) // 2)
      if plain(mid.view(np.float32)) == want:
        hi = mid
      else:
        lo = mid
    return lo.view(np.float32), hi.view(np.float32)

  below, first = edge(reference.F32_TINY, 1.0)
  last, above = edge(1.0, 2.0**126)
  assert not plain(below) and plain(first) and plain(last)
  assert not plain(above)
  rs = np.concatenate([np.geomspace(first, last, 2000, dtype=np.float32),
                       [first, np.nextafter(first, np.float32(1)), last]])
  for r in rs:
    got, want = bare_and_emulated(r)
    np.testing.assert_array_equal(got, want, err_msg=str(r))
  # At half the lower bound the smallest codes need the flush where the
  # dtype holds float32's subnormals (just below it, rounding may still
  # lift their products to normal); at twice the upper one the largest need
  # the saturation.
  past = [2 * last]
  if ml_dtypes.finfo(dtype).smallest_subnormal < below:
    past.append(below / 2)
  for r in past:
    got, want = bare_and_emulated(r)
    assert (got != want).any(), r


def _gemm_kernel(a, b, out_dtype):
  return kernels.gemm.gemm(a, b, out_dtype=out_dtype,
                           config=kernels.GemmConfig())


# The jnp twin everywhere, the kernel where it runs.
TWIN_AND_KERNEL = pytest.mark.parametrize("gemm", [
    kernels.gemm.gemm_reference,
    pytest.param(_gemm_kernel, marks=[
        pytest.mark.gpu,
        pytest.mark.skipif(not _hopper(),
                           reason="the GEMM kernel needs sm_90")])],
    ids=["twin", "kernel"])


# Per case: the codes from standard normal samples (the accumulator's
# size), then row and column factors (two values each, alternating) whose
# products in one order or the other leave float32's range where the result
# does not.
SPURIOUS = {
    # acc * ra passes float32's maximum.
    "row_first_overflows": (lambda x: x * 100, (2e33, 1e-3), (1e-6, 1e-10)),
    # ra * rb = 2**132 overflows; acc about 2**-10, the result 2**122.
    "product_overflows": (lambda x: x * 0.01, (2.0**66, 3.0), (2.0**66, 0.5)),
    # ra * rb about 2**-146 is subnormal (a few bits of mantissa) for every
    # pair; positive codes make acc about 2**20, the result a normal 2**-125.
    "product_underflows": (lambda x: np.abs(x) * 100,
                           (1.3 * 2.0**-73, 1.1 * 2.0**-73),
                           (1.3 * 2.0**-73, 1.5 * 2.0**-73)),
}


@TWIN_AND_KERNEL
@pytest.mark.parametrize("factors", list(SPURIOUS))
def test_gemm_scales_without_spurious_overflow(gemm, factors):
  """No intermediate product leaves float's range where the result stays in
  it, whichever order of the factors a fixed rule would take: one factor
  first where both lie on the same side of 1, their product first
  elsewhere (kernels.gemm.scale_rows_and_columns)."""
  rng = np.random.default_rng(2)
  m, k, n = 128, 256, 96
  codes, *fs = SPURIOUS[factors]
  a8, b8 = (np.asarray(np.clip(codes(rng.standard_normal((r, k))), -448, 448),
                       ml_dtypes.float8_e4m3fn) for r in (m, n))
  ra, rb = (np.where(np.arange(r) % 2, *f).astype(np.float32)
            for r, f in zip((m, n), fs))
  want = (a8.astype(np.float64) @ b8.astype(np.float64).T) * (
      ra[:, None].astype(np.float64) * rb[None, :])
  a, b = (kernels.gemm.Operand(jnp.zeros(q.shape, jnp.bfloat16),
                               jnp.asarray(q), jnp.asarray(r), jnp.bool_(True),
                               False) for q, r in ((a8, ra), (b8, rb)))
  got = np.asarray(gemm(a, b, out_dtype=jnp.float32))
  tiny = np.finfo(np.float32).smallest_normal
  assert np.isfinite(want).all() and np.isfinite(got).all()
  assert ((want == 0) | (np.abs(want) >= tiny)).all()
  assert _rel(got, want) <= (1e-3 if ON_GPU else 1e-6)


@TWIN_AND_KERNEL
@pytest.mark.parametrize("accepted,eye_accepted", [
    (True, False), (False, True), (False, False)])
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_gemm_bf16_path_takes_emulated_operands(gemm, accepted, eye_accepted,
                                                transposed, dtype):
  """Times the identity, a GEMM's BF16 path gives back the operand it took:
  an accepted operand's codes dequantized (flushed, saturated), bit for bit
  as the emulated path has them, or a rejected one as it came, either
  layout; as A and as B, on ragged shapes."""
  dtype = data.DTYPES[dtype]
  op, want = _gemm_operand(70, 300, accepted, transposed, dtype,
                           ml_dtypes.float8_e5m2, seed=3)
  eye = _identity(300, eye_accepted, dtype)
  fn = jax.jit(functools.partial(gemm, out_dtype=jnp.float32))
  for got in (fn(op, eye), fn(eye, op).T):
    # Equal values (a flushed -0 comes back as +0 from the sum).
    np.testing.assert_array_equal(np.asarray(got),
                                  np.asarray(want, np.float32))


@pytest.mark.gpu
@pytest.mark.skipif(not _hopper(), reason="the GEMM kernel needs sm_90")
@pytest.mark.parametrize("transposed", [False, True])
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_gemm_dequantizes_plain_tiles_as_the_others(transposed, dtype):
  """The dequantizing loop multiplies plainly in tiles of 64 rows whose
  factors need neither flush nor saturation (rows 64-127, 192-199) and in
  full elsewhere (a factor that flushes in rows 0-63, one that saturates in
  128-191, the padded rows after 200): as A and as B, both layouts, the BF16
  path gives back the emulated values bit for bit."""
  dtype = data.DTYPES[dtype]
  recip = np.random.default_rng(5).uniform(0.01, 1, 200).astype(np.float32)
  recip[7], recip[150] = np.float32(2e-38), np.float32(1e35)
  op, want = _gemm_operand(200, 300, True, transposed, dtype,
                           ml_dtypes.float8_e5m2, seed=4, recip=recip)
  eye = _identity(300, False, dtype)
  fn = jax.jit(functools.partial(_gemm_kernel, out_dtype=jnp.float32))
  for got in (fn(op, eye), fn(eye, op).T):
    np.testing.assert_array_equal(np.asarray(got),
                                  np.asarray(want, np.float32))


@pytest.mark.parametrize("transposed", [(False, True), (True, False)])
@pytest.mark.parametrize("k,config", [
    (256, {}),
    # One pipeline across a block's tiles, for the FP8 loop (the default)
    # and the BF16 one (K 1024: their steps divide the stages), releasing a
    # step late or not; or a pipeline per tile.
    (1024, {}),
    (1024, dict(chain_wide=True)),
    (1024, dict(chain_wide=True, delay_release=0)),
    (1024, dict(chain_fp8=False))], ids=str)
def test_gemm_kernel_lowers_for_cuda(transposed, k, config):
  """Its K loops lower to Mosaic GPU on any machine (``jax.export`` for
  CUDA): a CPU finds what does not lower (a layout, a transform, an op)
  before a GPU runs it. E4M3 pairs: jax 0.10's wgmma takes no mixed FP8
  pair."""
  ops = [_gemm_operand(r, k, True, t, ml_dtypes.bfloat16,
                       ml_dtypes.float8_e4m3fn, seed=r)[0]
         for r, t in zip((200, 130), transposed)]
  module = cases.lowered_for_cuda(
      lambda a, b: kernels.gemm.gemm(a, b, out_dtype=jnp.bfloat16,
                                     config=kernels.GemmConfig(**config)),
      *ops)
  # The kernel alone: where one operand is accepted, its codes are
  # dequantized in registers, with no launch before the kernel's.
  assert "mosaic_gpu" in module
  assert "xla.gpu.triton" not in module


def test_mixed_fp8_pair_lowers_where_the_kernel_takes_it():
  """``takes_mixed_fp8`` tells whether an E4M3 x E5M2 GEMM lowers on this
  jax (0.11: yes, 0.10: no), so that the dispatch can rely on it."""
  ops = [_gemm_operand(r, 256, True, False, ml_dtypes.bfloat16, f, seed=r)[0]
         for r, f in ((200, ml_dtypes.float8_e4m3fn),
                      (130, ml_dtypes.float8_e5m2))]
  export = functools.partial(jax.export.export(
      jax.jit(functools.partial(_gemm_kernel, out_dtype=jnp.bfloat16)),
      platforms=["cuda"]), *ops)
  if kernels.gemm.takes_mixed_fp8():
    assert "mosaic_gpu" in export().mlir_module()
  else:
    with pytest.raises(ValueError):
      export()


@pytest.mark.parametrize("takes", [True, False])
def test_dispatch_keeps_untaken_fp8_pairs_on_xla(monkeypatch, takes):
  """On a Hopper GPU (pretended), E4M3 x E5M2 GEMMs run the kernels only
  where Mosaic GPU takes the pair; one FP8 dtype always does."""
  monkeypatch.setattr(_dispatch, "on_gpu", lambda: True)
  monkeypatch.setattr(_dispatch, "_capability", lambda: (9, 0))
  monkeypatch.setattr(kernels.gemm, "takes_mixed_fp8", lambda: takes)
  impl = _dispatch.Implementation("pallas")
  e4, e5 = jnp.float8_e4m3fn, jnp.float8_e5m2
  backend = functools.partial(_dispatch.gemm_backend, impl, jnp.bfloat16)
  assert backend((e4, e4)) == backend((e5, e5)) == "pallas"
  assert backend((e4, e5)) == ("pallas" if takes else "xla")
  assert _dispatch.gemm_backend(impl, jnp.float32, (e4, e4)) == "xla"
  assert _dispatch.gemm_backend(_dispatch.Implementation("xla"),
                                jnp.bfloat16, (e4, e4)) == "xla"


@pytest.mark.parametrize("capability,nvidia", [
    ("9.0", True), ("8.9", True), ("gfx942", False), ("", False)])
def test_dispatch_by_gpu_vendor(monkeypatch, capability, nvidia):
  """On a GPU (pretended) with a CUDA compute capability, "auto" runs the
  kernels, their error terms with PTX's reciprocal, and real FP8 from
  sm_89. On one that reports a gfx name (ROCm) "auto" quantizes through XLA
  and executes as "emulate", and "pallas" compiles the passes without PTX:
  the kernels are tested on NVIDIA GPUs only."""
  from mor_jax import _fp8  # pylint: disable=g-import-not-at-top
  from mor_jax import _partition  # pylint: disable=g-import-not-at-top

  class Device:
    platform, compute_capability = "gpu", capability

  monkeypatch.setattr(jax, "devices", lambda *_, **__: [Device()])
  assert _dispatch.nvidia_gpu() == nvidia
  assert _dispatch.Implementation("auto").uses_pallas() == nvidia
  pallas = _dispatch.Implementation("pallas")
  assert pallas.uses_pallas() and not pallas.interpret
  assert _dispatch.dual(pallas, (256, 256)).ptx == nvidia
  part = _partition.Partition.build((256, 256), (1, None))
  assert _dispatch.passes(part, pallas).ptx == nvidia
  assert _fp8.resolve("auto", DENSE, mor_jax.Policy()) == (
      "fp8" if nvidia else "emulate")
  assert _dispatch.gemm_backend(pallas, jnp.bfloat16) == (
      "pallas" if capability == "9.0" else "xla")


def test_arrays_past_int32_take_xla(monkeypatch):
  """The kernels index in int32: on a (pretended) Hopper GPU, a
  quantization or GEMM with an array past 2**31 - 1 elements (a sharded
  array's global size) takes XLA's passes and GEMM, which give the same
  bits; a block GEMM policy then runs "auto" as "emulate"."""
  from mor_jax import _block  # pylint: disable=g-import-not-at-top
  from mor_jax import _partition  # pylint: disable=g-import-not-at-top
  from mor_jax import _xla  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(_dispatch, "on_gpu", lambda: True)
  monkeypatch.setattr(_dispatch, "_capability", lambda: (9, 0))
  cols = 2**15
  small = (_dispatch.MAX_KERNEL_ELEMENTS // cols, cols)
  big = (small[0] + 1, cols)
  pallas = _dispatch.Implementation("pallas")
  assert pallas.uses_pallas(small) and not pallas.uses_pallas(small, big)
  assert not isinstance(_dispatch.dual(pallas, small), _xla.XlaDual)
  assert isinstance(_dispatch.dual(pallas, big), _xla.XlaDual)
  for shape in (small, big):
    part = _partition.Partition.build(shape, (1, None))
    assert isinstance(_dispatch.passes(part, pallas),
                      _xla.XlaPasses) == (shape == big)
  e4 = (jnp.float8_e4m3fn,) * 2
  assert _dispatch.gemm_backend(pallas, jnp.bfloat16, e4,
                                (small, small, small)) == "pallas"
  assert _dispatch.gemm_backend(pallas, jnp.bfloat16, e4,
                                (small, small, big)) == "xla"
  with mor_jax.use_implementation("pallas"):
    for out, want in ((small, True), (big, False)):
      assert _block.applies("auto", DENSE, MOR_BLOCK, jnp.bfloat16,
                            ((8, 8), (8, 8), out)) is want


def _largest_kernel_operand(jaxpr) -> int:
  """The most elements of any operand or result of a pallas_call in
  ``jaxpr``, nested jaxprs included (0 if there is none)."""
  most = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "pallas_call":
      most = max([most] + [math.prod(v.aval.shape)
                           for v in eqn.invars + eqn.outvars])
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        sub = getattr(sub, "jaxpr", sub)
        if hasattr(sub, "eqns"):
          most = max(most, _largest_kernel_operand(sub))
  return most


@pytest.mark.parametrize("execution", ["emulate", "fp8"])
def test_dot_general_past_int32_keeps_big_arrays_off_the_kernels(execution):
  """A dot_general whose activation has 2**31 + 4096 elements traces, its
  value and both gradients, under the "pallas" setting; the activation
  reaches no kernel (the weight's quantizations still run them), while
  with 256 rows it does."""
  policy = mor_jax.Policy(execution=execution)

  def loss(x, w):
    y = mor_jax.dot_general(x, w, DENSE, policy=policy)
    return jnp.sum(y.astype(jnp.float32))

  with mor_jax.use_implementation("pallas"):
    for rows in (256, 2**19 + 1):
      jaxpr = jax.make_jaxpr(jax.value_and_grad(loss, (0, 1)))(
          jax.ShapeDtypeStruct((rows, 4096), jnp.bfloat16),
          jax.ShapeDtypeStruct((4096, 16), jnp.bfloat16)).jaxpr
      most = _largest_kernel_operand(jaxpr)
      if rows == 256:
        assert most == rows * 4096
      else:
        assert 0 < most <= _dispatch.MAX_KERNEL_ELEMENTS, most


def test_gemm_rejects_mismatched_operands():
  op, _ = _gemm_operand(8, 128, True, False, ml_dtypes.bfloat16,
                        ml_dtypes.float8_e4m3fn, seed=0)
  other, _ = _gemm_operand(8, 64, True, False, ml_dtypes.bfloat16,
                           ml_dtypes.float8_e4m3fn, seed=1)
  with pytest.raises(ValueError, match="must share K"):
    kernels.gemm.gemm_reference(op, other, out_dtype=jnp.float32)
  flipped = dataclasses.replace(op, transposed=True)
  with pytest.raises(ValueError, match=r"must hold the codes' \[rows, K\]"):
    kernels.gemm.gemm_reference(flipped, op, out_dtype=jnp.float32)
  short = dataclasses.replace(op, recip=op.recip[:4])
  with pytest.raises(ValueError, match="one factor per row"):
    kernels.gemm.gemm_reference(short, op, out_dtype=jnp.float32)
  wide = dataclasses.replace(op, x=op.x.astype(jnp.float32))
  with pytest.raises(TypeError, match="share a 16-bit dtype"):
    kernels.gemm.gemm(wide, op, out_dtype=jnp.float32,
                      config=kernels.GemmConfig())


# ----------------------------------------------------------------------------
# Sharded: per shard with global decisions.

N_DEV = 8 if jax.default_backend() == "cpu" else 2


def _mesh(spec: P) -> jax.sharding.Mesh:
  """N_DEV devices on the axes ``spec`` names: "d", or "a" x "b"."""
  axes = ("d",) if "d" in spec else ("a", "b")
  return jax.make_mesh((N_DEV,) if axes == ("d",) else (2, N_DEV // 2), axes,
                       devices=jax.devices()[:N_DEV],
                       axis_types=(jax.sharding.AxisType.Auto,) * len(axes))


@pytest.mark.skipif(jax.device_count() < N_DEV, reason=f"needs {N_DEV} devices")
@pytest.mark.parametrize("spec", [P("d", None), P(None, "d"), P("a", "b")])
def test_sharded_dual_and_layer_equal_one_device(spec):
  mesh = _mesh(spec)
  x, w = _operands((64, 128), (128, 64), jnp.bfloat16, seed=11)
  policy = _with(mor_jax.Policy(), "fp8")
  one = _run(x, w, DENSE, policy, impl="pallas")
  xs = jax.device_put(x, NamedSharding(mesh, spec))
  ws = jax.device_put(w, NamedSharding(mesh, P(spec[1], None)))
  many = _run(xs, ws, DENSE, policy, impl="pallas")
  _assert_same_decisions(one[3], many[3])
  for got, want in zip(many[:3], one[:3]):
    assert _rel(got, want) <= 1e-2


@pytest.mark.skipif(jax.device_count() < N_DEV, reason=f"needs {N_DEV} devices")
@pytest.mark.parametrize("spec", [P("d", None), P(None, "d"), P("a", "b")])
def test_sharded_gemm_bf16_path(spec):
  """Per shard: A accepted (dequantized where its codes lie), B rejected and
  stored [K, N] (read where it lies): no gather, no copy across devices."""
  mesh = _mesh(spec)
  a, _ = _gemm_operand(128, 256, True, False, ml_dtypes.bfloat16,
                       ml_dtypes.float8_e4m3fn, seed=3)
  b, _ = _gemm_operand(64, 256, False, True, ml_dtypes.bfloat16,
                       ml_dtypes.float8_e4m3fn, seed=4)
  a = dataclasses.replace(a, recip=jnp.clip(a.recip, 0.01, 10))
  want = kernels.gemm.gemm_reference(a, b, out_dtype=jnp.float32)
  put = lambda v, s: jax.device_put(v, NamedSharding(mesh, s))  # noqa: E731
  k = P(None, spec[1])  # B's rows whole, its K split as A's
  a = kernels.gemm.Operand(put(a.x, spec), put(a.codes, spec),
                           put(a.recip, P(spec[0])), a.accepted, False)
  b = kernels.gemm.Operand(put(b.x, P(k[1], None)), put(b.codes, k),
                           put(b.recip, P()), b.accepted, True)
  fn = (_gemm_kernel if _hopper() else
        kernels.gemm.gemm_reference_per_shard)
  compiled = jax.jit(functools.partial(fn, out_dtype=jnp.float32)).lower(
      a, b).compile()
  assert _rel(compiled(a, b), want) <= 1e-5
  text = compiled.as_text()
  assert not any(c in text for c in ("all-gather", "all-to-all",
                                     "collective-permute"))


@pytest.mark.parametrize("mnk,asked,padded,cluster", [
    ((512, 512, 512), "m", (512, 512, 512), "m"),
    # M and N pad to both extents of a cluster's tile (256 x 256 for "m"):
    # with B accepted alone the kernel computes the output's transpose.
    ((384, 512, 512), "m", (512, 512, 512), "m"),
    ((100, 130, 300), "m", (256, 256, 384), "m"),
    ((100, 130, 300), None, (256, 256, 384), None),
    # A pair of blocks along N spans 512 rows of B: it would pad 256 to 512.
    ((256, 512, 512), "n", (256, 512, 512), None),
    ((512, 1024, 512), "n", (512, 1024, 512), "n"),
])
def test_gemm_clusters_only_where_they_add_no_padding(mnk, asked, padded,
                                                      cluster):
  shape, config = kernels.gemm._padded_shape(
      *mnk, kernels.GemmConfig(cluster=asked))
  assert shape == padded
  assert config == kernels.GemmConfig(cluster=cluster)


def _assert_same_decisions(a, b):
  for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=1e-5)


# ----------------------------------------------------------------------------
# On a Hopper GPU: the compiled kernels.


@pytest.mark.gpu
@pytest.mark.skipif(not _hopper(), reason="the GEMM kernel needs sm_90")
@pytest.mark.parametrize("m,k,n", [(256, 512, 512), (200, 300, 130)])
@pytest.mark.parametrize("fmts,config,transposed", [
    (("E4M3", "E4M3"), {}, (False, False)),
    (("E4M3", "E5M2"), {}, (False, True)),
    (("E5M2", "E5M2"), {}, (True, False)),
    # One block per cluster, or two with B's tiles multicast (the default)
    # or A's; rejected operands stored [K, rows] read as they are.
    (("E4M3", "E4M3"), dict(cluster=None), (True, True)),
    (("E4M3", "E5M2"), dict(cluster="n"), (True, True)),
    # One pipeline across a block's tiles (at K 512: a multiple of the
    # stages) for both loops, releasing its slots a step late or at once;
    # a pipeline per tile.
    (("E4M3", "E4M3"), dict(chain_wide=True), (False, True)),
    (("E4M3", "E4M3"), dict(chain_wide=True, delay_release=0), (False, True)),
    (("E4M3", "E4M3"), dict(chain_fp8=False), (False, True))], ids=str)
def test_gemm_kernel_equals_reference(m, k, n, fmts, config, transposed):
  rng = np.random.default_rng(1)
  a = jnp.asarray(rng.standard_normal((m, k)), jnp.bfloat16)
  b = jnp.asarray(rng.standard_normal((n, k)), jnp.bfloat16)
  dt = {"E4M3": jnp.float8_e4m3fn, "E5M2": jnp.float8_e5m2}
  a8, b8 = (jnp.asarray(v * 8, dt[f]) for v, f in ((a, fmts[0]),
                                                   (b, fmts[1])))
  ra = jnp.asarray(rng.uniform(0.5, 2, m), jnp.float32)
  rb = jnp.asarray(rng.uniform(0.5, 2, n), jnp.float32)

  def operands(accepted_a, accepted_b):
    return [kernels.gemm.Operand(x.T if t else x, q, r, acc, t)
            for x, q, r, acc, t in ((a, a8, ra, accepted_a, transposed[0]),
                                    (b, b8, rb, accepted_b, transposed[1]))]

  # One compiled kernel for the four loops: the decisions are arguments.
  fn = jax.jit(lambda *acc: kernels.gemm.gemm(
      *operands(*acc), out_dtype=jnp.float32,
      config=kernels.GemmConfig(**config)))
  for acc in ((True, True), (False, False), (True, False), (False, True)):
    got = fn(*map(jnp.bool_, acc))
    want = kernels.gemm.gemm_reference(
        *operands(*map(jnp.bool_, acc)), out_dtype=jnp.float32,
        precision=jax.lax.Precision.HIGHEST)
    assert got.shape == (m, n)
    assert _rel(got, want) <= 1e-3, acc


@pytest.mark.gpu
@pytest.mark.skipif(not _hopper(), reason="the GEMM kernel needs sm_90")
@pytest.mark.parametrize("out_dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("transposed", [False, True])
def test_gemm_one_accepted_over_many_tiles(out_dtype, transposed):
  """One operand accepted: its codes dequantized in registers, block after
  block (more tiles than blocks, ragged M and N), and with B accepted the
  output written through transposed tiles; within the output's rounding of
  the twin on the same values."""
  cfg = kernels.GemmConfig()
  m, k, n = 8 * cfg.m_multiple + 56, 512, 16 * cfg.n_multiple - 40
  assert ((m // cfg.m_multiple + 1) * (n // cfg.n_multiple + 1) >
          jax.devices()[0].core_count // cfg.cluster_size)
  out_dtype = data.DTYPES[out_dtype]
  # E5M2 holds _gemm_operand's codes (E4M3 would make NaNs of the largest).
  ops = [_gemm_operand(r, k, True, transposed, ml_dtypes.bfloat16,
                       ml_dtypes.float8_e5m2, seed=r)[0]
         for r in (m, n)]
  fn = jax.jit(functools.partial(kernels.gemm.gemm, out_dtype=out_dtype,
                                 config=cfg))
  bound = 1e-5 if out_dtype == jnp.float32 else 4e-3
  for acc in ((True, False), (False, True)):
    a, b = (dataclasses.replace(op, accepted=jnp.bool_(x))
            for op, x in zip(ops, acc))
    want = kernels.gemm.gemm_reference(a, b, out_dtype=jnp.float32,
                                       precision=jax.lax.Precision.HIGHEST)
    got = fn(a, b)
    assert got.shape == (m, n) and got.dtype == out_dtype
    assert _rel(got, want) <= bound, acc


@pytest.mark.gpu
@pytest.mark.skipif(not _hopper(), reason="the GEMM kernel needs sm_90")
@pytest.mark.parametrize("delay_release", [1, 0])
def test_chained_tiles_equal_a_pipeline_per_tile(delay_release):
  # More output tiles than blocks, so that blocks carry one pipeline from
  # tile to tile (test_gemm_kernel_equals_reference's shapes give each
  # block one tile at most). Each tile's wgmmas run in the same order
  # either way: the outputs are equal bit for bit, in every K loop.
  chained = kernels.GemmConfig(chain_fp8=True, chain_wide=True,
                               delay_release=delay_release)
  per_tile = dataclasses.replace(chained, chain_fp8=False, chain_wide=False)
  m, k, n = 16 * chained.m_multiple, 512, 8 * chained.n_multiple
  tiles = (m // chained.m_multiple) * (n // chained.n_multiple)
  assert tiles > jax.devices()[0].core_count // chained.cluster_size
  rng = np.random.default_rng(3)
  a = jnp.asarray(rng.standard_normal((m, k)), jnp.bfloat16)
  b = jnp.asarray(rng.standard_normal((n, k)), jnp.bfloat16)
  a8, b8 = (jnp.asarray(v * 8, jnp.float8_e4m3fn) for v in (a, b))
  ra = jnp.asarray(rng.uniform(0.5, 2, m), jnp.float32)
  rb = jnp.asarray(rng.uniform(0.5, 2, n), jnp.float32)
  for transposed in (False, True):
    def run(config, acc_a, acc_b, transposed=transposed):
      ops = [kernels.gemm.Operand(x.T if transposed else x, q, r, acc,
                                  transposed)
             for x, q, r, acc in ((a, a8, ra, acc_a), (b, b8, rb, acc_b))]
      return kernels.gemm.gemm(*ops, out_dtype=jnp.float32, config=config)

    fns = [jax.jit(functools.partial(run, c)) for c in (chained, per_tile)]
    for acc in ((True, True), (False, False), (True, False), (False, True)):
      got, want = (np.asarray(f(*map(jnp.bool_, acc))) for f in fns)
      np.testing.assert_array_equal(got.view(np.uint32),
                                    want.view(np.uint32),
                                    err_msg=f"{acc}, {transposed}")


@pytest.mark.gpu
@pytest.mark.parametrize("policy", [mor_jax.Policy(),
                                    mor_jax.Policy.uniform(REJECT),
                                    mor_jax.Policy(activation=REJECT)],
                         ids=["accepted", "rejected", "mixed"])
def test_fp8_on_gpu_equals_emulation(policy):
  x, w = _operands((512, 1024), (1024, 768), jnp.bfloat16, seed=5)
  em = _run(x, w, DENSE, _with(policy, "emulate"), impl="auto")
  f8 = _run(x, w, DENSE, _with(policy, "fp8"), impl="auto")
  _assert_same_stats(em[3], f8[3])
  for got, want in zip(f8[:3], em[:3]):
    assert _rel(got, want) <= 1e-2
  if _hopper():
    text = jax.jit(functools.partial(
        _run, dims=DENSE, policy=_with(policy, "fp8"), impl="auto")).lower(
            x, w).as_text()
    assert "mosaic" in text.lower()


@pytest.mark.gpu
@pytest.mark.skipif(not _hopper(), reason="the block GEMM kernel needs sm_90")
@pytest.mark.parametrize("policy", [MOR_BLOCK, MOR_SUB2, MOR_SUB3],
                         ids=["mor_block", "mor_sub2", "mor_sub3"])
def test_block_fp8_on_gpu_equals_emulation(policy):
  x, w = _spoiled((512, 1024), (1024, 768), jnp.bfloat16)
  em = _run(x, w, DENSE, _with(policy, "emulate"), impl="auto")
  f8 = _run(x, w, DENSE, _with(policy, "fp8"), impl="auto")
  _assert_same_stats(em[3], f8[3])
  for got, want in zip(f8[:3], em[:3]):
    assert _rel(got, want) <= 1e-2
  # "auto" takes the kernel on Hopper too, as "fp8" does.
  for execution in ("fp8", "auto"):
    text = jax.jit(functools.partial(
        _run, dims=DENSE, policy=_with(policy, execution), impl="auto")).lower(
            x, w).as_text()
    assert "mosaic" in text.lower()


@pytest.mark.gpu
@pytest.mark.skipif(not _hopper(), reason="FP8 tensor cores of sm_90")
def test_float32_accurate_mode_on_gpu():
  # float32 compute runs XLA's FP8 dot; precision HIGHEST asks cuBLASLt to
  # promote partial sums (no fast accumulation): within 1e-3 of emulation.
  x, w = _operands((512, 1024), (1024, 768), jnp.float32, seed=9)
  policy = mor_jax.Policy()
  hi = jax.lax.Precision.HIGHEST
  em = _run(x, w, DENSE, _with(policy, "emulate"), "auto", hi)
  f8 = _run(x, w, DENSE, _with(policy, "fp8"), "auto", hi)
  _assert_same_stats(em[3], f8[3])
  for got, want in zip(f8[:3], em[:3]):
    assert _rel(got, want) <= 1e-3
