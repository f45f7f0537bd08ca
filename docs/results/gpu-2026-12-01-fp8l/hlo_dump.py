"""The MoRDense fwd+bwd step's optimized HLO on this device (for counting
its small kernels)."""
import os, sys
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import jax, jax.numpy as jnp
from gemm import dense_layer, dense_step
m, k, n = 16384, 8192, 8192
x = jax.random.normal(jax.random.key(0), (m, k), jnp.bfloat16)
v, step = dense_step(dense_layer("mor_fp8", n), x)
text = step.lower(v, x).compile().as_text()
open(os.path.join(os.environ["OUT"], "r", "layer_hlo.txt"), "w").write(text)
print("hlo chars", len(text))
