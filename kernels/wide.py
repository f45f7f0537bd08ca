"""The block GEMM's 16-bit operands, written only where its BF16 loop reads.

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

Its two operands are written in one launch: where nothing is
written, the launch is the whole cost (kernels/gemm.py, whose 16-bit loop
read an accepted operand's values written here, lost 1.9% of a chain of
72 GEMMs of 4096^3 to this launch on the H200, and now dequantizes in
registers instead: docs/benchmarks.md, twenty-ninth and thirtieth
sessions).

Backend: Triton, as the quantization passes (kernels/quantize.py says why);
``interpret=True`` runs it on a CPU. It runs inside the block GEMM's per-shard
function, on one device's padded operands.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from mor_jax import _numerics
from mor_jax.kernels import sharding

# Edge of a block; a program's warps, and the most blocks along K it takes
# (in training most programs read no block: launching them is the cost).
BLOCK = 128
_WARPS = 8
_MAX_SPAN = 8


class Request(NamedTuple):
  """One operand's values, for ``values``.

  Attributes:
    codes: [R, K] FP8 codes, R and K multiples of 128.
    recip: [R, K / 128] float32 reciprocals of the scales, per row.
    own: [R, K / 128] int32, nonzero where the row's block is in the codes'
      format (its values are the codes dequantized).
    wide: [R, K], or [K, R] if ``transposed``, the values elsewhere (in a
      16-bit or float32 dtype).
    read: [R / 128, K / 128] int32, nonzero where the block is written.
    transposed: ``wide`` (and the result) stored [K, R].
  """

  codes: jax.Array
  recip: jax.Array
  own: jax.Array
  wide: jax.Array
  read: jax.Array
  transposed: bool


class _Static(NamedTuple):
  """What the kernel knows of a request: its programs' rows of blocks
  [start, start + rows), and how its refs are laid out."""
  start: int
  rows: int
  fmt: jnp.dtype
  transposed: bool


def _kernel(*refs, statics: tuple[_Static, ...], span: int):
  outs = refs[len(refs) - len(statics):]
  ins = iter(refs[:len(refs) - len(statics)])
  i = pl.program_id(0)
  for st, out_ref in zip(statics, outs):
    read_ref, codes_ref, recip_ref, own_ref, wide_ref = (
        next(ins) for _ in range(5))
    pl.when((i >= st.start) & (i < st.start + st.rows))(functools.partial(
        _write_row, st, span, read_ref, codes_ref, recip_ref, own_ref,
        wide_ref, out_ref))


def _write_row(st: _Static, span: int, read_ref, *refs):
  for j in range(span):  # the program's blocks along K
    pl.when(read_ref[0, j] != 0)(
        functools.partial(_write_block, j, st, *refs))


def _write_block(j, st: _Static, codes_ref, recip_ref, own_ref, wide_ref,
                 out_ref):
  cols = slice(j * BLOCK, (j + 1) * BLOCK)
  q = codes_ref[:, cols]
  q = jax.lax.bitcast_convert_type(q, st.fmt).astype(jnp.float32)
  if st.transposed:  # the values are stored [K, rows]; the codes [rows, K]
    q = q.T
    at, grid = (cols, slice(None)), (slice(j, j + 1), slice(None))
  else:
    at, grid = (slice(None), cols), (slice(None), slice(j, j + 1))
  v = _numerics.dequantize_values(q, recip_ref[grid], out_ref.dtype)
  out_ref[at] = jnp.where(own_ref[grid] != 0, v, wide_ref[at])


def _row_of(start: int, rows: int):
  """A request's row of blocks at program row i: the other requests'
  programs get a row in range, which they never load."""
  return lambda i: jnp.clip(i - start, 0, rows - 1)


def values(*requests: Request, interpret: bool = False
           ) -> tuple[jax.Array, ...]:
  """Each request's emulated values in the blocks its ``read`` marks, all
  in one launch (the launch is the cost where nothing is written).

  Args:
    *requests: the operands (``Request``), all with the same K.
    interpret: run the kernel in Pallas' interpreter (a CPU).

  Returns:
    Per request an array like its ``wide``: in a block ``read`` marks,
    ``own`` rows' dequantized codes and ``wide`` elsewhere; other blocks
    unwritten.

  Examples:
    >>> import jax.numpy as jnp
    >>> from mor_jax.kernels import wide
    >>> codes = jnp.full((128, 128), 3.0, jnp.float8_e4m3fn)
    >>> recip = jnp.full((128, 1), 0.5)          # per row, one K block
    >>> own = (jnp.arange(128) < 64)[:, None]    # rows 0-63 in FP8
    >>> x = jnp.full((128, 128), 7.0, jnp.bfloat16)
    >>> v, = wide.values(wide.Request(codes, recip, own, x, jnp.ones((1, 1)),
    ...                               transposed=False), interpret=True)
    >>> v[0, 0], v[127, 0]
    (Array(1.5, dtype=bfloat16), Array(7, dtype=bfloat16))
  """
  ks = {q.codes.shape[1] for q in requests}
  for q in requests:
    if q.codes.shape[0] % BLOCK or q.codes.shape[1] % BLOCK:
      raise ValueError(f"values takes codes padded to multiples of {BLOCK},"
                       f" got {q.codes.shape}.")
  if len(ks) != 1:
    raise ValueError(f"values' requests must share K, got codes of shapes "
                     f"{[q.codes.shape for q in requests]}.")
  # A program takes ``span`` blocks along K (a power of two dividing K's)
  # of one request's row of blocks; the requests' rows follow each other.
  kb = ks.pop() // BLOCK
  span = math.gcd(kb, _MAX_SPAN)
  args, in_specs, out_specs, statics, start = [], [], [], [], 0
  for q in requests:
    rows = q.codes.shape[0] // BLOCK
    row = _row_of(start, rows)
    tile = pl.BlockSpec((BLOCK, span * BLOCK),
                        lambda i, j, row=row: (row(i), j))
    # Per-row grids [R, K / 128] give a tile its rows' columns; stored
    # [K, R] the values want them as rows.
    if q.transposed:
      grid_rows = pl.BlockSpec((span, BLOCK), lambda i, j, row=row: (j, row(i)))
      out = pl.BlockSpec((span * BLOCK, BLOCK),
                         lambda i, j, row=row: (j, row(i)))
    else:
      grid_rows = pl.BlockSpec((BLOCK, span), lambda i, j, row=row: (row(i), j))
      out = tile
    grid = lambda g, t=q.transposed: g.T if t else g  # noqa: E731
    # Triton moves the codes as bytes; the kernel bitcasts them back.
    args += [q.read.astype(jnp.int32),
             jax.lax.bitcast_convert_type(q.codes, jnp.uint8),
             grid(q.recip).astype(jnp.float32), grid(q.own).astype(jnp.int32),
             q.wide]
    in_specs += [pl.BlockSpec((1, span), lambda i, j, row=row: (row(i), j)),
                 tile, grid_rows, grid_rows, out]
    out_specs.append(out)
    statics.append(_Static(start, rows, q.codes.dtype, q.transposed))
    start += rows
  return tuple(pl.pallas_call(
      functools.partial(_kernel, statics=tuple(statics), span=span),
      grid=(start, kb // span),
      in_specs=in_specs,
      out_specs=out_specs,
      out_shape=[sharding.result(q.wide.shape, q.wide.dtype, *args)
                 for q in requests],
      compiler_params=pltriton.CompilerParams(num_warps=_WARPS),
      interpret=interpret,
      name="mor_wide_values",
  )(*args))
