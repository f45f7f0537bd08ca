"""MoR under a mesh with Explicit axes (``jax.make_mesh``'s default).

With ``jax.set_mesh`` on such a mesh every array's sharding is part of its
type, and an op that mixes shardings is a ShardingTypeError: the per-row and
per-column scales of one operand concatenated, a tensor reshaped into its
blocks. MoR's passes are written for sharding propagation (GSPMD, and
kernels/sharding.py's custom_partitioning, which keeps decisions global), so
the public entry points run their work with the Explicit axes made Auto
(``jax.sharding.auto_axes``) and give the results the shardings the plain
JAX op would: an output shaped like the input keeps its sharding, and small
results (scales, choices, statistics) are replicated. Without such a mesh
``run`` is a plain call.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
from jax.sharding import PartitionSpec as P


def explicit() -> tuple[str, ...]:
  """The Explicit axes of the mesh in context (none without one)."""
  return tuple(jax.sharding.get_abstract_mesh().explicit_axes)


def run(fun: Callable[..., Any], *arrays: jax.Array, like: Any = None) -> Any:
  """``fun(*arrays)`` with the context mesh's Explicit axes made Auto.

  Args:
    fun: a function of arrays only (bind anything static first).
    *arrays: its arguments.
    like: an array or ``jax.ShapeDtypeStruct`` whose sharding the results of
      its shape take; default: ``arrays[0]``. Other results are replicated.
  """
  axes = explicit()
  if not axes:
    return fun(*arrays)
  like = jax.typeof(arrays[0]) if like is None else like
  auto = lambda out_sharding: jax.sharding.auto_axes(  # noqa: E731
      fun, axes=axes, out_sharding=out_sharding)
  # The results' shapes, to choose their shardings: a trace with everything
  # replicated (jit's cache serves the second trace of a jitted ``fun``).
  shapes = jax.eval_shape(auto(P()), *arrays)
  return auto(jax.tree.map(
      lambda s: like.sharding.spec if s.shape == like.shape else P(),
      shapes))(*arrays)
