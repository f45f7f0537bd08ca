"""The Pallas kernels (mor_jax.kernels) against the NumPy reference.

Off a GPU, ``use_implementation("pallas")`` runs the same kernel bodies in
interpret mode, so CI checks exactly what the GPU compiles; on a GPU these
tests run the compiled Triton kernels (and tests/test_gpu.py adds more).
"""

from __future__ import annotations

import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mor_jax
from mor_jax import _partition
from mor_jax.kernels import quantize as kq
from tests import data
from tests import reference as ref
from tests import test_mor

FMTS = {"E4M3": mor_jax.E4M3, "E5M2": mor_jax.E5M2}


@pytest.fixture(autouse=True)
def _pallas():
  with mor_jax.use_implementation("pallas"):
    yield


def _uses_kernels(fn, *args) -> bool:
  return "pallas_call" in str(jax.make_jaxpr(fn)(*args))


@pytest.mark.parametrize("shape,block_shape,group_shape", [
    ((300, 520), (None, None), None),     # per-tensor, ragged tiles
    ((300, 520), (1, None), None),        # per-channel: rows mode
    ((256, 512), (128, 128), None),       # tiles equal to blocks
    ((300, 520), (128, 128), (256, None)),  # ragged, gam groups of blocks
    ((300, 520), (1, 32), None),          # 1x32 tiles
    ((300, 520), (100, 60), None),        # blocks no power of two divides well
    ((6, 40, 96), (1, 8, 32), None),      # leading dimension folded into rows
    ((1000,), (None,), None),             # 1-D
])
@pytest.mark.parametrize("scaling", ["fp32", "e8m0", "gam"])
@pytest.mark.parametrize("fmt,dtype,kind", [("E4M3", "bfloat16", "normal"),
                                            ("E5M2", "float32", "wide"),
                                            ("E4M3", "float16", "outlier_cols")])
def test_kernels_match_reference(shape, block_shape, group_shape, scaling, fmt,
                                 dtype, kind):
  group_shape = group_shape if scaling == "gam" else None
  x = data.make(kind, shape, data.DTYPES[dtype], seed=5)
  kw = dict(block_shape=block_shape, scaling=scaling, group_shape=group_shape)
  assert _uses_kernels(lambda v: mor_jax.quantize(v, FMTS[fmt], **kw).data, x)
  qa = mor_jax.quantize(x, FMTS[fmt], **kw)
  codes, scales = ref.quantize(x, fmt, block_shape, scaling, group_shape)
  data.assert_bits_equal(qa.scale, scales)
  data.assert_codes_equal(qa.data, codes)
  fq = mor_jax.fake_quantize(x, FMTS[fmt], **kw)
  want = ref.fake_quantize(x, fmt, block_shape, scaling, group_shape)
  data.assert_within_ulp(np.asarray(fq), want.astype(x.dtype))


def test_special_values_tiny_and_huge():
  x = data.make("tiny", (300, 520), np.float32, seed=1)
  x[3, :7] = [np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-40, 3e38]
  for fmt in FMTS:
    qa = mor_jax.quantize(x, FMTS[fmt], block_shape=(128, 128))
    codes, scales = ref.quantize(x, fmt, (128, 128), "gam")
    data.assert_bits_equal(qa.scale, scales)
    data.assert_codes_equal(qa.data, codes)
    fq = mor_jax.fake_quantize(x, FMTS[fmt], block_shape=(1, None))
    data.assert_within_ulp(np.asarray(fq),
                           ref.fake_quantize(x, fmt, (1, None), "gam"))


@pytest.mark.parametrize("recipe_name", list(test_mor.RECIPES))
@pytest.mark.parametrize("tensor_name", list(test_mor.TENSORS))
def test_mor_decisions_match_reference(recipe_name, tensor_name):
  recipe, desc = test_mor.RECIPES[recipe_name]
  x = test_mor.TENSORS[tensor_name]()
  test_mor._check_against_reference(x, recipe, desc)  # pylint: disable=protected-access


def test_pallas_and_xla_agree_under_jit_vmap_grad():
  xs = jnp.asarray(data.make("normal", (3, 64, 256), np.float32, seed=2))
  recipe = mor_jax.TensorLevelMoR(block_shape=(1, None))

  def f(v):
    r = mor_jax.mor_quantize(v, recipe)
    return jnp.sum(r.value * v), (r.choice, r.stats.error)

  got = jax.jit(jax.vmap(jax.value_and_grad(f, has_aux=True)))(xs)
  with mor_jax.use_implementation("xla"):
    want = jax.jit(jax.vmap(jax.value_and_grad(f, has_aux=True)))(xs)
  (gv, (gc, ge)), gg = got
  (wv, (wc, we)), wg = want
  np.testing.assert_array_equal(np.asarray(gc), np.asarray(wc))
  np.testing.assert_array_equal(np.asarray(gg), np.asarray(wg))
  np.testing.assert_allclose(np.asarray(gv), np.asarray(wv), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(ge), np.asarray(we), rtol=1e-5)


