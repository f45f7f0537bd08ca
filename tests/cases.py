"""Cases, checks and implementations shared by the test modules.

Test modules import this module (and ``tests.data``, ``tests.reference``),
never each other.

The numerics suites (tests/test_quantize.py, tests/test_mor.py and the
deterministic tests of tests/test_properties.py) run every check once per
implementation in ``IMPLS``. A check threads its
implementation into every call: it runs mor_jax only inside
``impl.run(fn, ...)``, which switches the setting on inside ``fn`` (so the
trace reads it, whenever and wherever it is traced) and asserts from the
jaxpr that the kernels ran or did not, so a case cannot silently test the
other implementation.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mor_jax
from mor_jax.dense import MoRDense
from mor_jax.kernels import KernelConfig
from mor_jax.kernels import TileConfig
from tests import data
from tests import reference as ref

FMTS = {"E4M3": mor_jax.E4M3, "E5M2": mor_jax.E5M2}

# ---------------------------------------------------------------------------
# Implementations.


@dataclasses.dataclass(frozen=True)
class Impl:
  """An implementation of the passes, as the numerics suites run it."""

  name: str  # "xla" or "pallas"
  config: KernelConfig | None = None

  @property
  def kernels(self) -> bool:
    return self.name == "pallas"

  def wrap(self, fn):
    """``fn`` with this implementation switched on inside it."""
    def wrapped(*args):
      with mor_jax.use_implementation(self.name, self.config):
        return fn(*args)
    return wrapped

  def trace(self, fn, *args, kernels: bool | None = None):
    """``fn`` traced under jit with this implementation, checked.

    Args:
      fn: calls mor_jax; traced anew, so no cached trace of another
        implementation can answer.
      *args: its arguments.
      kernels: whether the jaxpr must hold a pallas_call: by default, for
        "pallas"; pass False where Pallas declines the partition (XLA never
        runs the kernels).
    """
    traced = jax.jit(self.wrap(fn)).trace(*args)
    want = self.kernels if kernels is None else kernels and self.kernels
    got = "pallas_call" in str(traced.jaxpr)
    assert got == want, (
        f"{self.name}: the trace {'runs' if got else 'lacks'} the Pallas "
        "kernels")
    return traced

  def compile(self, fn, *args, kernels: bool | None = None):
    """``fn`` compiled for ``args``' shapes and dtypes (see ``trace``)."""
    return self.trace(fn, *args, kernels=kernels).lower().compile()

  def run(self, fn, *args, kernels: bool | None = None):
    """``fn(*args)`` under jit with this implementation (see ``trace``)."""
    return self.compile(fn, *args, kernels=kernels)(*args)


XLA = Impl("xla")
# Tiles of 512 elements and at most 64 columns: the small shapes that keep
# interpret mode fast on a CPU still span many (and ragged) tiles, in tile and
# rows mode. tests/test_gpu.py checks the default tiles at larger shapes.
PALLAS = Impl("pallas", KernelConfig(quantize=TileConfig(
    tile_elements=512, patch_tile_elements=1024, max_tile_cols=64)))
IMPLS = [pytest.param(XLA, id="xla"), pytest.param(PALLAS, id="pallas")]



