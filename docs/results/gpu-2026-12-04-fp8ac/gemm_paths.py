"""Thirtieth session: kernels/gemm.py's four cases after an accepted
operand's codes are dequantized in the kernel's registers (the other
operand rejected; with B accepted the kernel computes the output's
transpose), with no writer launched before the kernel. One jitted GEMM
whose decisions are arguments (as a layer calls it), (16384, 8192, 8192)
bf16, timed in a loop (benchmarks/timing.py) against cuBLAS BF16 in the
same process; each case's relative Frobenius difference from
``gemm_reference`` (float32 accumulation). The twenty-eighth session's
script (gpu-2026-12-04-fp8aa/gemm_paths.py), but for this text and one
kernel per GemmConfig named on the command line (``benchmarks/gemm.py``'s
syntax, e.g. ``default delay_release=0``).

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
  ops = lambda fa, fb: bench._operands(a, a8, ra, b, b8, rb, fa, fb)  # noqa: E731
  ref = jax.jit(lambda fa, fb: kernels.gemm.gemm_reference(
      *ops(fa, fb), out_dtype=jnp.float32))
  for name in sys.argv[1:] or ["default"]:
    fn = jax.jit(lambda fa, fb, c=bench.gemm_config(name): kernels.gemm.gemm(
        *ops(fa, fb), out_dtype=jnp.bfloat16, config=c))
    for case, flags in (("fp8", (True, True)), ("bf16", (False, False)),
                        ("a_accepted", (True, False)),
                        ("b_accepted", (False, True))):
      flags = tuple(map(jnp.bool_, flags))
      t = timed(fn, *flags)
      say(config=name, case=case, ms=round(t * 1e3, 3),
          vs_bf16=round(t / t_bf16, 3),
          rel_to_reference=bench.rel(fn(*flags), ref(*flags)))


if __name__ == "__main__":
  main()
