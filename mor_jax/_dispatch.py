"""The one place that picks the implementation of the quantization passes.

The table ``PASSES`` maps each implementation to a factory that binds it to
a partition: "xla" (``mor_jax._xla``, the reference, for every partition)
and "pallas" (``mor_jax.kernels.quantize``; it declines the partitions it
cannot tile, which then use XLA). The setting is "auto" (Pallas on NVIDIA
GPUs, where the kernels are tested, XLA elsewhere), "pallas" (in interpret
mode off a GPU) or "xla", together with
the kernels' tuning (``mor_jax.kernels.KernelConfig``). Both implementations
give identical codes, scales and decisions.

The setting is read when a function is traced. mor_jax's own jitted entry
points take it (an ``Implementation``, hashable) as a static argument, so
changing the name or the tuning retraces them; a jitted function of yours
that was traced before the change keeps what it traced.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import re
from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from mor_jax import _partition
from mor_jax import _passes
from mor_jax import _xla
from mor_jax import kernels

NAMES = ("auto", "pallas", "xla")
ENV_VAR = "MOR_JAX_IMPL"
# The kernels index in int32 and never ran on larger arrays (a sharded
# array's global size counts: the choice is made before partitioning).
# Larger ones take the XLA path: the same bits, at XLA's speed.
MAX_KERNEL_ELEMENTS = int(np.iinfo(np.int32).max)


@dataclasses.dataclass(frozen=True)
class Implementation:
  """A setting: the implementation's name and the kernels' tuning."""

  name: str = "auto"
  config: kernels.KernelConfig = kernels.KernelConfig()

  def __post_init__(self):
    if self.name not in NAMES:
      raise ValueError(f"name must be one of {NAMES}, got {self.name!r}.")
    if not isinstance(self.config, kernels.KernelConfig):
      raise TypeError("config must be a mor_jax.kernels.KernelConfig, got "
                      f"{self.config!r}.")

  def uses_pallas(self, *shapes) -> bool:
    """Whether the kernels run, on arrays of these ``shapes``."""
    return _fit(shapes) and (self.name == "pallas" or
                             (self.name == "auto" and nvidia_gpu()))

  @property
  def interpret(self) -> bool:
    """Whether the kernels run in interpret mode (off a GPU)."""
    return not on_gpu()


def _fit(shapes) -> bool:
  # The kernels' grids and BlockSpecs take static shapes: a symbolic
  # dimension (jax.export) takes the XLA path, the same bits.
  return all(not any(map(_partition.is_symbolic, s)) and
             math.prod(s) <= MAX_KERNEL_ELEMENTS for s in shapes)


def device() -> jax.Device:
  """The device work goes to by default: ``jax.default_device``'s where it
  is set (a CPU on a GPU machine: the kernels' Triton and Mosaic GPU code
  would not lower there), else the default backend's first."""
  chosen = jax.config.jax_default_device
  if isinstance(chosen, str):  # a platform name
    return jax.devices(chosen)[0]
  return chosen if chosen is not None else jax.devices()[0]


def on_gpu() -> bool:
  return device().platform == "gpu"


def nvidia_gpu() -> bool:
  """Whether the default device is an NVIDIA GPU (it has a CUDA compute
  capability): the kernels' error terms take PTX's reciprocal there."""
  return on_gpu() and _capability() != (0, 0)


def _from_env() -> Implementation:
  name = os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
  if name not in NAMES:
    raise ValueError(f"the environment variable {ENV_VAR} must be one of "
                     f"{NAMES}, got {name!r}.")
  return Implementation(name)


_current = _from_env()


def current() -> Implementation:
  """The setting, as mor_jax's jitted functions take it."""
  return _current


@contextlib.contextmanager
def exportable(*shapes) -> Iterator[None]:
  """XLA's passes and GEMM for all of one GEMM's work where one of its
  arrays (``shapes``) has a symbolic dimension (``jax.export``).

  Such arrays take XLA's path anyway (``_fit``); the others of that GEMM
  (a weight of static shape) must too, as jax.export refuses to serialize
  the kernels' custom calls: they carry no compatibility guarantee.
  """
  if (_current.name == "xla" or
      not any(map(_partition.is_symbolic, (d for s in shapes for d in s)))):
    yield
    return
  with use_implementation("xla", _current.config):
    yield


