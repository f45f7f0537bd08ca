"""The block GEMM with tiles paired along N in clusters (X's tiles
multicast to both; ``BlockGemmConfig(cluster_n=True)``) against its default
and the jnp twin. Where W is all E4M3 the pairs' K blocks are those of the
default, so the outputs should be equal bit for bit; where W's blocks
differ, an FP8 pair whose neighbour is BF16 runs in BF16 (relative
Frobenius to the twin <= 1e-3). Run from the repository root."""

import json

import jax
import jax.numpy as jnp
import numpy as np

from mor_jax.kernels import block_gemm as bg
from tests.blocks import TWO_WAY, data, operand, stored_transposed

PAIRED = bg.BlockGemmConfig(cluster_n=True)
# name: (m, k, n, X's share of BF16 blocks, W's, X's values stored [K, rows])
CASES = {
    "w_e4m3_x50": (1024, 2048, 1024, 0.5, 0.0, False),
    "w_e4m3_x10_xt": (1024, 2048, 1024, 0.1, 0.0, True),
    "both_50": (1024, 2048, 1024, 0.5, 0.5, False),
    "ragged_odd_n": (300, 520, 300, 0.5, 0.5, False),   # 3 column tiles
    "ragged_even_n": (300, 520, 260, 0.5, 0.5, False),  # 2 column tiles
}
for name, (m, k, n, sx, sw, xt) in CASES.items():
  x, _ = data(m, k, n, sx)
  _, w = data(m, k, n, sw)
  a, _ = operand(jnp.asarray(x, jnp.bfloat16), TWO_WAY)
  b, _ = operand(jnp.asarray(w.T, jnp.bfloat16), TWO_WAY)
  if xt:
    a = stored_transposed(a)
  got = np.asarray(bg.block_gemm(a, b, out_dtype=jnp.float32, config=PAIRED))
  base = np.asarray(bg.block_gemm(a, b, out_dtype=jnp.float32))
  want = np.asarray(bg.block_gemm_reference(
      a, b, out_dtype=jnp.float32, precision=jax.lax.Precision.HIGHEST),
      np.float64)
  rel = lambda y: float(np.linalg.norm(y - want) / np.linalg.norm(want))  # noqa: E731
  print(json.dumps(dict(
      case=name, paired_rel_to_twin=rel(got), default_rel_to_twin=rel(base),
      bit_for_bit=bool(np.array_equal(got.view(np.uint32),
                                      base.view(np.uint32))),
      w_bf16=float(np.mean(np.asarray(b.rep) == bg.REP_BF16)))), flush=True)
