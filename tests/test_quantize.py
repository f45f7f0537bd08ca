"""quantize / dequantize / fake_quantize / relative_error against the NumPy reference.

The numerics tests take an implementation (``tests.cases.IMPLS``) and run
every call under it, checked (``cases.Impl.run``): one suite for XLA and
for the Pallas kernels (interpret mode off a GPU, the compiled kernels on
one).
"""

from __future__ import annotations

import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mor_jax
from tests import cases
from tests import data
from tests import reference as ref

FMTS = cases.FMTS
SCALINGS = ("fp32", "e8m0", "gam")

# (shape, block_shape, group_shape): 1-D to 4-D, divisible and not, several
# groups (group_shape only applies to gam; other scalings ignore the entry).
PARTITIONS = [
    ((37,), (None,), None),
    ((37,), (8,), None),
    ((256,), (32,), (64,)),
    ((64, 48), (None, None), None),
    ((64, 48), (1, None), None),
    ((64, 48), (None, 1), None),
    ((64, 48), (16, 16), None),
    ((130, 77), (32, 32), (64, None)),
    ((130, 77), (1, 32), (None, 64)),
    ((130, 77), (128, 128), None),
    ((3, 40, 50), (1, 8, None), None),
    ((3, 40, 50), (None, 16, 16), (None, 32, None)),
    ((2, 3, 17, 33), (1, 2, 8, 16), None),
    ((2, 3, 17, 33), (None, None, 4, None), (None, None, 8, None)),
    # Blocks no power of two divides well: 4-column tiles, rows mode.
    ((50, 90), (12, 20), (24, None)),
]
# Blocks that cut across folded leading dimensions: Pallas declines them and
# XLA runs them under either setting, so only the XLA run checks them here
# (test_pallas_declines_exactly_the_untiled_partitions pins the set).
UNTILED = frozenset({11, 12, 13})


def _groups():
  """name -> cases (p, scaling, fmt, dtype, kind) compiled together.

  Every partition x scaling x format, one group per partition, dtype and
  data kind rotating; and every dtype x kind on one awkward 2-D partition.
  """
  combos = list(itertools.product(range(len(PARTITIONS)), SCALINGS, FMTS))
  dtype_kinds = [(d, k) for d in data.DTYPES
                 for k in (data.F16_KINDS if d == "float16" else data.KINDS)]
  groups = {f"p{p}": [] for p in range(len(PARTITIONS))}
  for i, (p, scaling, fmt) in enumerate(combos):
    groups[f"p{p}"].append(
        (p, scaling, fmt, *dtype_kinds[(i * 7) % len(dtype_kinds)]))
  groups["kinds"] = [(7, SCALINGS[j % 3], ("E4M3", "E5M2")[j % 2], dtype, kind)
                     for j, (dtype, kind) in enumerate(dtype_kinds)]
  return groups


GROUPS = _groups()


def _impl_groups():
  for param in cases.IMPLS:
    (impl,) = param.values
    for name, group in GROUPS.items():
      if impl.kernels and group[0][0] in UNTILED:
        continue
      yield pytest.param(impl, name, id=f"{impl.name}-{name}")


@pytest.mark.parametrize("impl,group", list(_impl_groups()))
def test_matches_reference(impl, group):
  """A group's cases in one compiled function: a compile costs more than
  the checks of a case."""
  xs, fns, checks = [], [], []
  for p, scaling, fmt, dtype, kind in GROUPS[group]:
    shape, block_shape, group_shape = PARTITIONS[p]
    group_shape = group_shape if scaling == "gam" else None
    xs.append(data.make(kind, shape, data.DTYPES[dtype], seed=p))
    fns.append(cases.quantize_all(fmt, block_shape, scaling, group_shape))
    checks.append((f"p{p}-{scaling}-{fmt}-{dtype}-{kind}", functools.partial(
        cases.check_quantize, x=xs[-1], fmt=fmt, block_shape=block_shape,
        scaling=scaling, group_shape=group_shape)))
  got = impl.run(lambda *vs: [fn(v) for fn, v in zip(fns, vs)], *xs,
                 kernels=GROUPS[group][0][0] not in UNTILED)
  cases.check_each((label, functools.partial(check, g))
                   for (label, check), g in zip(checks, got))


