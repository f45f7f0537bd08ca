"""Twentieth session: the optimized HLO of MoRDense "fp8"'s (16384, 8192,
8192) fwd+bwd step, to name the small kernels of its profile.
From the repository root, with PYTHONPATH=<root>:<root>/benchmarks:
  python3 docs/results/gpu-2026-12-02-fp8s/hlo_dump.py OUT
"""
import sys

import jax
import jax.numpy as jnp

import gemm as bench

x = jax.random.normal(jax.random.key(0), (16384, 8192), jnp.bfloat16)
v, step = bench.dense_step(bench.dense_layer("mor_fp8", 8192), x)
text = step.lower(v, x).compile().as_text()
with open(f"{sys.argv[1]}/mor_fp8.hlo.txt", "w") as f:
  f.write(text)
print("mor_fp8", len(text), flush=True)
