"""Seventeenth session: the MoRDense layer with GemmConfig variants against
nn.Dense, timed in turns in one process (benchmarks/timing.timed_interleaved),
and each variant's loss and gradients bit for bit against the default's.
Run from the repository root with PYTHONPATH=$PWD:
  python3 scratch/layer_ab.py 16384x8192x8192 \
    "mor_fp8:default;mor_fp8:chain_fp8=True;mor_rejected:default" [rounds]
(bits: each case against the first of its layer kind.)
"""
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, "benchmarks")
import gemm as bench  # noqa: E402
import timing  # noqa: E402
import mor_jax  # noqa: E402
from mor_jax import kernels  # noqa: E402

m, k, n = map(int, sys.argv[1].split("x"))
runs = [c.split(":") for c in sys.argv[2].split(";")]
rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 9
x = jax.random.normal(jax.random.key(0), (m, k), jnp.bfloat16)
cases, outs = {}, {}
for kind, g in [("bf16", "-")] + runs:
  v, step = bench.dense_step(bench.dense_layer(kind, n), x)
  cfg = kernels.KernelConfig(gemm=bench.gemm_config(
      "default" if g == "-" else g))
  with mor_jax.use_implementation("auto", cfg):
    out = jax.block_until_ready(step(v, x))  # traced and compiled here
  outs[kind, g] = [np.asarray(l.astype(jnp.float32)).view(np.uint32)
                   for l in jax.tree.leaves(out)]
  cases[f"{kind}:{g}"] = (step, (v, x))
for (kind, g), leaves in outs.items():
  if kind != "bf16":
    ref = outs[kind, next(c for t, c in runs if t == kind)]
    print(json.dumps(dict(check="bits", layer=kind, gemm=g, equal=all(
        np.array_equal(a, b) for a, b in zip(leaves, ref)))), flush=True)
res = timing.timed_interleaved(cases, iters=10, rounds=rounds)
base = res["bf16:-"][0]
for name, (t, ratio) in res.items():
  print(json.dumps(dict(bench="layer_ab", shape=[m, k, n], case=name,
                        ms=round(t * 1e3, 3), vs_bf16=round(base / t, 4),
                        time_ratio_to_bf16_per_round=round(ratio, 4))),
        flush=True)
