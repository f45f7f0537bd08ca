"""Twelfth session: one launch each of the dual stats and codes passes and
of the GEMM's FP8 path at the layer's shapes, for Nsight Compute."""
import jax
import jax.numpy as jnp
import mor_jax
from mor_jax import kernels

x = jax.random.normal(jax.random.key(0), (16384, 8192), jnp.bfloat16)
p = kernels.dual.PallasDual(kernels.DualConfig(), False)
stats = jax.jit(p.stats)(x)
rows, cols = (mor_jax.E4M3.max / jnp.maximum(a[:, 0], 1e-30)
              for a in (stats.row_amax, stats.cols.amax))
codes = jax.jit(lambda v, a, b: p.codes(v, a, b, mor_jax.E4M3))(x, rows, cols)
w = jax.random.normal(jax.random.key(1), (8192, 8192), jnp.bfloat16)
w8 = w.astype(jnp.float8_e4m3fn)
r = jnp.ones((16384,), jnp.float32)
rw = jnp.ones((8192,), jnp.float32)
op = lambda v, q, s: kernels.gemm.Operand(v, q, s, jnp.bool_(True), False)
y = jax.jit(lambda: kernels.gemm.gemm(op(x, codes[0], r), op(w, w8, rw),
                                      out_dtype=jnp.bfloat16,
                                      config=kernels.GemmConfig()))()
jax.block_until_ready(y)
print("done", y.shape)
