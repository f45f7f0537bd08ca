"""Property tests of the numerics core (hypothesis with fixed seeds, chex).

The hypothesis tests run under the default setting; the deterministic ones
take each implementation (``tests.cases.IMPLS``), as the numerics suites do.
"""

from __future__ import annotations

import chex
import hypothesis
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import mor_jax
from tests import cases
from tests import data
from tests import reference as ref

SETTINGS = hypothesis.settings(derandomize=True, max_examples=30,
                               deadline=None, print_blob=True)
FMTS = (mor_jax.E4M3, mor_jax.E5M2)


@st.composite
def problems(draw, max_rank=3):
  rank = draw(st.integers(1, max_rank))
  shape = tuple(draw(st.lists(st.integers(1, 24), min_size=rank,
                              max_size=rank)))
  block = tuple(draw(st.one_of(st.none(), st.integers(1, 16)))
                for _ in shape)
  scaling = draw(st.sampled_from(("fp32", "e8m0", "gam")))
  group = None
  if scaling == "gam" and draw(st.booleans()):
    group = tuple(None if b is None else b * draw(st.integers(1, 3))
                  for b in block)
  fmt = draw(st.sampled_from(FMTS))
  dtype = draw(st.sampled_from(list(data.DTYPES)))
  magnitude = draw(st.integers(-2, 2) if dtype == "float16"
                   else st.integers(-30, 30))
  seed = draw(st.integers(0, 2**16))
  return shape, block, scaling, group, fmt, dtype, magnitude, seed


def _tensor(shape, dtype, magnitude, seed):
  rng = np.random.default_rng(seed)
  x = rng.standard_normal(shape) * 10.0**magnitude
  x *= 10.0 ** rng.uniform(-1, 1, shape)  # some spread within blocks
  return x.astype(data.DTYPES[dtype])


def _ideal_scales(x, fmt, block_shape):
  """F / amax per block in float32, capped at 2**126 (NaN for zero blocks)."""
  x32 = ref.flush(x)
  out = np.full(ref.grid_of(x.shape, ref.resolve(x.shape, block_shape)),
                np.nan, np.float32)
  for idx, sl in ref.blocks(x.shape, block_shape):
    a = np.abs(x32[sl]).max()
    if a > 0:
      out[idx] = min(np.float32(fmt.max) / a, np.float32(2.0**126))
  return out


