"""The transpose of one-byte FP8 codes, per shard.

The block GEMM's operand for a transposed view (``mor_jax._block.transpose``:
X^T in wgrad, W^T in dgrad, dY^T in wgrad) is the same quantization with its
codes transposed, since FP8 tensor cores read K-major tiles only. XLA
transposes such codes fast alone (0.110 ms at [16384, 8192] on the H200,
this kernel 0.089), but in a training step it fused them into multi-output
fusions that ran far below memory speed: the ~1B preset's mor_block step
spent 54-59 ms of 246 in them, and 5 with this kernel (docs/benchmarks.md).
It moves a 128 x 128 tile per program through shared memory.

Backend: Triton, as the passes (kernels/quantize.py says why); masked loads
and stores cover ragged edges, and ``interpret=True`` runs it on a CPU.
Under ``jit`` with a sharded operand each device transposes its shard, and
the result is sharded transposed.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton
from jax.sharding import PartitionSpec as P

from mor_jax.kernels import sharding
from mor_jax.kernels import tile

# Edge of a program's square tile (16 KiB of codes), and its warps.
TILE = 128
_WARPS = 8


def _kernel(x_ref, o_ref, *, shape):
  ragged = shape[0] % TILE or shape[1] % TILE
  mask = tile.in_array(*shape, TILE, TILE) if ragged else None
  x = x_ref[...] if mask is None else pltriton.load(x_ref, mask=mask, other=0)
  tile.store(o_ref, x.T, None if mask is None else mask.T)


def _local(x: jax.Array, interpret: bool) -> jax.Array:
  r, c = x.shape
  # Triton moves bytes as integers; the FP8 codes are bitcast both ways.
  out = pl.pallas_call(
      functools.partial(_kernel, shape=x.shape),
      grid=(pl.cdiv(r, TILE), pl.cdiv(c, TILE)),
      in_specs=[pl.BlockSpec((TILE, TILE), lambda i, j: (i, j))],
      out_specs=pl.BlockSpec((TILE, TILE), lambda i, j: (j, i)),
      out_shape=sharding.result((c, r), jnp.uint8, x),
      compiler_params=pltriton.CompilerParams(num_warps=_WARPS),
      interpret=interpret,
      name="mor_transpose_codes",
  )(jax.lax.bitcast_convert_type(x, jnp.uint8))
  return jax.lax.bitcast_convert_type(out, x.dtype)


@dataclasses.dataclass(frozen=True)
class _Transpose:
  interpret: bool
  rule = "r c -> c r"

  def local(self, x):
    return (_local(x, self.interpret),)

  def batchable_local(self, x):
    return (x.T,)

  def plan(self, arg_shapes):
    mesh, (ra, ca) = sharding.layout(arg_shapes[0])
    r_, c_ = sharding.entry(ra), sharding.entry(ca)
    return (mesh, sharding.named(mesh, P(c_, r_)),
            sharding.named(mesh, P(r_, c_)), lambda outs: outs)


def transpose_codes(x: jax.Array, *, interpret: bool) -> jax.Array:
  """x.T for a 2-D array of one-byte elements (FP8 codes), bit for bit.

  Under ``jit`` with ``x`` sharded by named mesh axes each device transposes
  its shard (the result is sharded transposed; a dimension the mesh does not
  divide evenly is gathered); under ``vmap``, ``x.T``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from mor_jax.kernels import transpose
    >>> x = jnp.arange(6, dtype=jnp.float32).reshape(2, 3)
    >>> transpose.transpose_codes(x.astype(jnp.float8_e4m3fn),
    ...                           interpret=True).astype(jnp.float32)
    Array([[0., 3.],
           [1., 4.],
           [2., 5.]], dtype=float32)
  """
  if x.ndim != 2 or jnp.dtype(x.dtype).itemsize != 1:
    raise TypeError(f"transpose_codes takes a 2-D array of one-byte "
                    f"elements, got {x.dtype}{list(x.shape)}.")
  return sharding.per_shard(_Transpose(interpret))(x)[0]
