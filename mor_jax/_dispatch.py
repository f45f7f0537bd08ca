"""The one place that picks the implementation of the two quantization passes.

"pallas": the kernels of ``mor_jax.kernels`` (interpret mode off a GPU);
"xla": the reference in ``mor_jax._quantize``; "auto" (the default): Pallas
on GPUs, XLA elsewhere. Both give identical codes, scales and decisions.
Under ``jit`` with sharded operands the kernels run per shard
(``mor_jax.kernels.sharding``).

The choice is read when a function is traced. mor_jax's own jitted entry
points take it as a static argument, so changing it retraces them; a jitted
function of yours that was traced before the change keeps what it traced.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import jax

IMPLEMENTATIONS = ("auto", "pallas", "xla")
ENV_VAR = "MOR_JAX_IMPL"


def _check(name: str, where: str) -> str:
  if name not in IMPLEMENTATIONS:
    raise ValueError(f"{where} must be one of {IMPLEMENTATIONS}, got {name!r}.")
  return name


_current = _check(os.environ.get(ENV_VAR, "auto").strip().lower() or "auto",
                  f"the environment variable {ENV_VAR}")


def implementation() -> str:
  """The implementation setting: "auto", "pallas" or "xla".

  Examples:
    >>> import mor_jax
    >>> with mor_jax.use_implementation("xla"):
    ...   mor_jax.implementation()
    'xla'
  """
  return _current


def set_implementation(name: str) -> None:
  """Sets the implementation of the quantizers for later traces.

  Args:
    name: "auto" (Pallas on GPUs, XLA elsewhere),
      "pallas" (the kernels; in interpret mode off a GPU, slow, for testing)
      or "xla". The environment variable ``MOR_JAX_IMPL`` sets the initial
      value.

  Examples:
    >>> import mor_jax
    >>> mor_jax.set_implementation("xla")
    >>> mor_jax.implementation()
    'xla'
    >>> mor_jax.set_implementation("auto")
  """
  global _current
  _current = _check(name, "name")


@contextlib.contextmanager
def use_implementation(name: str) -> Iterator[None]:
  """Context manager form of ``set_implementation``."""
  global _current
  saved, _current = _current, _check(name, "name")
  try:
    yield
  finally:
    _current = saved


def resolve(setting: str) -> tuple[bool, bool]:
  """(use Pallas, in interpret mode) for a setting, on this process's backend."""
  on_gpu = jax.default_backend() == "gpu"
  if setting == "xla" or (setting == "auto" and not on_gpu):
    return False, False
  return True, not on_gpu
