"""Twenty-ninth session, call 3: where the writer's launch costs in the
72-GEMM chain (writers.py's chain, FP8 decided): kernels/wide.py as it is
(eight blocks of K and eight warps a program), with four warps, with one
block a program, with a whole row of blocks a program (32 for K 4096), a
Triton kernel of one program that writes nothing (the least a launch
costs), and no writer (or those named as arguments; call 5: as_is with
the case read once a program). Timed in turns; each module's counts of the
writer's name and Triton calls.

Run from the repository root: PYTHONPATH=$PWD:$PWD/benchmarks python3 <this>
"""

import contextlib
import functools
import json
import sys
from unittest import mock

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

sys.path.insert(0, "docs/results/gpu-2026-12-04-fp8ab")
sys.path.insert(0, "benchmarks")
import gemm as bench  # noqa: E402
import writers  # noqa: E402
from timing import timed_interleaved  # noqa: E402
from mor_jax import kernels  # noqa: E402
from mor_jax.kernels import wide  # noqa: E402


def one_program(*requests, interpret=False):
  def kernel(case_ref, *outs):
    del case_ref, outs
  return tuple(pl.pallas_call(
      kernel, grid=(1,),
      in_specs=[pl.BlockSpec((1, 1), lambda i: (0, 0))],
      out_specs=[pl.BlockSpec(memory_space=pl.ANY) for _ in requests],
      out_shape=[jax.ShapeDtypeStruct(q.wide.shape, q.wide.dtype)
                 for q in requests],
      compiler_params=pltriton.CompilerParams(num_warps=1),
      name="mor_wide_values", interpret=interpret,
  )(requests[0].read.reshape(1, 1).astype(jnp.int32)))


VARIANTS = {
    "as_is": contextlib.nullcontext,
    "warps4": lambda: mock.patch.object(wide, "_WARPS", 4),
    "span1": lambda: mock.patch.object(wide, "_MAX_SPAN", 1),
    "span32": lambda: mock.patch.object(wide, "_MAX_SPAN", 32),
    "one_program": lambda: mock.patch.object(
        kernels.gemm.wide_values, "values", one_program),
    "no_writer": writers.no_writers,
}


def main():
  m = 4096
  w = jax.random.normal(jax.random.key(1), (m, m), jnp.bfloat16) * 0.02
  w8, rw = jax.jit(bench._codes)(w)
  ones = jnp.ones((m,), jnp.float32)
  h0 = jax.random.normal(jax.random.key(0), (m, m), jnp.bfloat16)

  def run(kernel, preds, h):
    def step(h, p):
      h8 = h.astype(jnp.float8_e4m3fn)
      if kernel:
        y = kernels.gemm.gemm(*bench._operands(h, h8, ones, w, w8, rw, p),
                              out_dtype=jnp.bfloat16,
                              config=kernels.GemmConfig())
      else:
        y = kernels.gemm.fp8_dot(h8, w8, ones, rw, out_dtype=jnp.bfloat16)
      return y * 1e-2, None
    return jax.lax.scan(step, h, preds)[0]

  args = (jnp.full((72,), True), h0)
  cases, launches = {}, {}
  cases["xla_fp8"] = (jax.jit(functools.partial(run, False)), args)
  for name in sys.argv[1:] or VARIANTS:
    patch = VARIANTS[name]
    writers.sharding.per_shard.cache_clear()
    try:
      with patch():
        c = jax.jit(lambda *a: run(True, *a)).lower(*args).compile()
    except Exception as e:  # noqa: BLE001 (a variant may not compile)
      print(json.dumps(dict(case=name, error=str(e)[:500])), flush=True)
      continue
    text = c.as_text()
    launches[name] = (text.count("mor_wide_values"),
                      text.count("__gpu$xla.gpu.triton"))
    cases[name] = (c, args)
  writers.report("chain_writers", timed_interleaved(
      cases, iters=3, rounds=3 * len(cases)), launches)


if __name__ == "__main__":
  main()
