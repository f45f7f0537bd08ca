"""Thirty-first session: kernels/gemm.py's dequantizing loop (one operand
accepted, the other rejected) in tiles whose row factors need neither flush
nor saturation (the bare product: `_numerics.dequantize_is_plain`) against
tiles that need the full dequantization. Same kernel, same process: the
full case only sets one factor in every 64 rows (a warpgroup's rows) to
1e-37, whose products need the flush. (16384, 8192, 8192) bf16, one jitted
GEMM with the decisions as arguments, timed in a loop
(benchmarks/timing.py) against cuBLAS BF16; each case's relative Frobenius
difference from ``gemm_reference`` (float32 accumulation).

Run from the repository root: PYTHONPATH=$PWD:$PWD/benchmarks python3 <this>
"""

import json
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, "benchmarks")
import gemm as bench  # noqa: E402
from timing import timed  # noqa: E402
from mor_jax import kernels  # noqa: E402


def main():
  m, k, n = 16384, 8192, 8192
  a = jax.random.normal(jax.random.key(0), (m, k), jnp.bfloat16)
  b = jax.random.normal(jax.random.key(1), (n, k), jnp.bfloat16)
  a8, ra = jax.jit(bench._codes)(a)
  b8, rb = jax.jit(bench._codes)(b)
  say = lambda **kw: print(json.dumps(kw), flush=True)  # noqa: E731
  t_bf16 = timed(jax.jit(lambda: jax.lax.dot_general(
      a, b, bench.TN, preferred_element_type=jnp.bfloat16)))
  say(case="cublas_bf16", ms=round(t_bf16 * 1e3, 3))
  full = lambda r: r.at[::64].set(1e-37)  # noqa: E731
  fn = jax.jit(lambda *args: kernels.gemm.gemm(
      *bench._operands(*args), out_dtype=jnp.bfloat16,
      config=kernels.GemmConfig()))
  ref = jax.jit(lambda *args: kernels.gemm.gemm_reference(
      *bench._operands(*args), out_dtype=jnp.float32))
  for _ in range(2):
    for case, factors, flags in (
        ("a_accepted_plain", (ra, rb), (True, False)),
        ("a_accepted_full", (full(ra), rb), (True, False)),
        ("b_accepted_plain", (ra, rb), (False, True)),
        ("b_accepted_full", (ra, full(rb)), (False, True))):
      args = (a, a8, factors[0], b, b8, factors[1], *map(jnp.bool_, flags))
      t = timed(fn, *args)
      say(case=case, ms=round(t * 1e3, 3), vs_bf16=round(t / t_bf16, 3),
          rel_to_reference=bench.rel(fn(*args), ref(*args)))


if __name__ == "__main__":
  main()
