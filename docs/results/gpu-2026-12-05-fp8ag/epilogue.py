"""Thirty-seventh session: what kernels/gemm.py's FP8 epilogue (the row
and column factors applied in scale_rows_and_columns's overflow-safe order,
``_scaled_tile``) costs, timed in turns (benchmarks/timing.py) against the
same kernel with other epilogues, in benchmarks/gemm.py's 72-GEMM chain
(4096^3, FP8 decided) and one (16384, 8192, 8192) GEMM, with XLA's
unconditional FP8 dot beside them.

Call 1 ran 9ed6964's kernel against an earlier version of this file, with
``where`` (9ed6964's per-element selection of the order), ``plain``
(acc * ra * rb: not overflow-safe, the floor) and ``vector`` (the sides of
1 compared on the factor vectors before their broadcast, as vector.diff
has it: the same bits). Call 2 ran ``fit`` (the kernel then: acc * (ra *
rb) behind a lax.cond on whether every product of factors fits, a flag XLA
computed before the launch; not kept), ``select`` (9ed6964's), ``slow``
(``fit``'s selection without its fast path) and ``plain``. This file now
times ``split`` (split.diff's kernel: the factors split into their parts
above and below 1 on the vectors, four multiplies an element; apply
split.diff first) against ``select``, ``vector`` and ``plain``; not yet
run. Each variant's compiled module is
checked to differ from the others', so that no cache gives two variants
one executable.

Run from the repository root: PYTHONPATH=$PWD:$PWD/benchmarks python3 <this>
"""

import contextlib
import functools
import hashlib
import json
import sys
from unittest import mock

import jax
import jax.numpy as jnp
from jax import lax

sys.path.insert(0, "benchmarks")
import gemm as bench  # noqa: E402
from timing import timed_interleaved  # noqa: E402
from mor_jax import kernels  # noqa: E402
from mor_jax.kernels import sharding  # noqa: E402


def say(**kw):
  print(json.dumps(kw), flush=True)


def plain(acc, ra, rb):
  return (acc * lax.broadcast_in_dim(ra, acc.shape, [0])
          * lax.broadcast_in_dim(rb, acc.shape, [1]))


def select(acc, ra, rb):
  """The epilogue of 1aa44b2..9ed6964: the sides of 1 compared on the
  broadcast factors."""
  ra = lax.broadcast_in_dim(ra, acc.shape, [0])
  rb = lax.broadcast_in_dim(rb, acc.shape, [1])
  return jnp.where((ra >= 1) == (rb >= 1), acc * ra * rb, acc * (ra * rb))


def vector(acc, ra, rb):
  """vector.diff's: the sides compared on the vectors (select's bits)."""
  def broadcast(v, dim):
    return lax.broadcast_in_dim(v, acc.shape, [dim])

  same = broadcast(jnp.where(ra >= 1, 1.0, 0.0), 0) == broadcast(
      jnp.where(rb >= 1, 1.0, 0.0), 1)
  ra, rb = broadcast(ra, 0), broadcast(rb, 1)
  return jnp.where(same, acc * ra * rb, acc * (ra * rb))


VARIANTS = {"split": None, "select": select, "vector": vector,
            "plain": plain}


def built(fn, args, variant):
  sharding.per_shard.cache_clear()
  patch = VARIANTS[variant]
  ctx = (mock.patch.object(kernels.gemm, "_scaled_tile", patch) if patch
         else contextlib.nullcontext())
  with ctx:
    compiled = jax.jit(lambda *a: fn(*a)).lower(*args).compile()
  return compiled, hashlib.sha1(compiled.as_text().encode()).hexdigest()[:10]


def report(section, got, digests):
  assert len(set(digests.values())) == len(digests), digests
  for name, (t, ratio) in got.items():
    say(section=section, case=name, ms=round(t * 1e3, 4),
        ratio_to_first=round(ratio, 4), module=digests[name])


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

  args = (jnp.full((72,), True), h0)
  cases, digests = {}, {}
  c, digests["xla_fp8"] = built(functools.partial(run, False), args, "split")
  cases["xla_fp8"] = (c, args)
  for v in VARIANTS:
    c, digests[v] = built(functools.partial(run, True), args, v)
    cases[v] = (c, args)
  report("chain", timed_interleaved(cases, iters=iters,
                                    rounds=3 * len(cases)), digests)


def one_gemm(iters):
  m, k, n = 16384, 8192, 8192
  a = jax.random.normal(jax.random.key(0), (m, k), jnp.bfloat16)
  b = jax.random.normal(jax.random.key(1), (n, k), jnp.bfloat16)
  a8, ra = jax.jit(bench._codes)(a)
  b8, rb = jax.jit(bench._codes)(b)
  t = jnp.bool_(True)
  fn = lambda fa, fb: kernels.gemm.gemm(  # noqa: E731
      *bench._operands(a, a8, ra, b, b8, rb, fa, fb), out_dtype=jnp.bfloat16,
      config=kernels.GemmConfig())
  cases, digests, outs = {}, {}, {}
  for v in VARIANTS:
    c, digests[v] = built(fn, (t, t), v)
    cases[v] = (c, (t, t))
    outs[v] = c(t, t)
  # Where every factor lies below 1, select, vector and plain give the
  # same bits (acc * ra * rb); split gives acc * rb * ra.
  for v in VARIANTS:
    say(section="gemm", case=v, equal_to_select=bool(
        jnp.array_equal(outs[v], outs["select"])))
  report("gemm", timed_interleaved(cases, iters=iters,
                                   rounds=3 * len(cases)), digests)


if __name__ == "__main__":
  for part in sys.argv[1:] or ["chain", "gemm"]:
    {"chain": functools.partial(chain, 3),
     "gemm": functools.partial(one_gemm, 10)}[part]()
