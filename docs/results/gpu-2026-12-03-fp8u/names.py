"""Which cuBLAS kernel each FP8 pattern of `gemm.py --only gemm` runs, and
its time near boost clocks (five calls after a first)."""
import json

import jax
import jax.numpy as jnp

from gemm import TN, _codes
from profile import kernel_times

m, k, n = 16384, 8192, 8192
a = jax.random.normal(jax.random.key(0), (m, k), jnp.bfloat16)
b = jax.random.normal(jax.random.key(1), (n, k), jnp.bfloat16)
a8, ra = jax.jit(_codes)(a)
b8, rb = jax.jit(_codes)(b)
ta, tb = (r[0].astype(jnp.bfloat16) for r in (ra, rb))
f32 = jnp.float32
cases = {
    "tensor_scaled": lambda: (jax.lax.dot_general(
        a8, b8, TN, preferred_element_type=f32) * ta.astype(f32)
        * tb.astype(f32)).astype(jnp.bfloat16),
    "dequantized_pattern": lambda: jax.lax.dot_general(
        a8.astype(jnp.bfloat16) * ta, b8.astype(jnp.bfloat16) * tb, TN,
        preferred_element_type=jnp.bfloat16),
    "no_scales": lambda: jax.lax.dot_general(
        a8, b8, TN, preferred_element_type=jnp.bfloat16),
}
for name, fn in cases.items():
  times, _ = kernel_times(jax.jit(fn), calls=5)
  for kernel, d in times.items():
    print(json.dumps(dict(case=name, kernel=kernel[:90],
                          ms=round(sum(d) / 5 / 1e6, 4), launches=len(d) // 5)))
