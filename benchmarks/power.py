"""The GPU's energy and clocks around timed calls (``gemm.py --power``).

Under sustained load the H200 runs at its power limit: nvidia-smi showed
689-696 W of its 700 and the SM clock down from 1980 MHz to 1380-1455 MHz
while nn.Dense's BF16 step ran in a loop, 1485-1515 MHz for MoRDense's
(docs/benchmarks.md, twenty-first session). A looped timing is then a
measure of energy per step as much as of kernel time, so the benchmark can
report both: joules per call, mean watts and the SM clock of each case's
timed windows. Windows must be long: NVML's energy counter moves in steps,
and over the 0.1 s windows of ``timing.timed_interleaved`` the same layer's
readings ranged from 365 to 970 W, where layers timed alone in windows of
0.5 s and more (``gemm.py --iters 100``) read 682-717 W, each within 2%
of its own reading in another process.

The readings come from NVML (the driver's library, through ctypes: no
package to install), reading the GPU whose NVML index is jax's first
device's hardware id (the same GPU unless CUDA_VISIBLE_DEVICES or
CUDA_DEVICE_ORDER renumber them). Host-side, between timed calls: nothing
here runs inside a step.
"""

from __future__ import annotations

import contextlib
import ctypes
import statistics
import time

# nvml.h: nvmlClockType_t's NVML_CLOCK_SM, and NVML_SUCCESS.
_NVML_CLOCK_SM = 1
_NVML_SUCCESS = 0


class Nvml:
  """Readings of one GPU through NVML."""

  def __init__(self, index: int, lib: str = "libnvidia-ml.so.1"):
    self._lib = ctypes.CDLL(lib)
    self._call("nvmlInit_v2")
    self._handle = ctypes.c_void_p()
    self._call("nvmlDeviceGetHandleByIndex_v2", ctypes.c_uint(index),
               ctypes.byref(self._handle))

  def _call(self, name, *args):
    rc = getattr(self._lib, name)(*args)
    if rc != _NVML_SUCCESS:
      raise RuntimeError(f"NVML {name} returned {rc}")

  def _read(self, name, ctype, *args):
    out = ctype()
    self._call(name, self._handle, *args, ctypes.byref(out))
    return out.value

  def energy_mj(self) -> int:
    """Millijoules since the driver loaded (Volta and later)."""
    return self._read("nvmlDeviceGetTotalEnergyConsumption",
                      ctypes.c_ulonglong)

  def sm_mhz(self) -> int:
    return self._read("nvmlDeviceGetClockInfo", ctypes.c_uint,
                      ctypes.c_int(_NVML_CLOCK_SM))

  def power_limit_w(self) -> float:
    return self._read("nvmlDeviceGetEnforcedPowerLimit", ctypes.c_uint) / 1e3


def open_gpu(index: int | None, lib: str = "libnvidia-ml.so.1") -> Nvml:
  """``Nvml(index, lib)``, or SystemExit saying why there is none."""
  if index is None:
    raise SystemExit("--power needs a GPU: jax's device has no hardware id.")
  try:
    return Nvml(index, lib)
  except (OSError, AttributeError, RuntimeError) as e:
    raise SystemExit(f"--power needs NVML on an NVIDIA GPU: {e}") from None


class Meter:
  """Energy, time and SM clock summed over the windows given to it.

  ``window(calls)`` wraps one timed stretch of ``calls`` calls that it waits
  for: it reads the energy counter at both ends and the SM clock at the end,
  while the clocks still hold the stretch's load.
  """

  def __init__(self, gpu):
    self.gpu = gpu
    self.joules = 0.0
    self.seconds = 0.0
    self.calls = 0
    self.clocks: list[int] = []

  @contextlib.contextmanager
  def window(self, calls: int):
    e0, t0 = self.gpu.energy_mj(), time.perf_counter()
    yield
    self.seconds += time.perf_counter() - t0
    self.joules += (self.gpu.energy_mj() - e0) / 1e3
    self.calls += calls
    self.clocks.append(self.gpu.sm_mhz())

  def report(self) -> dict:
    """Joules per call, mean watts and the median SM clock (MHz)."""
    if not self.calls:
      raise ValueError("Meter.report: no window was measured.")
    return dict(j_per_call=round(self.joules / self.calls, 4),
                watts=round(self.joules / self.seconds, 1),
                sm_mhz=statistics.median(self.clocks))