def test_pallas_declines_exactly_the_untiled_partitions():
  for p, (shape, block_shape, _) in enumerate(PARTITIONS):
    cases.PALLAS.trace(lambda v, b=block_shape: mor_jax.quantize(
        v, mor_jax.E4M3, block_shape=b).data, np.ones(shape, np.float32),
                       kernels=p not in UNTILED)


def test_relative_error_matches_float64_without_underflow():
  rng = np.random.default_rng(1)
  for magnitude in (1e-36, 1e-20, 1.0, 1e20, 1e36):
    x = (rng.standard_normal((64, 64)) * magnitude).astype(np.float32)
    x_hat = (x * (1 + rng.uniform(-0.05, 0.05, x.shape))).astype(np.float32)
    want = ref.relative_error(x, x_hat)
    got = float(mor_jax.relative_error(x, x_hat))
    assert want > 0.02
    np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize("impl", cases.IMPLS)
def test_relative_error_of_tiny_fake_quantized_tensor_is_not_zero(impl):
  # docs/numerics.md section 4: at 1e-36, x - x_hat is a float32 subnormal; E must not vanish.
  x = (np.random.default_rng(2).standard_normal((128, 128)) * 1e-36).astype(
      np.float32)

  def fn(v):
    fq = mor_jax.fake_quantize(v, mor_jax.E4M3, block_shape=(None, None))
    return fq, mor_jax.relative_error(v, fq)

  fq, err = impl.run(fn, x)
  np.testing.assert_allclose(float(err), ref.relative_error(x, np.asarray(fq)),
                             rtol=1e-5)
  assert 0.01 < float(err) < 0.05


def test_relative_error_edge_cases():
  assert float(mor_jax.relative_error(jnp.zeros(5), jnp.ones(5))) == 0.0
  x = jnp.array([1.0, jnp.nan, jnp.inf, 2.0])
  assert float(mor_jax.relative_error(x, jnp.array([1.0, 0.0, 0.0, 1.0]))) == 0.25
  # Scalar x_hat broadcasts.
  assert float(mor_jax.relative_error(jnp.array([2.0, 4.0]), 2.0)) == 0.25
  # A non-finite approximation of a finite value is reported, not hidden.
  assert np.isinf(float(mor_jax.relative_error(jnp.ones(2),
                                               jnp.array([1.0, jnp.inf]))))


def test_large_blocks_sum_stably():
  # One block of 2**20 elements: a naive float32 running sum drifts.
  rng = np.random.default_rng(3)
  x = rng.standard_normal(1 << 20).astype(np.float32)
  fq = mor_jax.fake_quantize(x, mor_jax.E4M3, block_shape=(None,),
                             scaling="fp32")
  np.testing.assert_allclose(float(mor_jax.relative_error(x, fq)),
                             ref.relative_error(x, np.asarray(fq)), rtol=1e-5)


@pytest.mark.parametrize("counts", [
    np.full(3, 2**30 + 12345),                  # past 2**31
    np.full(20000, 2**31 - 1),                  # past 2**40
    np.random.default_rng(0).integers(2**30, 2**31, 7),
    np.random.default_rng(1).integers(0, 2**20, 1000),  # below 2**31
    np.zeros(0, np.int64),
], ids=["2**31", "2**45", "random-large", "random-small", "empty"])
def test_element_counts_past_int32_are_summed_exactly(counts):
  """A tensor's element count (a sharded one's may pass int32) is the
  exact sum of its blocks' int32 counts, rounded once to float32: a
  wrapped count would make the mean error absurd and reject the tensor
  without a word. Reference: Python's integers."""
  from mor_jax import _mor  # pylint: disable=g-import-not-at-top
  from mor_jax import _numerics  # pylint: disable=g-import-not-at-top
  from mor_jax import _passes  # pylint: disable=g-import-not-at-top
  want = np.float32(int(counts.sum()))  # exact in float64, then one rounding
  grid = jnp.asarray(counts, jnp.int32)
  st = _passes.BlockStats(jnp.ones(grid.shape), jnp.zeros(grid.shape, bool),
                          grid, jnp.ones(grid.shape))
  for got in (jax.jit(_mor.whole)(st).count,
              jax.jit(_numerics.total_count)(grid)):
    assert got.dtype == jnp.float32 and got == want, (got, want)


