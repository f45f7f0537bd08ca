"""Nineteenth session: the optimized HLO of the (16384, 8192, 8192) layer's
fwd+bwd step, nn.Dense BF16 and MoRDense "fp8", to name the three converts
both profiles share (loop_convert_fusion, wrapped_convert, wrapped_convert_4).
From benchmarks/, with PYTHONPATH=<root>:<root>/benchmarks:
  python3 ../docs/results/gpu-2026-12-02-fp8r/hlo_dump.py OUT
"""
import sys

import jax
import jax.numpy as jnp

import gemm as bench

out = sys.argv[1]
x = jax.random.normal(jax.random.key(0), (16384, 8192), jnp.bfloat16)
for kind in ("bf16", "mor_fp8"):
  v, step = bench.dense_step(bench.dense_layer(kind, 8192), x)
  text = step.lower(v, x).compile().as_text()
  with open(f"{out}/{kind}.hlo.txt", "w") as f:
    f.write(text)
  print(kind, len(text), flush=True)
