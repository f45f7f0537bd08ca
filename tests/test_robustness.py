"""Every bad-input class gets a tested outcome (docs/robustness.md).

``ROWS`` is the table of docs/robustness.md: each row is a bad input and a
function that runs it and either raises the error users get (the table
shows its type and message) or checks the documented behaviour and returns
its description. ``test_table_is_current`` runs every row and compares the
rendered table with the document, so the two cannot drift; regenerate it
with ``python -m tests.test_robustness``.

The numerics rows run under the default implementation (XLA on a CPU);
``test_numerics_under_each_implementation`` runs the same classes of input
through the Pallas kernels (interpret mode off a GPU) as well.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import pathlib
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax import nnx

import mor_jax
import mor_jax.nnx  # noqa: F401  (mor_jax.nnx.convert)
from mor_jax.dense import MoRDense
from mor_jax.dense import flatten_stats
from tests import cases
from tests import data
from tests import reference as ref

E4M3, E5M2, BF16 = mor_jax.E4M3, mor_jax.E5M2, mor_jax.BF16
DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "robustness.md"
BEGIN, END = "<!-- table: begin -->", "<!-- table: end -->"
DIMS = (((1,), (0,)), ((), ()))
F32_MAX = float(np.finfo(np.float32).max)


@dataclasses.dataclass(frozen=True)
class Row:
  """A bad input: its class, the call shown, and what running it does."""

  kind: str
  call: str
  run: Callable[[], str]
  error: type[Exception] | None = None  # the exception it must raise


ROWS: list[Row] = []


def row(kind: str, call: str, error: type[Exception] | None = None):
  def register(fn):
    ROWS.append(Row(kind, call, fn, error))
    return fn
  return register


def _finite(*arrays) -> bool:
  return all(bool(np.isfinite(np.asarray(a, np.float64)).all())
             for a in arrays)


def _nothing_quantized(stats) -> bool:
  leaves = [np.asarray(a, np.float64) for a in jax.tree.leaves(stats)]
  return all(np.isfinite(a).all() for a in leaves) and not np.asarray(
      stats.fraction_blocks).any()


# ---------------------------------------------------------------------------
# Zero-size tensors.


@row("zero-size tensor", "quantize(zeros((0, 8)), E4M3, block_shape=(1, None))")
def _():
  qa = mor_jax.quantize(jnp.zeros((0, 8)), E4M3, block_shape=(1, None))
  assert qa.data.shape == (0, 8) and qa.scale.shape == (0, 1)
  assert mor_jax.dequantize(qa).shape == (0, 8)
  return "empty codes (0, 8) and scales (0, 1); dequantize gives (0, 8)"


@row("zero-size tensor",
     "fake_quantize(zeros((8, 0), bfloat16), E5M2, block_shape=(4, 4))")
def _():
  x = jnp.zeros((8, 0), jnp.bfloat16)
  f = lambda v: mor_jax.fake_quantize(v, E5M2, block_shape=(4, 4)).sum()  # noqa: E731
  y = mor_jax.fake_quantize(x, E5M2, block_shape=(4, 4))
  g = jax.grad(f)(x)
  assert y.shape == x.shape and y.dtype == x.dtype and g.shape == x.shape
  assert float(mor_jax.relative_error(x, y)) == 0.0
  return "empty in x's dtype, empty gradient; relative_error 0"


@row("zero-size tensor",
     "mor_quantize(zeros((0, 8)), recipe) for every recipe")
def _():
  x = jnp.zeros((0, 8))
  for recipe, _ in cases.RECIPES.values():
    shape = x.shape if recipe.block_shape in (None, (None, None), (1, None),
                                              (None, 1)) else (0, 256)
    v = jnp.zeros(shape)
    r = mor_jax.mor_quantize(v, recipe)
    assert r.value.shape == v.shape, recipe
    assert (np.asarray(r.choice) == len(r.names) - 1).all(), recipe
    assert _nothing_quantized(r.stats), (recipe, r.stats)
    assert float(r.stats.chosen_error) == 0.0
  return ("empty value; choice BF16 (the last candidate); fractions, errors, "
          "amax and dynamic range 0")


@row("zero-size tensor",
     "dot_general with M, K or N = 0, under every policy, and its gradients")
def _():
  policies = [mor_jax.Policy(), mor_jax.Policy(execution="fp8"),
              mor_jax.Policy.uniform(mor_jax.NoQuant()),
              mor_jax.Policy.uniform(mor_jax.SubTensorMoR(block_shape=(2, 2))),
              mor_jax.Policy.uniform(mor_jax.Static(E4M3))]
  for policy in policies:
    for m, k, n in ((0, 4, 3), (2, 0, 3), (2, 4, 0)):
      a, b = jnp.ones((m, k)), jnp.ones((k, n))

      def loss(a, b, probes, policy=policy):
        y, fwd = mor_jax.dot_general_with_stats(a, b, DIMS, probes,
                                                policy=policy)
        return jnp.sum(y), (y, fwd)

      (_, (y, fwd)), (ga, gb, bwd) = jax.value_and_grad(
          loss, (0, 1, 2), has_aux=True)(a, b, mor_jax.zero_probes(policy))
      np.testing.assert_array_equal(np.asarray(y), np.zeros((m, n)))
      assert ga.shape == a.shape and gb.shape == b.shape
      assert not np.asarray(ga).any() and not np.asarray(gb).any()
      empty = {"activation": a.size == 0, "weight": b.size == 0,
               "gradient": m * n == 0}
      for stats in (fwd, bwd):
        for gemm in stats:
          for role, s in stats[gemm].items():
            assert _finite(*jax.tree.leaves(s)), (policy, (m, k, n), s)
            if empty[role]:
              assert _nothing_quantized(s), (policy, (m, k, n), role, s)
  return ("output equals lax.dot_general's (empty, or zeros for K = 0); "
          "zero gradients; the statistics of each empty operand say nothing "
          "was quantized")


@row("zero-size tensor", "MoRDense(4) on a batch of shape (0, 8)")
def _():
  layer = MoRDense(4)
  x = jnp.zeros((0, 8))
  v = layer.init(jax.random.key(0), jnp.ones((1, 8)))

  def loss(params):
    y, state = layer.apply({"params": params}, x, mutable=["mor_stats"])
    return jnp.sum(y), (y, state)

  (_, (y, state)), g = jax.value_and_grad(loss, has_aux=True)(v["params"])
  assert y.shape == (0, 4)
  assert not np.asarray(g["kernel"]).any() and not np.asarray(g["bias"]).any()
  m = flatten_stats(state["mor_stats"])
  assert float(m["fprop/activation/fraction_e4m3"]) == 0.0
  assert float(m["fprop/activation/fraction_bf16"]) == 0.0
  return "output (0, 4), zero gradients, fraction_e4m3 = fraction_bf16 = 0"


# ---------------------------------------------------------------------------
# Finite input that could overflow, and non-finite input.


def _near_max_check() -> None:
  x = jnp.array([[3.3e38, -3.4e38, 1.0, F32_MAX], [1e38, -F32_MAX, 2.0, 0.5]])
  for scaling in ("fp32", "e8m0", "gam"):
    for fmt in (E4M3, E5M2):
      kw = dict(block_shape=(1, None), scaling=scaling)
      fq = mor_jax.fake_quantize(x, fmt, **kw)
      dq = mor_jax.dequantize(mor_jax.quantize(x, fmt, **kw))
      assert _finite(fq, dq), (scaling, fmt, fq, dq)
      want = ref.fake_quantize(np.asarray(x), fmt.name, (1, None), scaling)
      np.testing.assert_allclose(np.asarray(fq), want, rtol=2e-7)
    for recipe in (mor_jax.TensorLevelMoR(block_shape=(1, None),
                                          scaling=scaling),
                   mor_jax.SubTensorMoR(mode="three_way", block_shape=(1, 2),
                                        scaling=scaling),
                   mor_jax.Static(E4M3, block_shape=(1, None),
                                  scaling=scaling)):
      r = mor_jax.mor_quantize(x, recipe)
      assert _finite(r.value, r.stats.error, r.stats.dynamic_range), recipe


@row("finite input near float32's max",
     "fake_quantize / dequantize / mor_quantize of 3.3e38 .. 3.4e38, "
     "every format, scaling and recipe")
def _():
  _near_max_check()
  return ("finite: a value that rounds past float32's max saturates at "
          "+-3.4028235e38 (docs/numerics.md 3.9)")


@row("finite input near float16's max",
     "fake_quantize(float16 65504, E4M3, scaling='e8m0')")
def _():
  x = jnp.array([65504.0, -65504.0, 3.0], jnp.float16)
  for scaling in ("e8m0", "gam", "fp32"):
    y = mor_jax.fake_quantize(x, E4M3, block_shape=(None,), scaling=scaling)
    assert _finite(y) and y.dtype == jnp.float16, (scaling, y)
  return "finite: saturates at +-65504 instead of rounding to +-inf"


@row("float64 beyond float32's range (x64 enabled)",
     "fake_quantize / quantize / mor_quantize of float64 [1e39, -1e300, 1.0]")
def _():
  with jax.enable_x64(True):
    x = jnp.array([1e39, -1e300, 1.0], jnp.float64)
    y = mor_jax.fake_quantize(x, E4M3, block_shape=(None,))
    qa = mor_jax.quantize(x, E4M3, block_shape=(None,))
    r = mor_jax.mor_quantize(x, mor_jax.Static(E4M3, block_shape=(None,)))
    assert y.dtype == jnp.float64 and _finite(y, r.value), (y, r.value)
    np.testing.assert_array_equal(np.abs(np.asarray(y[:2])), F32_MAX)
    assert not np.isnan(np.asarray(qa.data, np.float32)).any()
    assert not bool(r.stats.nonfinite)
  return ("saturated to +-3.4028235e38 first (computed in float32): finite, "
          "codes +-F, not flagged non-finite")


@row("float64 dot_general (x64 enabled)",
     "dot_general(full((2, 8), 1e300), ones((8, 2))), float64, default "
     "policy and 128x128 blocks")
def _():
  with jax.enable_x64(True):
    x, w = jnp.full((2, 8), 1e300), jnp.ones((8, 2))
    for execution, recipe in itertools.product(
        ("emulate", "fp8"), (mor_jax.Policy().activation,
                             mor_jax.TensorLevelMoR())):
      y = mor_jax.dot_general(x, w, DIMS, policy=mor_jax.Policy.uniform(
          recipe, execution=execution))
      assert y.dtype == jnp.float64
      # FP8 execution scales the codes' product (448 times the factor);
      # the block GEMM's sums were float32 and overflowed.
      np.testing.assert_allclose(np.asarray(y), 8 * F32_MAX,
                                 rtol=0 if execution == "emulate" else 1e-6)
  return ("each operand saturated to +-3.4028235e38, the products summed "
          "and scaled in float64: 8 x 3.4028235e38 (FP8 execution: to 1e-6)")


@row("float8 operands of dot_general",
     "dot_general of float8_e4m3fn (4, 8) by (8, 3) ones, default policy")
def _():
  x, w = (jnp.ones(s, jnp.float8_e4m3fn) for s in ((4, 8), (8, 3)))
  for execution in ("emulate", "fp8"):
    y = mor_jax.dot_general(x, w, DIMS,
                            policy=mor_jax.Policy(execution=execution))
    assert y.dtype == jnp.float8_e4m3fn, y.dtype
    np.testing.assert_array_equal(np.asarray(y, np.float32), 8.0)
  return ("accepted, as by lax.dot_general: computed in float32, the output "
          "in float8_e4m3fn (it raised a TypePromotionError)")


@row("NaN or +-inf in a block",
     "mor_quantize([[1, 3], [inf, 0.3]], Static(E4M3, block_shape=(1, None)))")
def _():
  x = jnp.array([[1.0, 3.0], [jnp.inf, 0.3], [jnp.nan, 2.0]])
  r = mor_jax.mor_quantize(x, mor_jax.Static(E4M3, block_shape=(1, None)))
  np.testing.assert_array_equal(np.asarray(r.choice).ravel(), [0, 1, 1])
  np.testing.assert_array_equal(np.asarray(r.value)[1:], np.asarray(x)[1:])
  assert bool(r.stats.nonfinite)
  s = mor_jax.compute_scales(x, E4M3, block_shape=(1, None), scaling="fp32")
  assert float(s[2, 0]) == 224.0  # 448 / 2: the finite values' scale
  return ("the block falls back to BF16 and passes through unchanged; "
          "stats.nonfinite set; its scale is that of its finite values")


@row("FP8 execution of a huge operand against a small one",
     "dot_general(x ~ 1e36, w ~ 1e-3, execution='fp8') in bfloat16, "
     "per-row and 128x128 recipes")
def _():
  x = jnp.asarray(data.make("normal", (256, 256), np.float32) * 1e36,
                  jnp.bfloat16)
  w = jnp.asarray(data.make("normal", (256, 128), np.float32, seed=1) * 1e-3,
                  jnp.bfloat16)
  for recipe in (mor_jax.TensorLevelMoR(block_shape=(1, None)),
                 mor_jax.TensorLevelMoR()):
    runs = []
    for execution in ("emulate", "fp8"):
      policy = mor_jax.Policy.uniform(recipe, execution=execution)
      loss = lambda x, w, p=policy: jnp.sum(  # noqa: E731
          mor_jax.dot_general(x, w, DIMS, policy=p).astype(jnp.float32)
          * 1e-30)
      y = mor_jax.dot_general(x, w, DIMS, policy=policy)
      runs.append((y, *jax.grad(loss, (0, 1))(x, w)))
    for got, want in zip(*runs[::-1]):
      got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
      assert _finite(got) and _finite(want), recipe
      assert np.linalg.norm(got - want) <= 1e-2 * np.linalg.norm(want)
  return ("finite, as emulation's to bfloat16's tolerance: XLA's FP8 path "
          "applies the two scales in an order that overflows only where the "
          "product does (docs/numerics.md 6.1; the Hopper kernels do not "
          "yet)")


@row("ratio max/min beyond float32", "mor_quantize([1e-30, 1e30], ...)"
     ".stats.dynamic_range")
def _():
  x = jnp.array([1e-30, 1e30])
  r = mor_jax.mor_quantize(x, mor_jax.SubTensorMoR(mode="three_way",
                                                   block_shape=(None,)))
  want = np.log2(np.float64(np.float32(1e30)) / np.float64(np.float32(1e-30)))
  np.testing.assert_allclose(float(r.stats.dynamic_range), want, rtol=1e-6)
  return f"finite: the range in bits, log2(max/min) = {want:.2f}"


@row("values that flush to zero on dequantization",
     "mor_quantize([1e-35, 2**-126], TensorLevelMoR(block_shape=(None,), "
     "scaling='fp32'))")
def _():
  x = jnp.array([1e-35, 2.0**-126], jnp.float32)
  r = mor_jax.mor_quantize(x, mor_jax.TensorLevelMoR(block_shape=(None,),
                                                     scaling="fp32"))
  err = float(r.stats.error[0])
  true = float(mor_jax.relative_error(x, r.value))
  want = ref.scaled_errors(np.asarray(x), "E4M3", (None,), "fp32")[0].item()
  np.testing.assert_allclose(err, want / 2, rtol=1e-6)
  assert float(r.value[1]) == 0.0 and true == 0.5
  return (f"documented corner (docs/numerics.md 4): MoR's scaled-domain error "
          f"{err:.4f} counts the grid value; relative_error of the flushed "
          f"value is {true}")


@row("all-zero tensor", "mor_quantize(zeros((4, 4)), TensorLevelMoR())")
def _():
  r = mor_jax.mor_quantize(jnp.zeros((4, 4)), mor_jax.TensorLevelMoR())
  assert int(r.choice) == 0 and not np.asarray(r.value).any()
  assert float(r.stats.chosen_error) == 0.0
  return "E4M3 with scale 1, exact zeros, error 0"


# ---------------------------------------------------------------------------
# Arguments.


@row("threshold as a NumPy scalar", "TensorLevelMoR(threshold=np.float32(0.05))")
def _():
  t = mor_jax.TensorLevelMoR(threshold=np.float32(0.05))
  assert type(t.threshold) is float
  return f"accepted, stored as the float {t.threshold!r}"


@row("threshold as a 0-d JAX array", "TensorLevelMoR(threshold=jnp.float32(0.05))")
def _():
  t = mor_jax.TensorLevelMoR(threshold=jnp.float32(0.05))
  assert type(t.threshold) is float and t.threshold == float(np.float32(0.05))
  return f"accepted, stored as the float {t.threshold!r}"


@row("PolicyRules sizes as NumPy integers",
     "PolicyRules(min_size=np.int64(64), multiple_of=np.int32(16))")
def _():
  rules = mor_jax.PolicyRules(min_size=np.int64(64), multiple_of=np.int32(16))
  assert (type(rules.min_size), type(rules.multiple_of)) == (int, int)
  return f"accepted, stored as the ints {rules.min_size}, {rules.multiple_of}"


@dataclasses.dataclass
class Unhashable:
  """A predicate as a plain (not frozen) dataclass: no hash."""

  threshold: float = 0.05

  def __call__(self, m, fmt):
    return m.error(fmt) < self.threshold


@row("predicate that is not hashable (recipes are static arguments of jit)",
     "Recipe(candidates=((E4M3, Unhashable()), (BF16, None)), ...)",
     ValueError)
def _():
  mor_jax.Recipe(candidates=((E4M3, Unhashable()), (BF16, None)),
                 block_shape=(1, None))


@row("threshold as a bool", "TensorLevelMoR(threshold=True)", ValueError)
def _():
  mor_jax.TensorLevelMoR(threshold=True)


@row("threshold in percent", "TensorLevelMoR(threshold=4.5)", ValueError)
def _():
  mor_jax.TensorLevelMoR(threshold=4.5)


@row("threshold not positive", "ErrorBelow(0.0)", ValueError)
def _():
  mor_jax.ErrorBelow(0.0)


@row("dequantize of a plain array", "dequantize(jnp.ones(3))", TypeError)
def _():
  mor_jax.dequantize(jnp.ones(3))


def _qa():
  return mor_jax.quantize(jnp.ones((4, 4)), E4M3, block_shape=(2, 2))


@row("dequantize of a tampered QuantizedArray",
     "dequantize(dataclasses.replace(qa, scale=jnp.ones(3)))", ValueError)
def _():
  mor_jax.dequantize(dataclasses.replace(_qa(), scale=jnp.ones(3)))


@row("dequantize of codes of another format",
     "dequantize(dataclasses.replace(qa, fmt=E5M2))", TypeError)
def _():
  mor_jax.dequantize(dataclasses.replace(_qa(), fmt=E5M2))


@row("dequantize to a non-float dtype", "dequantize(qa, jnp.int32)", TypeError)
def _():
  mor_jax.dequantize(_qa(), jnp.int32)


@row("x_hat that does not broadcast",
     "relative_error(ones((3, 4)), ones(5))", ValueError)
def _():
  mor_jax.relative_error(jnp.ones((3, 4)), jnp.ones(5))


@row("integer input", "quantize(jnp.arange(4), E4M3, block_shape=(None,))",
     TypeError)
def _():
  mor_jax.quantize(jnp.arange(4), E4M3, block_shape=(None,))


@row("block_shape of the wrong length",
     "quantize(ones((4, 4)), E4M3, block_shape=(2,))", ValueError)
def _():
  mor_jax.quantize(jnp.ones((4, 4)), E4M3, block_shape=(2,))


@row("block_shape entry not positive",
     "quantize(ones((4, 4)), E4M3, block_shape=(0, None))", ValueError)
def _():
  mor_jax.quantize(jnp.ones((4, 4)), E4M3, block_shape=(0, None))


@row("unknown scaling", "quantize(..., scaling='e4m3')", ValueError)
def _():
  mor_jax.quantize(jnp.ones(4), E4M3, block_shape=(None,), scaling="e4m3")


@row("format that is not FP8", "quantize(ones(4), BF16, block_shape=(None,))",
     ValueError)
def _():
  mor_jax.quantize(jnp.ones(4), BF16, block_shape=(None,))


@row("group_shape not a multiple of block_shape",
     "quantize(ones((8, 8)), E4M3, block_shape=(2, 2), group_shape=(3, 2))",
     ValueError)
def _():
  mor_jax.quantize(jnp.ones((8, 8)), E4M3, block_shape=(2, 2),
                   group_shape=(3, 2))


@row("block of more than 2**31 - 1 elements",
     "quantize of a (2**31,) array, block_shape=(None,) (under eval_shape)",
     ValueError)
def _():
  jax.eval_shape(lambda v: mor_jax.quantize(v, E4M3, block_shape=(None,)),
                 jax.ShapeDtypeStruct((2**31,), jnp.float32))


@row("tensor of more than 2**31 - 1 elements in smaller blocks",
     "quantize of a (2**31,) array, block_shape=(2**20,) (under eval_shape)")
def _():
  q = jax.eval_shape(
      lambda v: mor_jax.quantize(v, E4M3, block_shape=(2**20,)),
      jax.ShapeDtypeStruct((2**31,), jnp.float32))
  assert q.scale.shape == (2**11,)
  return "runs: each block is counted alone"


@row("dot_general operand of more than 2**31 - 1 elements",
     "value and gradients of dot_general of a (2**19 + 1, 4096) lhs, default "
     "policy (under eval_shape)")
def _():
  dx, dw = jax.eval_shape(
      jax.grad(lambda x, w: jnp.sum(mor_jax.dot_general(
          x, w, DIMS, policy=mor_jax.Policy()).astype(jnp.float32)), (0, 1)),
      jax.ShapeDtypeStruct((2**19 + 1, 4096), jnp.bfloat16),
      jax.ShapeDtypeStruct((4096, 16), jnp.bfloat16))
  assert (dx.shape, dw.shape) == ((2**19 + 1, 4096), (4096, 16))
  return ("runs: per-row blocks, the tensor's count summed exactly; XLA's "
          "passes and GEMM for that array (the kernels index in int32)")


@row("per-tensor gradient of more than 2**31 - 1 elements",
     "dot_general of (2**16, 64) by (64, 2**15), gradient recipe "
     "TensorLevelMoR(block_shape=(None, None)) (under eval_shape)",
     ValueError)
def _():
  policy = mor_jax.Policy(
      gradient=mor_jax.TensorLevelMoR(block_shape=(None, None)))
  jax.eval_shape(
      lambda x, w: mor_jax.dot_general(x, w, DIMS, policy=policy),
      jax.ShapeDtypeStruct((2**16, 64), jnp.bfloat16),
      jax.ShapeDtypeStruct((64, 2**15), jnp.bfloat16))


@row("recipe that is not a Recipe", "mor_quantize(x, 'e4m3')", TypeError)
def _():
  mor_jax.mor_quantize(jnp.ones(4), "e4m3")


@row("recipe block_shape of the wrong rank",
     "mor_quantize(ones(4), TensorLevelMoR())", ValueError)
def _():
  mor_jax.mor_quantize(jnp.ones(4), mor_jax.TensorLevelMoR())


@row("yardstick that is not an FP8 format", "ErrorNotAbove(BF16), "
     "ErrorNotAbove('E5M2')", ValueError)
def _():
  with pytest.raises(ValueError, match="yardstick"):
    mor_jax.ErrorNotAbove(BF16)
  mor_jax.ErrorNotAbove("E5M2")


@dataclasses.dataclass(frozen=True)
class PerElement:
  """A wrong predicate: one bool per element, not per decision unit."""

  def __call__(self, m, fmt):
    return jnp.ones(m.stats.amax.shape + (4,), bool)


@row("predicate of the wrong shape",
     "Recipe with a predicate returning a bool per element", TypeError)
def _():
  recipe = mor_jax.Recipe(candidates=((E4M3, PerElement()), (BF16, None)),
                          block_shape=(None,))
  mor_jax.mor_quantize(jnp.ones(4), recipe)


@row("mor_codes with two FP8 candidates",
     "mor_codes(x, SubTensorMoR(mode='three_way'))", ValueError)
def _():
  mor_jax.mor_codes(jnp.ones((4, 4)), mor_jax.SubTensorMoR(mode="three_way"))


@row("Policy recipe of rank 3",
     "Policy(weight=TensorLevelMoR(block_shape=(1, 1, None)))", ValueError)
def _():
  mor_jax.Policy(weight=mor_jax.TensorLevelMoR(block_shape=(1, 1, None)))


@row("unknown execution", "Policy(execution='fast')", ValueError)
def _():
  mor_jax.Policy(execution="fast")


@row("dot_general with mismatched contraction",
     "dot_general(ones((2, 3)), ones((4, 5)), (((1,), (0,)), ((), ())))",
     ValueError)
def _():
  mor_jax.dot_general(jnp.ones((2, 3)), jnp.ones((4, 5)), DIMS,
                      policy=mor_jax.Policy())


@row("dot_general of integers", "dot_general(arange(6).reshape(2, 3), ...)",
     TypeError)
def _():
  mor_jax.dot_general(jnp.arange(6).reshape(2, 3), jnp.ones((3, 2)), DIMS,
                      policy=mor_jax.Policy())


@row("dot_general with policy=None", "dot_general(x, w, dims, policy=None)")
def _():
  x, w = jnp.arange(6.0).reshape(2, 3), jnp.ones((3, 2))
  got = mor_jax.dot_general(x, w, DIMS, policy=None)
  np.testing.assert_array_equal(got, jax.lax.dot_general(x, w, DIMS))
  return ("plain jax.lax.dot_general, as MoRDense(policy=None) and "
          "PolicyRules mean None")


@row("jax.export with a block spanning a symbolic dimension nothing bounds "
     "(its int32 element count could overflow)",
     "export(jit(quantize(x, E4M3, block_shape=(None, None))))"
     "(ShapeDtypeStruct(symbolic_shape('b, 64'), float32))", ValueError)
def _():
  from jax import export  # pylint: disable=g-import-not-at-top
  spec = jax.ShapeDtypeStruct(export.symbolic_shape("b, 64"), jnp.float32)
  export.export(jax.jit(lambda x: mor_jax.quantize(
      x, E4M3, block_shape=(None, None))))(spec)


@row("forward-mode autodiff (jax.jvp, jax.jacfwd, jax.hessian): the GEMM is "
     "a jax.custom_vjp; reverse over reverse (jax.grad of jax.grad) works",
     "jax.jvp(lambda x: dot_general(x, w, ...), (x,), (x,))", TypeError)
def _():
  w = jnp.ones((3, 2))
  jax.jvp(lambda x: mor_jax.dot_general(x, w, DIMS, policy=mor_jax.Policy()),
          (jnp.ones((2, 3)),), (jnp.ones((2, 3)),))


@row("unknown implementation", "use_implementation('cuda')", ValueError)
def _():
  with mor_jax.use_implementation("cuda"):
    pass


@row("mor_jax.nnx.convert of a linen model",
     "mor_jax.nnx.convert(MoRDense(4), Policy())", TypeError)
def _():
  mor_jax.nnx.convert(MoRDense(4), mor_jax.Policy())


def _layer_state():
  layer, x = MoRDense(4), jnp.ones((2, 8))
  variables = jax.jit(layer.init)(jax.random.key(0), x)
  return layer, x, variables


@row("summarize or flatten_stats given apply's whole mutable state (the "
     "collection's name would prefix every key)",
     "summarize(state), state = layer.apply(..., mutable=['mor_stats'])[1]",
     ValueError)
def _():
  layer, x, variables = _layer_state()
  _, state = jax.jit(functools.partial(layer.apply, mutable=["mor_stats"]))(
      variables, x)
  mor_jax.summarize(state)


@row("linen apply with probes restored without a target",
     "layer.apply(msgpack_restore(msgpack_serialize(to_state_dict(v))), x)",
     ValueError)
def _():
  from flax import serialization  # pylint: disable=g-import-not-at-top
  layer, x, variables = _layer_state()
  restored = serialization.msgpack_restore(serialization.msgpack_serialize(
      serialization.to_state_dict(variables)))
  layer.apply(restored, x)


@row("report.CsvWriter in a directory that does not exist",
     "CsvWriter('no/such/dir/mor.csv')", FileNotFoundError)
def _():
  from mor_jax import report  # pylint: disable=g-import-not-at-top
  report.CsvWriter("no/such/dir/mor.csv")


@row("mor_jax.nnx.flatten_stats of linen variables",
     "mor_jax.nnx.flatten_stats({'mor_stats': ...})", TypeError)
def _():
  mor_jax.nnx.flatten_stats({"mor_stats": {}})


@row("NNX layers stacked by nnx.vmap (scan over layers)",
     "mor_jax.nnx.convert of an nnx.Linear whose kernel is (3, 16, 16)",
     ValueError)
def _():
  @nnx.split_rngs(splits=3)
  @nnx.vmap(in_axes=(0,), out_axes=0)
  def stack(rngs):
    return nnx.Linear(16, 16, rngs=rngs)

  mor_jax.nnx.convert(stack(nnx.Rngs(0)), mor_jax.Policy())


@row("nnx.vmap over examples with the model broadcast: its forward "
     "statistics would differ per example (docs/layers.md maps a pure "
     "function of the state instead)",
     "nnx.vmap(lambda m, x: m(x), in_axes=(None, 0))(MoRLinear(...), x)",
     ValueError)
def _():
  layer = mor_jax.nnx.MoRLinear(16, 4, policy=mor_jax.Policy(),
                                rngs=nnx.Rngs(0))
  nnx.vmap(lambda m, x: m(x), in_axes=(None, 0))(layer, jnp.ones((3, 2, 16)))


# ---------------------------------------------------------------------------
# The table.


def outcome(r: Row) -> str:
  """Runs a row: the outcome shown in the table; raises if it is wrong."""
  if r.error is None:
    return r.run()
  with pytest.raises(r.error) as info:
    r.run()
  return f"`{r.error.__name__}`: {info.value}"


def render() -> str:
  lines = ["| bad input | call | tested outcome |", "|---|---|---|"]
  for r in ROWS:
    cells = [r.kind, f"`{r.call}`", outcome(r)]
    lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells)
                 + " |")
  return "\n".join(lines)


def _doc_table() -> str:
  text = DOC.read_text()
  return text[text.index(BEGIN) + len(BEGIN):text.index(END)].strip()


def test_table_is_current():
  assert render() == _doc_table(), (
      "docs/robustness.md is stale: run `python -m tests.test_robustness`")


# ---------------------------------------------------------------------------
# The same classes of input through each implementation (Pallas: interpret
# mode off a GPU; small shapes).


@pytest.mark.parametrize("impl", cases.IMPLS)
def test_numerics_under_each_implementation(impl):
  big = np.array([[3.3e38, -3.4e38, 1.0, F32_MAX], [1e38, -F32_MAX, 2.0, 0.5],
                  [1e-30, 1e30, np.nan, 1.0], [np.inf, 2.0, 3.0, 0.0]],
                 np.float32)
  f16 = np.array([[65504.0, -65504.0, 3.0, 1.0]] * 2, np.float16)

  def fn(x, h):
    out = {}
    for scaling in ("fp32", "e8m0", "gam"):
      kw = dict(block_shape=(1, None), scaling=scaling)
      out[scaling] = (
          mor_jax.fake_quantize(x, E4M3, **kw),
          mor_jax.dequantize(mor_jax.quantize(x, E5M2, **kw)),
          mor_jax.fake_quantize(h, E4M3, **kw),
          mor_jax.mor_quantize(x, mor_jax.SubTensorMoR(
              mode="three_way", block_shape=(1, 4), scaling=scaling)))
    return out

  got = impl.run(fn, big, f16)
  finite = np.isfinite(big)
  checks = []
  for scaling, (fq, dq, fh, r) in got.items():
    def check(scaling=scaling, fq=fq, dq=dq, fh=fh, r=r):
      assert np.isfinite(np.asarray(fq))[finite].all(), fq
      assert np.isfinite(np.asarray(dq))[finite].all(), dq
      assert np.isfinite(np.asarray(fh, np.float32)).all(), fh
      want = ref.fake_quantize(big, "E4M3", (1, None), scaling)
      data.assert_within_ulp(np.asarray(fq), want)
      want_h = ref.to_dtype(ref.fake_quantize(f16, "E4M3", (1, None), scaling),
                            np.float16)
      data.assert_within_ulp(np.asarray(fh), want_h)
      np.testing.assert_array_equal(np.asarray(r.choice)[2:].ravel(), [2, 2])
      assert np.isfinite(np.asarray(r.stats.dynamic_range))
      np.testing.assert_allclose(float(r.stats.dynamic_range),
                                 np.log2(F32_MAX / 1e-30), rtol=1e-6)
    checks.append((scaling, check))
  cases.check_each(checks)


@pytest.mark.parametrize("impl", cases.IMPLS)
def test_zero_size_under_each_implementation(impl):
  def fn(x):
    return (mor_jax.quantize(x, E4M3, block_shape=(1, None)),
            mor_jax.fake_quantize(x, E5M2, block_shape=(4, 4), scaling="e8m0"),
            mor_jax.mor_quantize(x, mor_jax.TensorLevelMoR(block_shape=(1, None))),
            mor_jax.mor_quantize(x, mor_jax.SubTensorMoR(block_shape=(4, 4))))

  for shape in ((0, 8), (8, 0)):
    qa, fq, rt, rb = impl.run(fn, jnp.zeros(shape), kernels=False)
    assert qa.data.shape == fq.shape == rt.value.shape == rb.value.shape == shape
    assert int(rt.choice) == 1 and rb.choice.size == 0
    assert _nothing_quantized(rt.stats) and _nothing_quantized(rb.stats)


if __name__ == "__main__":
  text = DOC.read_text()
  head, rest = text.split(BEGIN)
  _, tail = rest.split(END)
  DOC.write_text(f"{head}{BEGIN}\n{render()}\n{END}{tail}")
  print(f"wrote {DOC}")