@pytest.mark.parametrize("fmt", list(FMTS))
@pytest.mark.parametrize("impl", cases.IMPLS)
def test_non_finite_values(impl, fmt):
  x = np.array([[1.0, np.nan, -2.0, 0.5], [np.inf, -np.inf, 3.0, 0.0],
                [4.0, 5.0, 6.0, 7.0]], np.float32)
  kw = dict(block_shape=(1, None), scaling="gam")

  def fn(v):
    return (mor_jax.quantize(v, FMTS[fmt], **kw),
            mor_jax.compute_scales(jnp.nan_to_num(v, nan=0, posinf=0,
                                                  neginf=0), FMTS[fmt], **kw),
            mor_jax.fake_quantize(v, FMTS[fmt], **kw))

  qa, finite_scales, fq = impl.run(fn, x)
  codes, scales = ref.quantize(x, fmt, **kw)
  data.assert_codes_equal(qa.data, codes)
  data.assert_bits_equal(qa.scale, scales)
  # Rows with NaN/Inf keep the scale of their finite values.
  data.assert_bits_equal(qa.scale, finite_scales)
  fq = np.asarray(fq)
  np.testing.assert_array_equal(np.isnan(fq), np.isnan(x))
  np.testing.assert_array_equal(fq[np.isinf(x)], x[np.isinf(x)])
  assert np.isfinite(fq[np.isfinite(x)]).all()


@pytest.mark.parametrize("impl", cases.IMPLS)
def test_special_values_among_tiny_and_huge(impl):
  """NaN, +-inf, zeros, a subnormal and 3e38 in blocks of 1e-30s."""
  x = data.make("tiny", (40, 72), np.float32, seed=1)
  x[3, :7] = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-40, 3e38]

  def fn(v):
    return [(mor_jax.quantize(v, FMTS[fmt], block_shape=(16, 32)),
             mor_jax.fake_quantize(v, FMTS[fmt], block_shape=(1, None)))
            for fmt in FMTS]

  for fmt, (qa, fq) in zip(FMTS, impl.run(fn, x)):
    codes, scales = ref.quantize(x, fmt, (16, 32), "gam")
    data.assert_bits_equal(qa.scale, scales)
    data.assert_codes_equal(qa.data, codes)
    data.assert_within_ulp(np.asarray(fq),
                           ref.fake_quantize(x, fmt, (1, None), "gam"))


@pytest.mark.parametrize("impl", cases.IMPLS)
def test_exact_powers_of_two_of_scales_near_cap(impl):
  # Block amax below ~5e-36 reaches the 2**126 cap; a lone 2**-126 too.
  x = np.array([[2.0**-126, 0.0], [1e-36, -3e-37], [1e-30, 0.0]], np.float32)
  got_all = impl.run(lambda v: [mor_jax.compute_scales(
      v, mor_jax.E4M3, block_shape=(1, None), scaling=scaling)
                                for scaling in SCALINGS], x)
  for scaling, got in zip(SCALINGS, got_all):
    want = ref.scales(x, "E4M3", (1, None), scaling)
    data.assert_bits_equal(got, want)
    assert float(got.max()) <= 2.0**126
    if scaling != "gam":  # gam trades the cap's mantissa for the group's
      assert float(got[0, 0]) == float(got[1, 0]) == 2.0**126


