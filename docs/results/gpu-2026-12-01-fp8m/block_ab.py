"""Fourteenth session: the block GEMM as it is (this tree) against HEAD's
(scratch/old), in turns in one process, at (16384, 8192, 8192) bf16 with
128x128 E4M3 blocks and a share of X's blocks BF16; cuBLAS BF16 and the
per-channel FP8 GEMM in the same rounds. Run from the repository root with
PYTHONPATH=$PWD: python3 scratch/block_ab.py [trees under scratch/, default old]"""
import functools
import importlib.util
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, "benchmarks")
import gemm as bench  # noqa: E402
from timing import timed_interleaved  # noqa: E402
from mor_jax import kernels  # noqa: E402
from mor_jax.kernels import block_gemm as new  # noqa: E402

def load(tree):
  spec = importlib.util.spec_from_file_location(
      f"{tree}_block_gemm", f"scratch/{tree}/kernels/block_gemm.py")
  mod = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = mod
  spec.loader.exec_module(mod)
  return mod


TREES = [("new", new)] + [(t, load(t)) for t in sys.argv[1:] or ["old"]]

m, k, n = 16384, 8192, 8192
a = jax.random.normal(jax.random.key(0), (m, k), jnp.bfloat16)
b = jax.random.normal(jax.random.key(1), (n, k), jnp.bfloat16)
a8, ra = jax.jit(bench._codes)(a)
b8, rb = jax.jit(bench._codes)(b)
blocks = jax.jit(bench._blocks, static_argnums=(1, 2))
wb = blocks(b, 0.0, 2)
cases = {
    "cublas_bf16": (jax.jit(lambda a, b: jax.lax.dot_general(
        a, b, bench.TN, preferred_element_type=jnp.bfloat16)), (a, b)),
    "per_channel_fp8": (jax.jit(lambda: kernels.gemm.gemm(
        *bench._operands(a, a8, ra, b, b8, rb, True), out_dtype=jnp.bfloat16,
        config=kernels.GemmConfig())), ()),
}
for share in (0.0, 0.1, 0.5, 1.0):
  wa = blocks(a, share, 3)
  want = new.block_gemm_reference(wa, wb, out_dtype=jnp.float32,
                                  precision=jax.lax.Precision.HIGHEST)
  for name, mod in TREES:
    fn = jax.jit(functools.partial(mod.block_gemm, out_dtype=jnp.bfloat16))
    cases[f"{name}_{share}"] = (fn, (wa, wb))
    bench.say(case=f"{name}_{share}", rel_frobenius=bench.rel(fn(wa, wb), want))
  del want
got = timed_interleaved(cases, iters=3, rounds=9)
for name, (t, ratio) in got.items():
  bench.say(case=name, ms=round(t * 1e3, 3), vs_bf16=round(ratio, 3),
            speed_vs_bf16=round(1 / ratio, 3),
            tflops=round(2 * m * n * k / t / 1e12, 1))
