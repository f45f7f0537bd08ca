"""docs/numerics.md section 7 on the GPU: results equal the CPU reference there too.

XLA on GPUs deletes an f32 -> f8 -> f32 round trip inside a fusion, which
would make fake quantization a no-op that CPU tests cannot see. These tests
run everything inside one jit on the GPU and compare with the NumPy reference.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mor_jax
from tests import data
from tests import reference as ref

pytestmark = pytest.mark.gpu

FMTS = {"E4M3": mor_jax.E4M3, "E5M2": mor_jax.E5M2}
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
  kw = dict(block_shape=block_shape, scaling=scaling, group_shape=group_shape)
  with mor_jax.use_implementation(impl):
    _check_on_gpu(x, fmt, block_shape, scaling, group_shape, kw)


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


def _check_on_gpu(x, fmt, block_shape, scaling, group_shape, kw):
  @jax.jit
  def run(v):
    qa = mor_jax.quantize(v, FMTS[fmt], **kw)
    fq = mor_jax.fake_quantize(v, FMTS[fmt], **kw)
    return qa, mor_jax.dequantize(qa, jnp.float32), fq, mor_jax.relative_error(v, fq)

  xg = jax.device_put(x, jax.devices("gpu")[0])
  qa, deq, fq, err = run(xg)
  assert fq.devices() == {jax.devices("gpu")[0]}
  codes, scales = ref.quantize(x, fmt, block_shape, scaling, group_shape)
  data.assert_bits_equal(qa.scale, scales)
  data.assert_codes_equal(qa.data, codes)
  data.assert_within_ulp(np.asarray(deq), ref.dequantize(codes, scales,
                                                         block_shape))
  want_fq = ref.fake_quantize(x, fmt, block_shape, scaling, group_shape)
  data.assert_within_ulp(np.asarray(fq), want_fq.astype(x.dtype))
  np.testing.assert_allclose(float(err), ref.relative_error(x, np.asarray(fq)),
                             rtol=1e-5, atol=2e-7)


@pytest.mark.parametrize("fmt,expected", [("E4M3", 0.0227), ("E5M2", 0.0449)])
def test_fake_quantization_does_not_vanish_in_a_fusion(fmt, expected):
  x = np.random.default_rng(0).standard_normal(1 << 20).astype(np.float32) * 10
  err = jax.jit(lambda v: mor_jax.relative_error(
      v, mor_jax.fake_quantize(v, FMTS[fmt], block_shape=(None,),
                               scaling="e8m0")))(x)
  np.testing.assert_allclose(float(err), expected, rtol=0.02)
