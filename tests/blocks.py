"""Block-represented operands for the block GEMM's tests.

X and W with a share of their 128x128 blocks spread over a range E4M3
cannot hold (so that sub-tensor MoR puts them in BF16), and the
``BlockOperand`` that ``mor_quantize`` gives for a view; shared by
tests/test_block_gemm.py and tests/test_kernels_sharding.py.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

import mor_jax
from mor_jax.kernels import block_gemm as bg

B = 128
TWO_WAY = mor_jax.SubTensorMoR(mode="two_way")


def spoil(x: np.ndarray, share: float, seed: int, lo: float) -> np.ndarray:
  """x with round(share * blocks) of its 128x128 blocks spread over
  [lo, 1/lo] in magnitude, a range E4M3 cannot hold."""
  rb, kb = -(-x.shape[0] // B), -(-x.shape[1] // B)
  pick = np.random.default_rng(seed).permutation(rb * kb)
  pick = pick[:round(share * rb * kb)]
  x = x.copy()
  for p in pick:
    i, j = divmod(int(p), kb)
    blk = x[i * B:(i + 1) * B, j * B:(j + 1) * B]
    blk *= np.geomspace(lo, 1 / lo, blk.shape[1], dtype=np.float32)
  return x


def operand(x, recipe):
  """(BlockOperand of x's [rows, K] view as ``recipe`` quantizes it, choice)."""
  r = mor_jax.mor_quantize(x, recipe)
  fmt = next(f for f in recipe.formats if f.is_fp8)
  qa = mor_jax.quantize(x, fmt, block_shape=recipe.block_shape,
                        scaling=recipe.scaling, group_shape=recipe.group_shape)
  rep = bg.representation_codes(r.choice, r.names)
  # The codes are MoR's own where it chose their format: the emulated
  # operand is their dequantization there.
  own = np.asarray(rep) == (bg.REP_E4M3 if fmt == mor_jax.E4M3 else bg.REP_E5M2)
  mask = np.kron(own, np.ones(tuple(s or 1 for s in recipe.block_shape)))
  mask = mask[:x.shape[0], :x.shape[1]].astype(bool)
  deq = np.asarray(mor_jax.dequantize(qa))
  np.testing.assert_array_equal(deq[mask], np.asarray(r.value)[mask])
  # Its wide values: x as it came, with the values of blocks in another FP8
  # format (the GEMM dequantizes the codes in their own blocks).
  wide = jnp.where(mask, x, r.value)
  return bg.BlockOperand(qa.data, 1 / qa.scale, rep, wide), rep


def stored_transposed(op: bg.BlockOperand) -> bg.BlockOperand:
  """op with its wide values stored [K, rows], as ``_block.transpose``
  leaves a transposed view's."""
  return bg.BlockOperand(op.codes, op.recip, op.rep, op.wide.T, True)


def data(m, k, n, share, lo=1e-9):
  """X [m, k] and W [k, n], ``share`` of the blocks of X and of W^T spoiled."""
  rng = np.random.default_rng(0)
  x = rng.standard_normal((m, k), np.float32)
  w = rng.standard_normal((k, n), np.float32) * 0.05
  return spoil(x, share, 1, lo), spoil(w.T, share, 2, lo).T
