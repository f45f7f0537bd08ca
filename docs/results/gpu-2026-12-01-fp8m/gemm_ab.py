"""Fourteenth session: kernels/gemm.py as it is (the epilogue scales and
rounds one output tile at a time) against HEAD's (scratch/old), in one
process: outputs of all four K loops bit for bit at a ragged shape, then the
FP8 path's kernel time at (16384, 8192) x (8192, 8192) in turns.
Run from the repository root with PYTHONPATH=$PWD."""
import importlib.util
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, "benchmarks")
import gemm as bench  # noqa: E402
import profile as prof  # noqa: E402
from mor_jax.kernels import gemm as new  # noqa: E402
from mor_jax.kernels import sharding  # noqa: E402

spec = importlib.util.spec_from_file_location("old_gemm",
                                              "scratch/old/kernels/gemm.py")
old = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = old
spec.loader.exec_module(old)
say = lambda **kw: print(json.dumps(kw), flush=True)  # noqa: E731


def run(mod, a, a8, ra, b, b8, rb, acc_a, acc_b, out_dtype):
  ops = [mod.Operand(x, q, r, jnp.asarray(t), False)
         for x, q, r, t in ((a, a8, ra, acc_a), (b, b8, rb, acc_b))]
  return jax.jit(lambda: mod.gemm(*ops, out_dtype=out_dtype,
                                  config=mod.GemmConfig()))


m, k, n = 300, 512, 520
a = jax.random.normal(jax.random.key(0), (m, k), jnp.bfloat16)
b = jax.random.normal(jax.random.key(1), (n, k), jnp.bfloat16)
a8, ra = jax.jit(bench._codes)(a)
b8, rb = jax.jit(bench._codes)(b)
for out_dtype in (jnp.bfloat16, jnp.float32):
  for acc_a in (False, True):
    for acc_b in (False, True):
      got = [np.asarray(run(mod, a, a8, ra, b, b8, rb, acc_a, acc_b,
                            out_dtype)().astype(jnp.float32))
             for mod in (new, old)]
      say(check="bits", out=jnp.dtype(out_dtype).name, a=acc_a, b=acc_b,
          equal=bool(np.array_equal(got[0].view(np.uint32),
                                    got[1].view(np.uint32))))

m, k, n = 16384, 8192, 8192
a = jax.random.normal(jax.random.key(0), (m, k), jnp.bfloat16)
b = jax.random.normal(jax.random.key(1), (n, k), jnp.bfloat16)
a8, ra = jax.jit(bench._codes)(a)
b8, rb = jax.jit(bench._codes)(b)
fns = {name: run(mod, a, a8, ra, b, b8, rb, True, True, jnp.bfloat16)
       for name, mod in (("new", new), ("old", old))}
for r in range(3):
  for name, fn in fns.items():
    t, _ = prof.kernel_times(fn, calls=20)
    say(round=r, case=name, fp8_gemm_ms=prof.per_call_ms(t, 20, "anonymous"))