@SETTINGS
@hypothesis.given(problems())
def test_finite_input_properties(problem):
  shape, block, scaling, group, fmt, dtype, magnitude, seed = problem
  x = _tensor(shape, dtype, magnitude, seed)
  qa = mor_jax.quantize(x, fmt, block_shape=block, scaling=scaling,
                        group_shape=group)
  codes = np.asarray(qa.data).astype(np.float32)
  scale = np.asarray(qa.scale)
  chex.assert_shape(qa.data, x.shape)
  chex.assert_tree_all_finite((codes, scale))
  # No saturation: every scaled element fits in the format without clipping.
  for idx, sl in ref.blocks(x.shape, block):
    scaled = np.abs(ref.flush(x[sl]).astype(np.float64)) * np.float64(scale[idx])
    assert scaled.max(initial=0) <= fmt.max * (1 + 2.0**-23), (idx, scaled.max())
  ideal = _ideal_scales(x, fmt, block)
  nonzero = ~np.isnan(ideal)
  np.testing.assert_array_equal(scale[~nonzero], 1.0)
  if scaling == "gam":
    assert (scale[nonzero] > ideal[nonzero] / 2).all()
    assert (scale[nonzero] <= ideal[nonzero]).all()
    # One mantissa per group.
    mant = np.frexp(scale)[0]
    group = group or (None,) * len(shape)
    for gidx, gsl in ref.blocks(scale.shape, tuple(
        None if g is None else max(1, g // b)
        for g, b in zip(group, ref.resolve(shape, block)))):
      in_group = mant[gsl][nonzero[gsl]]
      assert np.unique(in_group).size <= 1, (gidx, in_group)
  elif scaling == "e8m0":
    np.testing.assert_array_equal(np.frexp(scale)[0], 0.5)
  else:
    np.testing.assert_array_equal(scale[nonzero], ideal[nonzero])
  deq = mor_jax.dequantize(qa)
  fq = mor_jax.fake_quantize(x, fmt, block_shape=block, scaling=scaling,
                             group_shape=group)
  chex.assert_tree_all_finite((deq, fq))
  chex.assert_trees_all_equal_dtypes(deq, fq, x)


@SETTINGS
@hypothesis.given(problems(), st.integers(-40, 40))
def test_values_on_the_grid_round_trip(problem, exponent):
  shape, block, scaling, group, fmt, _, _, seed = problem
  rng = np.random.default_rng(seed)
  codes = rng.integers(0, 256, shape).astype(np.uint8).view(fmt.dtype)
  grid = codes.astype(np.float32)
  grid[~np.isfinite(grid)] = 0.0
  # Each block holds +-F, so gam blocks share the mantissa 1 of 2**k / F.
  for _, sl in ref.blocks(shape, block):
    grid[tuple(s.start for s in sl)] = fmt.max
  x = (grid * np.float32(2.0**exponent)).astype(np.float32)
  qa = mor_jax.quantize(x, fmt, block_shape=block, scaling=scaling,
                        group_shape=group)
  np.testing.assert_array_equal(np.asarray(mor_jax.dequantize(qa)), x)
  np.testing.assert_array_equal(
      np.asarray(mor_jax.fake_quantize(x, fmt, block_shape=block,
                                       scaling=scaling, group_shape=group)), x)


@SETTINGS
@hypothesis.given(problems(), st.integers(-40, 40))
def test_e8m0_round_trips_any_grid_values(problem, exponent):
  shape, block, _, _, fmt, _, _, seed = problem
  rng = np.random.default_rng(seed)
  grid = rng.integers(0, 256, shape).astype(np.uint8).view(fmt.dtype)
  grid = np.nan_to_num(grid.astype(np.float32), nan=0, posinf=0, neginf=0)
  x = (grid * np.float32(2.0**exponent)).astype(np.float32)
  fq = mor_jax.fake_quantize(x, fmt, block_shape=block, scaling="e8m0")
  np.testing.assert_array_equal(np.asarray(fq), x)


@pytest.mark.parametrize("impl", cases.IMPLS)
def test_all_zero_tensors_and_blocks(impl):
  x = jnp.zeros((6, 10), jnp.bfloat16)
  # A zero block inside a nonzero tensor: scale 1, exact zeros.
  y = x.at[2:, :].set(3.0)
  for fmt in FMTS:
    for scaling in ("fp32", "e8m0", "gam"):
      kw = dict(block_shape=(2, 5), scaling=scaling)

      def fn(v, w, fmt=fmt, kw=kw):
        fq = mor_jax.fake_quantize(v, fmt, **kw)
        return (mor_jax.quantize(v, fmt, **kw), fq,
                mor_jax.relative_error(v, fq), mor_jax.quantize(w, fmt, **kw))

      qa, fq, err, qy = impl.run(fn, x, y)
      np.testing.assert_array_equal(np.asarray(qa.scale), 1.0)
      np.testing.assert_array_equal(np.asarray(qa.data, np.float32), 0.0)
      np.testing.assert_array_equal(np.asarray(fq, np.float32), 0.0)
      assert float(err) == 0.0
      np.testing.assert_array_equal(np.asarray(qy.scale[0]), 1.0)
      np.testing.assert_array_equal(np.asarray(qy.data[:2], np.float32), 0.0)


@SETTINGS
@hypothesis.given(problems(max_rank=2))
def test_jit_and_eager_agree(problem):
  shape, block, scaling, group, fmt, dtype, magnitude, seed = problem
  x = _tensor(shape, dtype, magnitude, seed)
  kw = dict(block_shape=block, scaling=scaling, group_shape=group)

  def run(v):
    return (mor_jax.quantize(v, fmt, **kw), mor_jax.fake_quantize(v, fmt, **kw))

  eager = run(x)
  jitted = jax.jit(run)(x)
  chex.assert_trees_all_equal(
      jax.tree.map(lambda a: np.asarray(a).view(np.uint8), eager),
      jax.tree.map(lambda a: np.asarray(a).view(np.uint8), jitted))


@pytest.mark.parametrize("impl", cases.IMPLS)
def test_vmap_matches_a_loop(impl):
  x = _tensor((5, 12, 20), "bfloat16", 0, 7)
  kw = dict(block_shape=(4, None), scaling="gam")
  one = lambda v: (mor_jax.quantize(v, mor_jax.E4M3, **kw),  # noqa: E731
                   mor_jax.fake_quantize(v, mor_jax.E5M2, **kw))
  batched, fq = impl.run(jax.vmap(one), x)
  loop = impl.run(lambda v: [one(v[i]) for i in range(x.shape[0])], x)
  for i, (qa_i, fq_i) in enumerate(loop):
    data.assert_codes_equal(batched.data[i], qa_i.data)
    data.assert_bits_equal(batched.scale[i], qa_i.scale)
    np.testing.assert_array_equal(np.asarray(fq[i]), np.asarray(fq_i))


@pytest.mark.parametrize("impl", cases.IMPLS)
def test_grad_is_straight_through(impl):
  x = _tensor((16, 24), "float32", 0, 3)
  w = np.random.default_rng(4).standard_normal(x.shape).astype(np.float32)

  def loss(v):
    return jnp.sum(mor_jax.fake_quantize(v, mor_jax.E4M3,
                                         block_shape=(8, 8)) * w)

  np.testing.assert_array_equal(np.asarray(impl.run(jax.grad(loss), x)), w)
  g = impl.run(jax.vmap(jax.grad(loss)), jnp.stack([x, 2 * x]))
  np.testing.assert_array_equal(np.asarray(g), np.stack([w, w]))
  gb = impl.run(jax.grad(lambda v: loss(v.astype(jnp.float32))),
                x.astype(jnp.bfloat16))
  assert gb.dtype == jnp.bfloat16


def test_scale_dtype_and_e8m0_is_representable():
  x = _tensor((64, 64), "float32", 20, 5)
  s = mor_jax.compute_scales(x, mor_jax.E5M2, block_shape=(16, 16),
                             scaling="e8m0")
  assert s.dtype == jnp.float32
  as_e8m0 = np.asarray(s).astype(ml_dtypes.float8_e8m0fnu).astype(np.float32)
  np.testing.assert_array_equal(as_e8m0, np.asarray(s))
