"""The Pallas kernels' own concerns: tiling, fallback, the setting, doctests.

Their numerics against the NumPy reference are the shared suites
(tests/test_quantize.py, tests/test_mor.py), which run every check under
XLA and under Pallas: off a GPU in interpret mode, so CI checks the kernel
bodies the GPU compiles, all but the error terms' reciprocal (one PTX
instruction, which interpret mode cannot run: the lowering test below
checks that the compiled kernels hold it); on a GPU the compiled Triton
kernels (and tests/test_gpu.py adds more).
"""

from __future__ import annotations

import doctest
import importlib
import os
import pkgutil
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mor_jax
from mor_jax import _partition
from mor_jax import kernels
from mor_jax.kernels import quantize as kq
from mor_jax.kernels import tile
from mor_jax.dense import flatten_stats
from tests import cases
from tests import data
from tests import reference as ref


def _uses_kernels(fn, *args) -> bool:
  return "pallas_call" in str(jax.make_jaxpr(fn)(*args))


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
  codes = cases.PALLAS.run(fn, x, kernels=False)
  data.assert_codes_equal(codes, ref.quantize(np.ones((7, 33, 40)), "E4M3",
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

  with mor_jax.use_implementation("pallas"):
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
  model = cases.Scanned(n=2)
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

  # The kernels' default tiles, as training runs them.
  got = cases.Impl("pallas").run(step, variables)
  want = cases.XLA.run(step, variables)
  decisions = [k for k in want[2] if "/fraction_" in k]
  assert len(decisions) == 2 * 2 * 6  # layers x fractions x quantizations
  for k in decisions:
    np.testing.assert_array_equal(np.asarray(got[2][k]), np.asarray(want[2][k]),
                                  err_msg=k)
  np.testing.assert_allclose(float(got[0]), float(want[0]), rtol=1e-6)
  chex.assert_trees_all_close(got[1], want[1], rtol=1e-6, atol=1e-7)


# pytest does not collect kernels/ (it would import it twice, as kernels and
# as mor_jax.kernels): its doctests run here, as mor_jax.kernels.*.
KERNEL_MODULES = ["mor_jax.kernels"] + [
    f"mor_jax.kernels.{m.name}" for m in pkgutil.iter_modules(kernels.__path__)]


@pytest.mark.parametrize("name", KERNEL_MODULES)
def test_kernel_doctests(name):
  result = doctest.testmod(importlib.import_module(name), verbose=False)
  assert result.failed == 0, f"{result.failed} doctest(s) of {name} failed"
  if name == "mor_jax.kernels":  # KernelConfig's example: they are found
    assert result.attempted > 0


@pytest.mark.parametrize("interpret,ptx", [(False, True), (True, True),
                                           (False, False)])
def test_compiled_quantize_pass_takes_the_ptx_reciprocal(interpret, ptx):
  """Compiled for an NVIDIA GPU, the quantize pass's error terms multiply
  by the PTX reciprocal; in interpret mode (which runs no PTX) and for
  other GPUs (``ptx`` False) they divide in jnp."""
  part = _partition.Partition.build((200, 300), (1, None))
  passes = kq.passes(part, kernels.KernelConfig().quantize,
                     interpret=interpret, ptx=ptx)
  sd = jax.ShapeDtypeStruct
  module = cases.lowered_for_cuda(
      lambda x, s, n: passes.quantize_with_scales(x, s, n, mor_jax.E4M3,
                                                  "codes"),
      sd((200, 300), jnp.bfloat16), sd(part.grid, jnp.float32),
      sd(part.grid, jnp.bool_))
  assert (tile.RECIPROCAL_PTX in module) == (ptx and not interpret)