def test_plan_tiles():
  tiles = kq.TileConfig()
  big = _partition.Partition.build((16384, 16384), (128, 128))
  t = kq.plan(big, tiles)
  assert (t.tile_rows, t.tile_cols, t.per_row) == (
      tiles.tile_elements // 128, 128, False)
  t = kq.plan(big, kq.TileConfig(tile_elements=16384))
  assert (t.tile_rows, t.tile_cols) == (128, 128)
  t = kq.plan(_partition.Partition.build((16384, 16384), (1, None)), tiles)
  assert (t.tile_cols, t.per_row) == (512, True)
  t = kq.plan(_partition.Partition.build((300, 520), (1, 32)), tiles)
  assert t.tile_cols == 32
  # Blocks that cut across a folded leading dimension are left to XLA.
  part = _partition.Partition.build((7, 33, 40), (1, 8, None))
  assert kq.plan(part, tiles) is None


def test_untileable_partition_falls_back_to_xla():
  x = jnp.ones((7, 33, 40))
  fn = lambda v: mor_jax.quantize(v, mor_jax.E4M3,  # noqa: E731
                                  block_shape=(1, 8, None)).data
  assert not _uses_kernels(fn, x)
  data.assert_codes_equal(fn(x), ref.quantize(np.ones((7, 33, 40)), "E4M3",
                                              (1, 8, None), "gam")[0])


def test_setting_is_part_of_the_cache_key():
  """Our jitted entry points retrace when the setting changes.

  (A function of the user's, jitted before the change, keeps its trace; each
  check here traces a new one.)
  """
  x = jnp.ones((64, 64))

  def uses_kernels():
    return _uses_kernels(lambda v: mor_jax.quantize(
        v, mor_jax.E4M3, block_shape=(None, None)).data, x)

  assert uses_kernels()
  with mor_jax.use_implementation("xla"):
    assert mor_jax.implementation() == "xla"
    assert not uses_kernels()
  assert uses_kernels()
  with mor_jax.use_implementation("auto"):
    assert uses_kernels() == (jax.default_backend() == "gpu")


def test_bad_setting_is_rejected():
  with pytest.raises(ValueError, match="name must be one of"):
    mor_jax.set_implementation("cuda")
  env = dict(os.environ, MOR_JAX_IMPL="triton")
  proc = subprocess.run([sys.executable, "-c", "import mor_jax"], env=env,
                        capture_output=True, text=True, check=False)
  assert proc.returncode != 0
  assert "MOR_JAX_IMPL must be one of" in proc.stderr
  env["MOR_JAX_IMPL"] = "XLA"
  proc = subprocess.run(
      [sys.executable, "-c", "import mor_jax; print(mor_jax.implementation())"],
      env=env, capture_output=True, text=True, check=True)
  assert proc.stdout.strip() == "xla"


def test_scanned_layers_train_the_same_with_either_implementation():
  """MoRDense stacked by nn.scan: outputs, gradients and every decision."""
  from tests import test_dense  # pylint: disable=g-import-not-at-top
  from mor_jax.dense import flatten_stats  # pylint: disable=g-import-not-at-top
  model = test_dense._Scanned(n=2)  # pylint: disable=protected-access
  x = jnp.asarray(data.make("normal", (32, 16), np.float32, seed=4))
  variables = model.init(jax.random.key(0), x)

  def step(v):
    def loss(params, probes):
      y, state = model.apply({**v, "params": params, "mor_grads": probes}, x,
                             mutable=["mor_stats"])
      return jnp.sum(y * y), state["mor_stats"]
    (l, fwd), (g, bwd) = jax.value_and_grad(loss, argnums=(0, 1),
                                            has_aux=True)(v["params"],
                                                          v["mor_grads"])
    return l, g, flatten_stats(fwd, bwd)

  # A new function for each trace: JAX would reuse the first trace of
  # ``step``, implementation setting included.
  got = jax.jit(lambda v: step(v))(variables)
  with mor_jax.use_implementation("xla"):
    want = jax.jit(lambda v: step(v))(variables)
  decisions = [k for k in want[2] if "/fraction_" in k]
  assert len(decisions) == 2 * 2 * 6  # layers x fractions x quantizations
  for k in decisions:
    np.testing.assert_array_equal(np.asarray(got[2][k]), np.asarray(want[2][k]),
                                  err_msg=k)
  np.testing.assert_allclose(float(got[0]), float(want[0]), rtol=1e-6)
  chex.assert_trees_all_close(got[1], want[1], rtol=1e-6, atol=1e-7)
