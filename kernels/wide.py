"""The GEMMs' 16-bit operands, written only where their BF16 loops read.

kernels/block_gemm.py multiplies a pair of 128x128 blocks (at one step of
K) on BF16 tensor cores when either block is not in FP8, from the values of
the emulated path: the original values of a BF16 block, the codes
dequantized for an FP8 one. XLA used to write those values for every block
beside each quantization, a pass of 5 bytes per element over every quantized
tensor, though in training nearly every pair runs in FP8 and reads none of
them: writing them here instead took the ~1B preset's mor_block step on the
H200 from 1.036x dense's tokens/s to 1.047-1.055x (docs/benchmarks.md).

``values`` writes them per block, only in the blocks the GEMM's plan says
its BF16 loop reads (``read``); any other block loads nothing and is left
unwritten (the GEMM never reads it). A block's rows in the codes' format
take their codes dequantized (bit for bit
``mor_jax._numerics.dequantize_values``, as the emulated path computes
them), the others the original values. The GEMM alone now pays for the
values it reads: at (16384, 8192, 8192) with 10-100% of X's blocks BF16,
0.16-0.29 ms before its kernel, where W's values are all read.

kernels/gemm.py writes an accepted operand's values here too, for its
16-bit loop where the other operand is rejected: one factor per row for
all of K, and a single flag for every block, so that in any other case each
program reads the flag and stops. Its kernel dequantized each tile at every
K step instead, which took twice cuBLAS BF16's time (docs/benchmarks.md).

Backend: Triton, as the quantization passes (kernels/quantize.py says why);
``interpret=True`` runs it on a CPU. It runs inside the GEMMs' per-shard
functions, on one device's padded operands.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from mor_jax import _numerics

# Edge of a block; a program's warps, and the most blocks along K it takes
# (in training most programs read no block: launching them is the cost).
BLOCK = 128
_WARPS = 8
_MAX_SPAN = 8


def _kernel(read_ref, codes_ref, recip_ref, *refs, fmt, transposed: bool,
            span: int, per_block: bool):
  # Without own and wide (``values``' own None): every row is the codes'.
  *own_wide, out_ref = refs
  for j in range(span):  # the program's blocks along K
    cols = slice(j * BLOCK, (j + 1) * BLOCK)

    @pl.when(read_ref[0, j if per_block else 0] != 0)
    def _():
      q = codes_ref[:, cols]
      q = jax.lax.bitcast_convert_type(q, fmt).astype(jnp.float32)
      if transposed:  # the values are stored [K, rows]; the codes [rows, K]
        q = q.T
        at, grid = (cols, slice(None)), (slice(j, j + 1), slice(None))
      else:
        at, grid = (slice(None), cols), (slice(None), slice(j, j + 1))
      if recip_ref.ndim == 1:  # one factor per row along all of K
        r = recip_ref[...]
        r = r[None, :] if transposed else r[:, None]
      else:
        r = recip_ref[grid]
      v = _numerics.dequantize_values(q, r, out_ref.dtype)
      if own_wide:
        own_ref, wide_ref = own_wide
        v = jnp.where(own_ref[grid] != 0, v, wide_ref[at])
      out_ref[at] = v


def values(codes: jax.Array, recip: jax.Array, own: jax.Array,
           wide: jax.Array, read: jax.Array, *, transposed: bool,
           interpret: bool = False) -> jax.Array:
  """The emulated operand's values in the blocks ``read`` marks.

  Args:
    codes: [R, K] FP8 codes, R and K multiples of 128.
    recip: [R, K / 128] float32 reciprocals of the scales, per row; or [R],
      one per row for all of K.
    own: [R, K / 128] int32, nonzero where the row's block is in the codes'
      format (its values are the codes dequantized); None: every row's
      blocks are (``wide`` then gives the result's layout and dtype, and is
      not read).
    wide: [R, K], or [K, R] if ``transposed``, the values elsewhere (in a
      16-bit or float32 dtype).
    read: [R / 128, K / 128] int32, nonzero for the blocks to write; or a
      scalar for all of them.
    transposed: ``wide`` (and the result) stored [K, R].
    interpret: run the kernel in Pallas' interpreter (a CPU).

  Returns:
    An array like ``wide``: in a block ``read`` marks, ``own`` rows'
    dequantized codes and ``wide`` elsewhere; other blocks unwritten.

  Examples:
    >>> import jax.numpy as jnp
    >>> from mor_jax.kernels import wide
    >>> codes = jnp.full((128, 128), 3.0, jnp.float8_e4m3fn)
    >>> recip = jnp.full((128, 1), 0.5)          # per row, one K block
    >>> own = (jnp.arange(128) < 64)[:, None]    # rows 0-63 in FP8
    >>> x = jnp.full((128, 128), 7.0, jnp.bfloat16)
    >>> v = wide.values(codes, recip, own, x, jnp.ones((1, 1)),
    ...                 transposed=False, interpret=True)
    >>> v[0, 0], v[127, 0]
    (Array(1.5, dtype=bfloat16), Array(7, dtype=bfloat16))

    kernels/gemm.py's form: one factor per row for all of K, every row in
    the codes' format (``x`` only gives the layout and dtype), one flag:

    >>> v = wide.values(codes, jnp.full((128,), 0.25), None, x,
    ...                 jnp.bool_(True), transposed=False, interpret=True)
    >>> v[0, 0], v[127, 127]
    (Array(0.75, dtype=bfloat16), Array(0.75, dtype=bfloat16))
  """
  r, k = codes.shape
  if r % BLOCK or k % BLOCK:
    raise ValueError(f"values takes codes padded to multiples of {BLOCK}, "
                     f"got {codes.shape}.")
  # A program takes ``span`` blocks along K: a power of two dividing K's.
  kb = k // BLOCK
  span = math.gcd(kb, _MAX_SPAN)
  tile = pl.BlockSpec((BLOCK, span * BLOCK), lambda i, j: (i, j))
  # Per-row grids [R, K / 128] give a tile its rows' columns; stored [K, R]
  # the values want them as rows.
  if transposed:
    rows = pl.BlockSpec((span, BLOCK), lambda i, j: (j, i))
    out = pl.BlockSpec((span * BLOCK, BLOCK), lambda i, j: (j, i))
  else:
    rows = pl.BlockSpec((BLOCK, span), lambda i, j: (i, j))
    out = tile
  grid = lambda g: g.T if transposed else g  # noqa: E731
  per_block = read.ndim == 2
  # Triton moves the codes as bytes; the kernel bitcasts them back.
  args = [read.reshape(read.shape if per_block else (1, 1)).astype(jnp.int32),
          jax.lax.bitcast_convert_type(codes, jnp.uint8),
          (recip if recip.ndim == 1 else grid(recip)).astype(jnp.float32)]
  specs = [pl.BlockSpec((1, span), lambda i, j: (i, j)) if per_block else
           pl.BlockSpec((1, 1), lambda i, j: (0, 0)), tile,
           pl.BlockSpec((BLOCK,), lambda i, j: (i,)) if recip.ndim == 1 else
           rows]
  if own is not None:
    args += [grid(own).astype(jnp.int32), wide]
    specs += [rows, out]
  return pl.pallas_call(
      functools.partial(_kernel, fmt=codes.dtype, transposed=transposed,
                        span=span, per_block=per_block),
      grid=(r // BLOCK, kb // span),
      in_specs=specs,
      out_specs=out,
      out_shape=jax.ShapeDtypeStruct(wide.shape, wide.dtype),
      compiler_params=pltriton.CompilerParams(num_warps=_WARPS),
      interpret=interpret,
      name="mor_wide_values",
  )(*args)
