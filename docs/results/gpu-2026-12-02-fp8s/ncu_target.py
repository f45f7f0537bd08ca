"""Twentieth session: one launch each of the dual statistics and codes
passes on a (16384, 8192) bf16 matrix, for Nsight Compute."""
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
print("done", jax.block_until_ready(codes)[0].shape)
