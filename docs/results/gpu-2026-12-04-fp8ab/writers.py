"""Twenty-ninth session: what kernels/gemm.py's writers (kernels/wide.py,
launched before every GEMM, their programs reading the case and stopping
unless one operand is rejected and the other accepted; two launches in
call 1, one in call 2, one with a block a program in call 4) cost where no operand is written: each of benchmarks/gemm.py's chain, one FP8 GEMM and
the MoRDense layer, timed in turns (benchmarks/timing.py) against the same
code with ``wide.values`` replaced by a function that launches nothing
(only correct where no operand is written, as here). Each variant's
compiled module is checked for its count of writer launches, so that no
cache gives the two variants one executable.

Run from the repository root: PYTHONPATH=$PWD:$PWD/benchmarks python3 <this>
"""

import contextlib
import functools
import json
import sys
from unittest import mock

import jax
import jax.numpy as jnp

sys.path.insert(0, "benchmarks")
import gemm as bench  # noqa: E402
from timing import timed_interleaved  # noqa: E402
from mor_jax import kernels  # noqa: E402
from mor_jax.kernels import sharding  # noqa: E402


def say(**kw):
  print(json.dumps(kw), flush=True)


def no_writers():
  return mock.patch.object(
      kernels.gemm.wide_values, "values",
      lambda *requests, interpret=False: tuple(q.wide for q in requests))


def built(fn, args, writers):
  """fn compiled now (under the patch where ``writers`` is False), with the
  counts of the writer's name and of Triton calls in its module."""
  # A new function each time, and kernels/sharding.py's per-operation
  # bodies traced anew: their caches would otherwise give the second variant
  # the first one's trace.
  sharding.per_shard.cache_clear()
  with contextlib.nullcontext() if writers else no_writers():
    compiled = jax.jit(lambda *a: fn(*a)).lower(*args).compile()
  text = compiled.as_text()
  return compiled, (text.count("mor_wide_values"),
                    text.count("__gpu$xla.gpu.triton"))


def report(section, got, launches):
  for name, (t, ratio) in got.items():
    say(section=section, case=name, ms=round(t * 1e3, 3),
        ratio_to_first=round(ratio, 4), writer_launches=launches.get(name))


def chain(iters):
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

  cases, launches = {}, {}
  for name, kernel, p, writers in (("xla_fp8", False, True, True),
                                   ("kernel_fp8", True, True, True),
                                   ("kernel_fp8_no_writers", True, True, False),
                                   ("kernel_bf16", True, False, True),
                                   ("kernel_bf16_no_writers", True, False, False)):
    args = (jnp.full((72,), p), h0)
    fn, launches[name] = built(functools.partial(run, kernel), args, writers)
    cases[name] = (fn, args)
  report("chain", timed_interleaved(cases, iters=iters,
                                    rounds=3 * len(cases)), launches)


def one_gemm(iters):
  m, k, n = 16384, 8192, 8192
  a = jax.random.normal(jax.random.key(0), (m, k), jnp.bfloat16)
  b = jax.random.normal(jax.random.key(1), (n, k), jnp.bfloat16)
  a8, ra = jax.jit(bench._codes)(a)
  b8, rb = jax.jit(bench._codes)(b)
  t = jnp.bool_(True)
  cases = {"cublas_bf16": (jax.jit(lambda a, b: jax.lax.dot_general(
      a, b, bench.TN, preferred_element_type=jnp.bfloat16)), (a, b))}
  launches = {}
  fn = lambda fa, fb: kernels.gemm.gemm(  # noqa: E731
      *bench._operands(a, a8, ra, b, b8, rb, fa, fb), out_dtype=jnp.bfloat16,
      config=kernels.GemmConfig())
  for name, writers in (("kernel_fp8", True), ("kernel_fp8_no_writers", False)):
    c, launches[name] = built(fn, (t, t), writers)
    cases[name] = (c, (t, t))
  report("gemm", timed_interleaved(cases, iters=iters,
                                   rounds=3 * len(cases)), launches)


def layer(iters):
  m, k, n = 16384, 8192, 8192
  x = jax.random.normal(jax.random.key(0), (m, k), jnp.bfloat16)
  cases, launches = {}, {}
  for name, kind, writers in (("bf16", "bf16", True),
                              ("flax_fp8", "flax_fp8", True),
                              ("mor_fp8", "mor_fp8", True),
                              ("mor_fp8_no_writers", "mor_fp8", False)):
    v, step = bench.dense_step(bench.dense_layer(kind, n), x)
    c, launches[name] = built(step, (v, x), writers)
    cases[name] = (c, (v, x))
  got = timed_interleaved(cases, iters=iters, rounds=3 * len(cases))
  report("dense", got, launches)
  base = got["bf16"][0]
  for name, (t, _) in got.items():
    say(section="dense", case=name, speedup_vs_bf16=round(base / t, 4))


if __name__ == "__main__":
  which = sys.argv[1:] or ["chain", "gemm", "dense"]
  for part in which:
    {"chain": functools.partial(chain, 3), "gemm": functools.partial(one_gemm, 10),
     "dense": functools.partial(layer, 10)}[part]()
