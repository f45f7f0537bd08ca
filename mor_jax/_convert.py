"""Helpers of ``mor_jax.dense.convert`` that need nothing from the layers."""

from __future__ import annotations

import dataclasses
import inspect
import pathlib
import traceback

import flax.linen as nn


def public_methods(cls: type[nn.Module]) -> tuple[str, ...]:
  """``__call__`` and every public method the model's classes define.

  Flax's own methods (``init``, ``apply``, ``setup``, ...) are left out, so
  are dataclass fields (a field may hold a function).
  """
  fields = {f.name for f in dataclasses.fields(cls)}
  names = []
  for klass in cls.__mro__:
    if not issubclass(klass, nn.Module) or klass is nn.Module:
      continue
    for name, value in vars(klass).items():
      if (inspect.isfunction(value) and name not in fields and
          name != "setup" and (name == "__call__" or not name.startswith("_"))
          and name not in names):
        names.append(name)
  return tuple(names)


def explain_scan_assertion(error: AssertionError) -> None:
  """Raises a ValueError in place of nn.scan's bare AssertionError, if it is.

  Flax asserts in ``flax/core/lift.py:scan`` that every collection in
  ``variable_axes`` has an int axis; ``{"mor_stats": None}`` trips it.
  """
  frames = traceback.extract_tb(error.__traceback__)
  if not frames:
    return
  last = frames[-1]
  if pathlib.PurePath(last.filename).parts[-3:] == ("flax", "core",
                                                    "lift.py") and (
                                                        last.name == "scan"):
    raise ValueError(
        "nn.scan needs an int axis for every collection in variable_axes "
        "(None is not allowed); for mor_jax's statistics use "
        "variable_axes={'params': 0, 'mor_stats': 0, 'mor_grads': 0}, so "
        "each scanned layer keeps its own.") from error
