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


def off_mesh(*arrays: jax.Array) -> bool:
  """Whether no array is typed with a mesh (none was put on one)."""
  return all(jax.typeof(a).sharding.mesh.empty for a in arrays)


def run(fun: Callable[..., Any], *arrays: jax.Array,
        out_sharding: Any = None) -> Any:
  """``fun(*arrays)`` with the context mesh's Explicit axes made Auto.

  Args:
    fun: a function of arrays only (bind anything static first).
    *arrays: its arguments.
    out_sharding: the results' specs (a prefix of their tree), where the
      caller knows them; by default results shaped like ``arrays[0]`` take
      its sharding and the others are replicated, which costs a second
      trace of ``fun`` (jit's cache serves it where ``fun`` is jitted).
  """
  axes = explicit()
  if not axes:
    return fun(*arrays)
  # An array of one device, never put on the mesh, has no sharding to keep
  # (nor do the results the plain op gives it): it runs as with no mesh in
  # context. Values made inside would otherwise be typed on the context mesh,
  # which the Pallas Triton lowering of a reduction cannot take (a
  # ValueError on jax 0.11.2, docs/results/gpu-2026-12-05-fp8ah).
  if out_sharding is None and off_mesh(arrays[0]):
    with jax.sharding.use_abstract_mesh(jax.sharding.AbstractMesh((), ())):
      return fun(*arrays)
  # Each array resharded to its own type first: under an eager jax.grad of
  # an array of one device, the tracer is typed on the mesh but auto_axes's
  # transpose gave its cotangent the Auto mesh (a ValueError at the next op;
  # jax 0.10.2). The reshard's transpose types it as the input.
  arrays = jax.tree.map(
      lambda a: jax.sharding.reshard(a, jax.typeof(a).sharding.spec), arrays)
  auto = lambda out_sharding: jax.sharding.auto_axes(  # noqa: E731
      fun, axes=axes, out_sharding=out_sharding)
  if out_sharding is not None:
    return auto(out_sharding)(*arrays)
  like = jax.typeof(arrays[0])
  # The results' shapes, to choose their shardings: a trace with everything
  # replicated.
  shapes = jax.eval_shape(auto(P()), *arrays)
  return auto(jax.tree.map(
      lambda s: like.sharding.spec if s.shape == like.shape else P(),
      shapes))(*arrays)
