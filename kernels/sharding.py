"""The kernels per shard: block-wise ops under ``custom_partitioning``.

A ``pallas_call`` is opaque to XLA's SPMD partitioner, which would gather a
sharded operand onto every device to run it. Both passes are block-wise over
a 2-D view [rows, cols] of the tensor: they map an array (and, for pass 2, a
grid of per-block scales) to arrays of its shape and to per-block grids.
That structure says how to run them per shard, one dimension at a time:

- shards of whole blocks (the shard size a multiple of the block): each
  device runs the kernel on its shard, and the block grid is sharded the same
  way; nothing moves between devices;
- one block over the whole, sharded dimension (per-tensor scaling, or
  per-channel along a sharded contraction): each device reduces its part of
  the block, and the per-block grids are combined across the mesh axes of
  that dimension (max, sum or min of a few numbers per block);
- anything else (a dimension the mesh does not divide, blocks cut by shard
  boundaries): that dimension is gathered, the one case that moves the
  tensor.

The group amax of gam scaling and the decision are computed by XLA from the
per-block grids, which it partitions by itself. One device, or a body of
``shard_map``, runs the kernels directly; under ``vmap`` the ops run the
kernels batched, unpartitioned.

``per_shard`` does the same for ops that say themselves how their operands
and results are sharded (``ShardedOp``): the dual quantization passes and
the two GEMMs (kernels/dual.py, kernels/gemm.py, kernels/block_gemm.py).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import jax
import jax.numpy as jnp
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

# Cross-device combination of a per-block grid, by the name ops use.
COMBINE = {"max": jax.lax.pmax, "sum": jax.lax.psum, "min": jax.lax.pmin}


@dataclasses.dataclass(frozen=True)
class _Dim:
  """How one dimension of the 2-D view is split across the mesh.

  Attributes:
    axes: the mesh axes it stays sharded on (() for whole on every device).
    spans: one block covers the whole dimension, so every shard holds part of
      it and the block statistics are combined across ``axes``.
  """

  axes: tuple[str, ...]
  spans: bool

  def local_block(self, local_size: int, block: int) -> int:
    return local_size if self.spans else block

  @property
  def grid_axes(self) -> tuple[str, ...]:
    return () if self.spans else self.axes


def _axes(entry) -> tuple[str, ...]:
  if entry is None:
    return ()
  return tuple(entry) if isinstance(entry, (tuple, list)) else (entry,)


def _spec_entry(axes: tuple[str, ...]):
  return None if not axes else axes[0] if len(axes) == 1 else axes


def split(mesh, spec: P, shape: Sequence[int],
          block: Sequence[int]) -> tuple[_Dim, _Dim]:
  """The per-dimension split of a [rows, cols] array with ``spec``."""
  entries = tuple(spec) + (None,) * (2 - len(spec))
  dims = []
  for entry, size, b in zip(entries, shape, block):
    axes = _axes(entry)
    n = math.prod(mesh.shape[a] for a in axes)
    if n == 1 or size % n:
      dims.append(_Dim((), False))
    elif b == size:
      dims.append(_Dim(axes, True))
    elif (size // n) % b == 0:
      dims.append(_Dim(axes, False))
    else:
      dims.append(_Dim((), False))  # shard edges would cut blocks: gather
  return tuple(dims)


@dataclasses.dataclass(frozen=True)
class BlockwiseOp:
  """A block-wise op on a [rows, cols] array, partitioned per shard.

  ``local(block, x, *grids)`` (hashable: a frozen dataclass) must compute,
  for an array and the per-block grids that go with it, ``n_like_x`` arrays
  shaped like ``x`` followed by per-block grids; ``combine`` names, per
  output grid, how partial grids of one block are combined across devices
  ("max", "sum" or "min").
  """

  local: Callable[..., tuple[jax.Array, ...]]
  block: tuple[int, int]
  n_like_x: int
  combine: tuple[str, ...]

  def _layout(self, mesh, x_sharding, shape):
    if not isinstance(x_sharding, NamedSharding):
      raise NotImplementedError(
          "mor_jax's Pallas kernels are partitioned by named mesh axes, but "
          f"this operand's sharding is {x_sharding}. Shard with a "
          "jax.sharding.NamedSharding, or set MOR_JAX_IMPL=xla.")
    dims = split(mesh, x_sharding.spec, shape, self.block)
    x_spec = P(*(_spec_entry(d.axes) for d in dims))
    grid_spec = P(*(_spec_entry(d.grid_axes) for d in dims))
    return x_sharding.mesh, dims, x_spec, grid_spec

  def _result_shardings(self, mesh, x_spec, grid_spec):
    return ((NamedSharding(mesh, x_spec),) * self.n_like_x +
            (NamedSharding(mesh, grid_spec),) * len(self.combine))

  def partition(self, mesh, arg_shapes, result_shape):
    del result_shape
    x = arg_shapes[0]
    mesh, dims, x_spec, grid_spec = self._layout(mesh, x.sharding, x.shape)
    local_shape = [s // math.prod(mesh.shape[a] for a in d.axes)
                   for s, d in zip(x.shape, dims)]
    block = tuple(d.local_block(s, b)
                  for d, s, b in zip(dims, local_shape, self.block))
    reduce_axes = tuple(a for d in dims if d.spans for a in d.axes)

    def lower(*args):
      outs = self.local(block, *args)
      if not reduce_axes:
        return outs
      like_x, grids = outs[:self.n_like_x], outs[self.n_like_x:]
      return (*like_x, *(COMBINE[c](g, reduce_axes)
                         for c, g in zip(self.combine, grids)))

    arg_shardings = (NamedSharding(mesh, x_spec),) + tuple(
        NamedSharding(mesh, grid_spec) for _ in arg_shapes[1:])
    return (mesh, lower, self._result_shardings(mesh, x_spec, grid_spec),
            arg_shardings)

  def infer_sharding_from_operands(self, mesh, arg_shapes, result_shape):
    del result_shape
    x = arg_shapes[0]
    mesh, _, x_spec, grid_spec = self._layout(mesh, x.sharding, x.shape)
    return self._result_shardings(mesh, x_spec, grid_spec)

  def sharding_rule(self, mesh, value_types, result_types):
    """Shardy's view: x-shaped outputs follow x; the grids have own factors.

    Tying a grid dimension to x's as a compound factor (blocks x block size)
    would let Shardy split a mesh axis into sub-axes that ``partition``
    cannot name; ``partition`` relates the two itself.
    """
    del mesh, result_types
    operands = ["x0 x1"] + ["g0 g1"] * (len(value_types) - 1)
    results = ["x0 x1"] * self.n_like_x + ["g0 g1"] * len(self.combine)
    return f"{', '.join(operands)} -> {', '.join(results)}"


def _batchable(partitioned: Callable, local: Callable) -> Callable:
  """``partitioned``, which under ``vmap`` runs ``local`` batched instead.

  custom_partitioning has no batching rule; the batched op runs whole on
  one device (unpartitioned).
  """

  @jax.custom_batching.custom_vmap
  def batchable(*args):
    return partitioned(*args)

  @batchable.def_vmap
  def _batched(axis_size, in_batched, *args):
    del axis_size
    outs = jax.vmap(local, in_axes=[0 if b else None for b in in_batched])(
        *args)
    return outs, (True,) * len(outs)

  return batchable


@functools.lru_cache(maxsize=None)
def blockwise(op: BlockwiseOp) -> Callable[..., tuple[jax.Array, ...]]:
  """``op`` as a function of (x, *grids), partitioned per shard under jit.

  Inputs are taken without gradient: the ops compute codes and statistics,
  and their callers attach gradients (straight-through) themselves.
  """

  # jit: custom_partitioning takes a body without captured constants, and
  # the kernels' index tables are NumPy constants.
  @jax.jit
  def body(x, *grids):
    return op.local(op.block, x, *grids)

  partitioned = custom_partitioning(body)
  partitioned.def_partition(
      partition=op.partition,
      infer_sharding_from_operands=op.infer_sharding_from_operands,
      sharding_rule=op.sharding_rule)
  batchable = _batchable(partitioned, body)

  def call(x, *grids):
    return batchable(*(jax.lax.stop_gradient(a) for a in (x, *grids)))

  return call


# ----------------------------------------------------------------------------
# Ops that plan their own shardings.


def axes_of(entry) -> tuple[str, ...]:
  return _axes(entry)


def entry(axes: tuple[str, ...]):
  """The PartitionSpec entry of a dimension split over ``axes``."""
  return _spec_entry(axes)


def result(shape, dtype, *inputs: jax.Array) -> jax.ShapeDtypeStruct:
  """A kernel's result type: inside ``jax.shard_map`` it varies over the
  manual axes any of ``inputs`` varies over (its ``check_vma`` asks every
  ``pallas_call`` to say so; elsewhere that set is empty)."""
  varying = frozenset().union(
      *(jax.typeof(x).manual_axis_type.varying for x in inputs))
  return jax.ShapeDtypeStruct(
      shape, dtype,
      manual_axis_type=jax.sharding.ManualAxisType(varying=varying))


def named(mesh, *specs: P) -> tuple[NamedSharding, ...]:
  return tuple(NamedSharding(mesh, s) for s in specs)


def combine(op: str, value: jax.Array, axes: tuple[str, ...]) -> jax.Array:
  """Combines per-shard partials of ``value`` over ``axes`` ("max", ...)."""
  return COMBINE[op](value, axes) if axes else value


def k_summed_plan(op, mesh, results, args, k_axes: tuple[str, ...]
                  ) -> tuple[Any, ...]:
  """A GEMM's ``ShardedOp.plan`` whose K may stay split over ``k_axes``.

  Then the shards run ``op.local(..., out_dtype=float32)`` and ``combine``
  sums their partial outputs in float32 and rounds once to ``op.out_dtype``,
  as one device rounds its float32 accumulator once.
  """
  if not k_axes:
    return mesh, results, args, lambda outs: outs

  def summed(outs):
    return (combine("sum", outs[0], k_axes).astype(op.out_dtype),)

  return (mesh, results, args, summed,
          functools.partial(op.local, out_dtype=jnp.float32))


def layout(x) -> tuple[Any, tuple[tuple[str, ...], ...]]:
  """(mesh, per dimension the mesh axes that split it evenly) of an operand.

  A dimension the mesh does not divide evenly is gathered (no axes).
  """
  if not isinstance(x.sharding, NamedSharding):
    raise NotImplementedError(
        "mor_jax's Pallas kernels are partitioned by named mesh axes, but "
        f"this operand's sharding is {x.sharding}. Shard with a "
        "jax.sharding.NamedSharding, or set MOR_JAX_IMPL=xla.")
  mesh = x.sharding.mesh
  spec = tuple(x.sharding.spec) + (None,) * (len(x.shape) - len(
      x.sharding.spec))
  dims = []
  for e, size in zip(spec, x.shape):
    axes = _axes(e)
    n = math.prod(mesh.shape[a] for a in axes)
    dims.append(axes if n > 1 and size % n == 0 else ())
  return mesh, tuple(dims)


class ShardedOp(Protocol):
  """An op that runs per shard (hashable: a frozen dataclass).

  ``local(*args)`` computes on one device's shards; ``plan(arg_shapes)``
  returns (mesh, result shardings, argument shardings, combine), where
  ``combine`` turns the local results into the shards of the global ones
  (collectives over mesh axes), and may add a function that the shards run
  instead of ``local`` for this plan (partial sums kept in float32 until
  ``combine`` has summed them); ``rule`` is the op's Shardy rule. Under
  ``vmap`` the op runs ``local`` batched, or ``batchable_local`` where a
  kernel has no batching rule.
  """

  rule: str

  def local(self, *args) -> tuple[jax.Array, ...]:
    ...

  def plan(self, arg_shapes) -> tuple[Any, ...]:
    ...


@functools.lru_cache(maxsize=None)
def per_shard(op: ShardedOp) -> Callable[..., tuple[jax.Array, ...]]:
  """``op.local`` partitioned per shard under jit, batched under vmap.

  Inputs are taken without gradient, as for ``blockwise``.
  """

  @jax.jit  # custom_partitioning takes a body without captured constants.
  def body(*args):
    return op.local(*args)

  def partition(mesh, arg_shapes, result_shape):
    del mesh, result_shape
    mesh, results, args, combine_fn, *shard_fn = op.plan(arg_shapes)
    local = shard_fn[0] if shard_fn else op.local
    return mesh, lambda *a: combine_fn(local(*a)), results, args

  def infer(mesh, arg_shapes, result_shape):
    del mesh, result_shape
    return op.plan(arg_shapes)[1]

  partitioned = custom_partitioning(body)
  partitioned.def_partition(partition=partition,
                            infer_sharding_from_operands=infer,
                            sharding_rule=op.rule)
  batchable = _batchable(partitioned, getattr(op, "batchable_local", body))

  def call(*args):
    return batchable(*(jax.lax.stop_gradient(a) for a in args))

  return call
