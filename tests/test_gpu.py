"""docs/numerics.md section 7 on the GPU: results equal the CPU reference there too.

XLA on GPUs deletes an f32 -> f8 -> f32 round trip inside a fusion, which
would make fake quantization a no-op that CPU tests cannot see. These tests
run everything inside one jit on the GPU and compare with the NumPy reference:
the shared check of tests/test_quantize.py (``tests.cases``), at a larger
shape and with the kernels' default tiles.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mor_jax
from tests import cases
from tests import data

pytestmark = pytest.mark.gpu

FMTS = cases.FMTS
PARTITIONS = [((None, None), None), ((1, None), None), ((128, 128), None),
              ((128, 128), (256, None)), ((1, 32), None), ((100, 60), None)]


@pytest.mark.parametrize("block_shape,group_shape", PARTITIONS)
@pytest.mark.parametrize("scaling", ["fp32", "e8m0", "gam"])
@pytest.mark.parametrize("fmt", list(FMTS))
@pytest.mark.parametrize("dtype,kind", [("bfloat16", "normal"),
                                        ("float32", "wide"),
                                        ("float16", "outlier_cols"),
                                        ("bfloat16", "tiny")])
@pytest.mark.parametrize("impl", ["xla", "pallas"])
def test_gpu_matches_reference(block_shape, group_shape, scaling, fmt, dtype,
                               kind, impl):
  group_shape = group_shape if scaling == "gam" else None
  x = data.make(kind, (300, 520), data.DTYPES[dtype], seed=11)
  gpu = jax.devices("gpu")[0]
  got = cases.Impl(impl).run(
      cases.quantize_all(fmt, block_shape, scaling, group_shape),
      jax.device_put(x, gpu))
  assert got[3].devices() == {gpu}
  cases.check_quantize(got, x, fmt, block_shape, scaling, group_shape)


def test_gpu_runs_compiled_kernels():
  """On GPUs "auto" means the compiled Triton kernels, not interpret mode."""
  from mor_jax import _dispatch  # pylint: disable=g-import-not-at-top
  for name in ("pallas", "auto"):
    impl = _dispatch.Implementation(name)
    assert impl.uses_pallas() and not impl.interpret
  x = jnp.ones((256, 256), jnp.bfloat16)
  with mor_jax.use_implementation("pallas"):
    jaxpr = str(jax.make_jaxpr(lambda v: mor_jax.quantize(
        v, mor_jax.E4M3, block_shape=(128, 128)).data)(x))
  assert "pallas_call" in jaxpr and "interpret=False" in jaxpr


@pytest.mark.parametrize("fmt,expected", [("E4M3", 0.0227), ("E5M2", 0.0449)])
def test_fake_quantization_does_not_vanish_in_a_fusion(fmt, expected):
  x = np.random.default_rng(0).standard_normal(1 << 20).astype(np.float32) * 10
  err = jax.jit(lambda v: mor_jax.relative_error(
      v, mor_jax.fake_quantize(v, FMTS[fmt], block_shape=(None,),
                               scaling="e8m0")))(x)
  np.testing.assert_allclose(float(err), expected, rtol=0.02)


def test_a_tensor_past_int32_elements():
  """2**31 + 2**15 bf16 elements under per-row MoR (XLA's passes at that
  size): each row alternates 1.0 and 0.515625, which E4M3 at the scale
  448 / 1 rounds from 231 to 224, so the mean error is 7 / 462 at any row
  count. A count wrapped in int32 made it absurd and rejected the tensor.
  Too large for CI's CPU machine (XLA's passes there allocate 26 GB)."""
  recipe = mor_jax.TensorLevelMoR(block_shape=(1, None))
  cols = 2**15
  for rows in (64, 2**16 + 1):
    x = jnp.tile(jnp.array([1.0, 0.515625], jnp.bfloat16), (rows, cols // 2))
    r = mor_jax.mor_codes(x, recipe)
    assert int(r.choice) == 0, rows
    np.testing.assert_allclose(float(r.stats.error[0]), 7 / 462, rtol=1e-4)
