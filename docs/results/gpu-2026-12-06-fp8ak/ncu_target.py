"""GEMMs at (16384, 8192, 8192) bf16 for Nsight Compute, each run twice
(the second is profiled): cuBLAS BF16; the block GEMM at 100% BF16 blocks
of X through its block loops (wide=None) and through the 16-bit loop (its
default); at 50% spread at random and at the same K in every row block;
at 0%. Run from the repository root with benchmarks/ on PYTHONPATH."""

import functools
import sys

import jax
import jax.numpy as jnp

from gemm import TN, _blocks
from mor_jax.kernels import block_gemm as bg

m, k, n = 16384, 8192, 8192
a = jax.random.normal(jax.random.key(0), (m, k), jnp.bfloat16)
b = jax.random.normal(jax.random.key(1), (n, k), jnp.bfloat16)
wb = jax.jit(_blocks, static_argnums=(1, 2, 3))(b, 0.0, 2, False)
CASES = {
    "cublas_bf16": None,
    "block_loops_100": (1.0, False, dict(wide=None)),
    "wide_loop_100": (1.0, False, {}),
    "random_50": (0.5, False, {}),
    "same_k_50": (0.5, True, {}),
    "fp8_0": (0.0, False, {}),
}
for name in [a for a in sys.argv[1:] if a != "--once"] or CASES:
  case = CASES[name]
  if case is None:
    fn = jax.jit(lambda: jax.lax.dot_general(
        a, b, TN, preferred_element_type=jnp.bfloat16))
    args = ()
  else:
    share, same_k, cfg = case
    wa = jax.jit(_blocks, static_argnums=(1, 2, 3))(a, share, 3, same_k)
    fn = jax.jit(functools.partial(bg.block_gemm, out_dtype=jnp.bfloat16,
                                   config=bg.BlockGemmConfig(**cfg)))
    args = (wa, wb)
  for _ in range(1 if "--once" in sys.argv else 2):
    jax.block_until_ready(fn(*args))
  print(name, flush=True)