def lowered_for_cuda(fn, *args) -> str:
  """The module of jitted ``fn`` exported for CUDA on any machine, with
  Triton's calls allowed (their kernels carry no compatibility promise)."""
  allow = [jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")]
  return jax.export.export(jax.jit(fn), platforms=["cuda"],
                           disabled_checks=allow)(*args).mlir_module()


def dot_with_stats(x, w, g, dims, policy):
  """Y, dX, dW for dL/dY = g, and the six NamedMoRStats by (GEMM, role), of
  ``mor_jax.dot_general_with_stats`` under jit and grad."""

  def f(x, w, probes):
    y, fwd = mor_jax.dot_general_with_stats(x, w, dims, probes, policy=policy)
    return jnp.sum(y * g), (y, fwd)

  grad = jax.jit(jax.grad(f, argnums=(0, 1, 2), has_aux=True))
  (dx, dw, bwd), (y, fwd) = grad(x, w, mor_jax.zero_probes(policy))
  stats = {(gemm, role): s for part in (fwd, bwd)
           for gemm, roles in part.items() for role, s in roles.items()}
  return (y, dx, dw), stats


def check_each(checks):
  """Runs every (label, check); fails with all their failures, labelled.

  The suites compile several cases into one function (a compile costs more
  than the checks) and check each here, so one failing case hides no other.
  """
  failures = []
  for label, check in checks:
    try:
      check()
    except AssertionError as e:
      failures.append(f"{label}: {e}")
  assert not failures, f"{len(failures)} failed:\n" + "\n".join(failures)


# ---------------------------------------------------------------------------
# Quantization against the NumPy reference.


def quantize_all(fmt, block_shape, scaling, group_shape):
  """x -> (QuantizedArray, its dequantization, compute_scales, fake_quantize,
  relative_error of the latter): every public quantizer in one function."""
  kw = dict(block_shape=block_shape, scaling=scaling, group_shape=group_shape)

  def fn(x):
    qa = mor_jax.quantize(x, FMTS[fmt], **kw)
    fq = mor_jax.fake_quantize(x, FMTS[fmt], **kw)
    return (qa, mor_jax.dequantize(qa, jnp.float32),
            mor_jax.compute_scales(x, FMTS[fmt], **kw), fq,
            mor_jax.relative_error(x, fq))

  return fn


def check_quantize(got, x, fmt, block_shape, scaling, group_shape):
  """``quantize_all``'s outputs equal the reference's, bit for bit."""
  qa, deq, scales, fq, err = got
  want_codes, want_scales = ref.quantize(x, fmt, block_shape, scaling,
                                         group_shape)
  data.assert_bits_equal(scales, want_scales)
  data.assert_bits_equal(qa.scale, want_scales)
  data.assert_codes_equal(qa.data, want_codes)
  assert qa.data.dtype == FMTS[fmt].dtype and qa.data.shape == x.shape

  want_deq = ref.dequantize(want_codes, want_scales, block_shape)
  data.assert_within_ulp(np.asarray(deq), want_deq)

  assert fq.dtype == x.dtype
  want_fq = ref.fake_quantize(x, fmt, block_shape, scaling, group_shape)
  # One float32 ulp before the cast can move a tie in the narrow dtype.
  data.assert_within_ulp(np.asarray(fq), ref.to_dtype(want_fq, x.dtype))

  want_err = ref.relative_error(x, np.asarray(fq))
  np.testing.assert_allclose(float(err), want_err, rtol=1e-5, atol=2e-7)


# ---------------------------------------------------------------------------
# MoR selection against the NumPy reference.


def gaussian(shape=(256, 256), dtype=np.float32, seed=0):
  return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def outlier_columns(shape=(256, 256)):
  x = gaussian(shape, seed=1)
  x[:, ::32] *= 1e4  # a few channels 4 orders of magnitude larger
  return x


def student_t(shape=(256, 256)):
  return np.random.default_rng(2).standard_t(3, shape).astype(np.float32)


def mixed_blocks():
  """Four 128x128 blocks: Gaussian; magnitudes 1e-4..1e4; zeros; 1e-12..1e12."""
  x = gaussian((256, 256), seed=3)
  rng = np.random.default_rng(4)
  x[:128, 128:] = np.sign(x[:128, 128:]) * 10 ** rng.uniform(-4, 4, (128, 128))
  x[128:, :128] = 0.0
  x[128:, 128:] *= np.geomspace(1e-12, 1e12, 128, dtype=np.float32)
  return x


TENSORS = {
    "gaussian": gaussian,
    "outlier_columns": outlier_columns,
    "student_t": student_t,
    "mixed_blocks": mixed_blocks,
}

RECIPES = {
    # name: (recipe, reference description)
    "tensor_per_tensor": (mor_jax.TensorLevelMoR(block_shape=(None, None)),
                          ([("E4M3", ("error_below", 0.045))], "tensor",
                           (None, None), "gam")),
    "tensor_per_row": (mor_jax.TensorLevelMoR(block_shape=(1, None)),
                       ([("E4M3", ("error_below", 0.045))], "tensor",
                        (1, None), "gam")),
    "tensor_per_col_fp32": (
        mor_jax.TensorLevelMoR(block_shape=(None, 1), scaling="fp32"),
        ([("E4M3", ("error_below", 0.045))], "tensor", (None, 1), "fp32")),
    "tensor_128": (mor_jax.TensorLevelMoR(),
                   ([("E4M3", ("error_below", 0.045))], "tensor",
                    (128, 128), "gam")),
    "two_way": (mor_jax.SubTensorMoR(),
                ([("E4M3", ("error_not_above", "E5M2"))], "block",
                 (128, 128), "gam")),
    "three_way": (mor_jax.SubTensorMoR(mode="three_way", block_shape=(64, 64)),
                  ([("E4M3", ("error_not_above", "E5M2")),
                    ("E5M2", ("dynamic_range",))], "block", (64, 64), "gam")),
    "static_e4m3": (mor_jax.Static(mor_jax.E4M3),
                    ([("E4M3", ("always",))], "block", (None, None), "fp32")),
    "static_mx": (mor_jax.Static(mor_jax.E4M3, block_shape=(1, 32),
                                 scaling="e8m0"),
                  ([("E4M3", ("always",))], "block", (1, 32), "e8m0")),
    "noquant": (mor_jax.NoQuant(), ([], "tensor", None, "gam")),
}


def check_mor(r, x, desc):
  """``mor_quantize(x, recipe)``'s result ``r`` against ``ref.mor``."""
  cands, granularity, block_shape, scaling = desc
  want_value, want_choice, want_err = ref.mor(x, cands, granularity,
                                              block_shape, scaling)
  np.testing.assert_array_equal(np.asarray(r.choice), want_choice)
  assert r.choice.dtype == jnp.int32
  assert r.value.dtype == x.dtype
  data.assert_within_ulp(np.asarray(r.value),
                         ref.to_dtype(want_value, x.dtype))
  np.testing.assert_allclose(np.asarray(r.stats.error), want_err, rtol=1e-5,
                             atol=2e-7)
  np.testing.assert_allclose(
      float(r.stats.chosen_error),
      ref.relative_error(x, np.asarray(r.value, np.float32)), rtol=1e-5,
      atol=2e-7)


# ---------------------------------------------------------------------------
# Layers.


class Layer(nn.Module):
  """One MoRDense as an nn.scan body: carry -> carry."""

  @nn.compact
  def __call__(self, carry, _):
    return MoRDense(16, name="dense")(carry), None


class Scanned(nn.Module):
  """``n`` MoRDense layers of 16 features stacked by nn.scan."""

  n: int = 3

  @nn.compact
  def __call__(self, x):
    scan = nn.scan(Layer, variable_axes={"params": 0, "mor_stats": 0,
                                         "mor_grads": 0},
                   split_rngs={"params": True}, length=self.n)
    return scan(name="layers")(x, None)[0]