def test_exact_division_is_ieee_division():
  # div_rn (behind every scale and reciprocal) against NumPy's float32
  # division: significands that differ in their last bits (the sticky and
  # guard bits decide), every significand pair of a coarse grid, and random
  # operands over the exponent range (quotients at or above 2**126 are
  # capped there; none of the callers' quotients lies below 2**-126).
  from mor_jax import _numerics  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(7)
  mant = np.concatenate([np.arange(0, 1 << 23, 40961),
                         [1, 2, (1 << 23) - 2, (1 << 23) - 1]])
  a, b = (m.ravel() for m in np.meshgrid(mant, mant))
  bits = [(a | (127 << 23), b | (127 << 23))]
  m = rng.integers(0, 1 << 23, 20000)
  near = np.clip(m + rng.integers(-3, 4, m.size), 0, (1 << 23) - 1)
  bits.append((m | (127 << 23), near | (126 << 23)))
  bits.append(tuple(rng.integers(1 << 23, 0x7F800000, (2, 20000))))
  for num_bits, den_bits in bits:
    num = np.asarray(num_bits, np.int32).view(np.float32)
    den = np.asarray(den_bits, np.int32).view(np.float32)
    with np.errstate(over="ignore"):
      want = num / den
    keep = want >= 2.0**-126
    got = np.asarray(jax.jit(_numerics.div_rn)(num[keep], den[keep]))
    data.assert_bits_equal(got, np.minimum(want[keep], np.float32(2.0**126)))


@pytest.mark.parametrize("impl", cases.IMPLS)
def test_subnormal_inputs_are_zeros(impl):
  x = np.array([1e-40, -1e-39, 0.0], np.float32)
  qa = impl.run(lambda v: mor_jax.quantize(v, mor_jax.E4M3,
                                           block_shape=(None,)), x)
  assert float(qa.scale[0]) == 1.0
  assert not np.asarray(qa.data, np.float32).any()


@pytest.mark.parametrize("impl", cases.IMPLS)
def test_empty_and_scalar_inputs(impl):
  # Neither has a tile: Pallas declines both.
  qa = impl.run(lambda v: mor_jax.quantize(v, mor_jax.E4M3, block_shape=(2, 2)),
                jnp.zeros((0, 4)), kernels=False)
  assert qa.data.shape == (0, 4) and qa.scale.shape == (0, 2)
  assert float(mor_jax.relative_error(jnp.zeros((0,)), jnp.zeros((0,)))) == 0
  qa = impl.run(lambda v: mor_jax.quantize(v, mor_jax.E4M3, block_shape=()),
                jnp.float32(3.0), kernels=False)
  assert float(mor_jax.dequantize(qa)) == 3.0


# Bad input: a clear error at trace time that names the argument.


@pytest.mark.parametrize("fn", [mor_jax.quantize, mor_jax.fake_quantize,
                                mor_jax.compute_scales])
@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(x=jnp.arange(4)), TypeError, "x must be a floating-point array"),
    (dict(block_shape=(4,)), ValueError, "block_shape has 1 entries"),
    (dict(block_shape=(4, 0)), ValueError, r"block_shape\[1\] must be a positive"),
    (dict(block_shape=(-1, 4)), ValueError, r"block_shape\[0\] must be a positive"),
    (dict(block_shape=(2.5, 4)), ValueError, r"block_shape\[0\] must be a positive"),
    (dict(block_shape=8), ValueError, "block_shape must be a sequence"),
    (dict(scaling="fp16"), ValueError, "scaling must be one of"),
    (dict(group_shape=(3, None)), ValueError, r"group_shape\[0\]=3 is not a multiple"),
    (dict(group_shape=(4, 4)), ValueError, r"group_shape\[1\]=4 is not a multiple"),
    (dict(group_shape=(4,)), ValueError, "group_shape has 1 entries"),
    (dict(scaling="e8m0", group_shape=(4, None)), ValueError,
     "group_shape applies only to scaling='gam'"),
    (dict(fmt=mor_jax.BF16), ValueError, "fmt must be mor_jax.E4M3 or mor_jax.E5M2"),
    (dict(fmt="e4m3"), ValueError, "fmt must be"),
])
def test_bad_input(fn, kwargs, exc, match):
  args = dict(x=jnp.ones((8, 8)), fmt=mor_jax.E4M3, block_shape=(2, None),
              scaling="gam")
  args.update(kwargs)
  x, fmt = args.pop("x"), args.pop("fmt")
  with pytest.raises(exc, match=match):
    jax.jit(lambda v: fn(v, fmt, **args))(x)
