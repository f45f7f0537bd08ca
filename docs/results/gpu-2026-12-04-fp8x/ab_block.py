"""Twenty-fifth session: the block GEMM of the tree at sys.argv[1] against
cuBLAS BF16, in turns in one process (benchmarks/timing.py's
``timed_interleaved``), at (16384, 8192, 8192) with X's 128 x 128 blocks all
E4M3 and all BF16, W all E4M3, as benchmarks/gemm.py's block bench makes
them. Run from the repository root, e.g.
  python3 docs/results/gpu-2026-12-04-fp8x/ab_block.py old8acf
"""
import functools
import json
import sys

sys.path.insert(0, "benchmarks")
from timing import timed_interleaved  # noqa: E402

sys.path.insert(0, sys.argv[1])
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

import mor_jax  # noqa: E402
from mor_jax.kernels import block_gemm  # noqa: E402


# benchmarks/gemm.py's _blocks, written again: importing that module would
# build this tree's configurations against the tree under test.
def blocks(x, share, seed):
  qa = mor_jax.quantize(x, mor_jax.E4M3, block_shape=(128, 128))
  rep = jax.random.bernoulli(jax.random.key(seed), share, qa.scale.shape)
  rep = jnp.where(rep, block_gemm.REP_BF16, block_gemm.REP_E4M3)
  return block_gemm.BlockOperand(qa.data, 1.0 / qa.scale, rep, x)


m, k, n = 16384, 8192, 8192
a = jax.random.normal(jax.random.key(0), (m, k), jnp.bfloat16)
b = jax.random.normal(jax.random.key(1), (n, k), jnp.bfloat16)
tn = (((1,), (1,)), ((), ()))
wb = jax.jit(blocks, static_argnums=(1, 2))(b, 0.0, 2)
cases = {"cublas_bf16": (jax.jit(lambda x, y: jax.lax.dot_general(
    x, y, tn, preferred_element_type=jnp.bfloat16)), (a, b))}
gemm = jax.jit(functools.partial(block_gemm.block_gemm, out_dtype=jnp.bfloat16))
for share in (0.0, 1.0):
  cases[f"block_{share:.0%}"] = (
      gemm, (jax.jit(blocks, static_argnums=(1, 2))(a, share, 3), wb))
res = timed_interleaved(cases, iters=10, rounds=12)
print(json.dumps({"tree": sys.argv[1], "module": mor_jax.__file__,
                  **{c: {"ms": round(t * 1e3, 4), "vs_bf16": round(r, 4)}
                     for c, (t, r) in res.items()}}), flush=True)