def implementation() -> str:
  """The implementation setting: "auto", "pallas" or "xla".

  Examples:
    >>> import mor_jax
    >>> with mor_jax.use_implementation("xla"):
    ...   mor_jax.implementation()
    'xla'
  """
  return _current.name


def set_implementation(name: str,
                       config: kernels.KernelConfig | None = None) -> None:
  """Sets the implementation of the quantizers (and its tuning) for later traces.

  Args:
    name: "auto" (Pallas on NVIDIA GPUs, XLA elsewhere), "pallas" (the
      kernels; in interpret mode off a GPU, slow, for testing) or "xla". The
      environment variable ``MOR_JAX_IMPL`` sets the initial value.
    config: the kernels' tile sizes; default ``mor_jax.kernels.KernelConfig()``.

  Examples:
    >>> import mor_jax
    >>> mor_jax.set_implementation("xla")
    >>> mor_jax.implementation()
    'xla'
    >>> mor_jax.set_implementation("auto")
  """
  global _current
  _current = Implementation(name, config or kernels.KernelConfig())


@contextlib.contextmanager
def use_implementation(name: str, config: kernels.KernelConfig | None = None
                       ) -> Iterator[None]:
  """Context manager form of ``set_implementation``."""
  global _current
  saved = _current
  set_implementation(name, config)
  try:
    yield
  finally:
    _current = saved


def fp8_tensor_cores() -> bool:
  """Whether the default device has FP8 tensor cores (sm_89 and newer)."""
  return on_gpu() and _capability() >= (8, 9)


def _capability() -> tuple[int, int]:
  """``device()``'s CUDA compute capability; (0, 0) for the others
  (ROCm GPUs report their gfx name, CPUs nothing)."""
  cc = str(getattr(device(), "compute_capability", ""))
  found = re.match(r"(\d+)\.(\d+)", cc)
  return (int(found[1]), int(found[2])) if found else (0, 0)


def dual(impl: Implementation, shape) -> _passes.DualPasses:
  """Both orientations' passes of a matrix of ``shape`` (kernels/dual.py)."""
  if impl.uses_pallas(shape):
    return kernels.dual.PallasDual(impl.config.dual, impl.interpret,
                                   ptx=nvidia_gpu())
  return _xla.XlaDual()


def gemm_backend(impl: Implementation, dtype, codes_dtypes=(),
                 shapes=()) -> str:
  """"pallas" (kernels/gemm.py, kernels/block_gemm.py) or "xla" for a GEMM.

  The kernels run on Hopper GPUs (sm_90) for 16-bit compute dtypes, unless
  the setting is "xla" or an array of ``shapes`` (operands, output) is
  larger than ``MAX_KERNEL_ELEMENTS``, and on FP8 codes of two dtypes
  (``codes_dtypes``: E4M3 x E5M2) only where this jax's Mosaic GPU takes
  such a pair (``kernels.gemm.takes_mixed_fp8``: jax 0.11, not 0.10).
  """
  hopper = on_gpu() and _capability()[0] == 9
  wide_16 = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16),
                                 jnp.dtype(jnp.float16))
  if impl.name == "xla" or not hopper or not wide_16 or not _fit(shapes):
    return "xla"
  mixed = len({jnp.dtype(t) for t in codes_dtypes}) > 1
  return "xla" if mixed and not kernels.gemm.takes_mixed_fp8() else "pallas"


def _pallas_passes(part: _partition.Partition,
                   impl: Implementation) -> _passes.Passes | None:
  return kernels.quantize.passes(part, impl.config.quantize,
                                 interpret=impl.interpret, ptx=nvidia_gpu())


def _xla_passes(part: _partition.Partition,
                impl: Implementation) -> _passes.Passes:
  del impl
  return _xla.XlaPasses(part)


# Each factory returns the passes bound to a partition, or None where it
# cannot run that partition.
PASSES: dict[str, Callable[[_partition.Partition, Implementation],
                           _passes.Passes | None]] = {
                               "pallas": _pallas_passes,
                               "xla": _xla_passes,
                           }


def passes(part: _partition.Partition, impl: Implementation) -> _passes.Passes:
  """The passes that run ``part`` under the setting ``impl``."""
  if impl.uses_pallas(part.shape):
    chosen = PASSES["pallas"](part, impl)
    if chosen is not None:
      return chosen
  return PASSES["xla"](part, impl)
