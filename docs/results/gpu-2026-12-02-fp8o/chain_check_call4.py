"""chain_tiles against a pipeline per tile, bit for bit, on every K loop."""
import itertools, json, jax, jax.numpy as jnp, numpy as np
from mor_jax.kernels import gemm as G
key = jax.random.key(0)
fns = {c: jax.jit(lambda a, b, c=c: G.gemm(a, b, out_dtype=jnp.bfloat16,
                                          config=G.GemmConfig(chain_tiles=c)))
       for c in (False, True)}
for (m, n, k), (acc_a, acc_b), (ta, tb) in itertools.product(
    [(2048, 1536, 2048), (1000, 700, 1100), (4096, 2048, 8192)],
    [(True, True), (False, False), (True, False), (False, True)],
    [(False, False), (True, True)]):
  ops = []
  for i, (r, acc, t) in enumerate(((m, acc_a, ta), (n, acc_b, tb))):
    x = jax.random.normal(jax.random.fold_in(key, i), (r, k), jnp.float32)
    recip = jnp.max(jnp.abs(x), axis=1) / 448.0
    codes = (x / recip[:, None]).astype(jnp.float8_e4m3fn)
    xb = x.astype(jnp.bfloat16)
    ops.append(G.Operand(xb.T if t else xb, codes, recip, jnp.bool_(acc), t))
  outs = {}
  for chain, f in fns.items():
    outs[chain] = np.asarray(f(*ops).astype(jnp.float32))
  ref = np.asarray(G.gemm_reference(*ops, out_dtype=jnp.float32))
  rel = float(np.linalg.norm(outs[True] - ref) / np.linalg.norm(ref))
  print(json.dumps(dict(shape=[m, n, k], accepted=[acc_a, acc_b], transposed=[ta, tb],
                        bit_equal=bool(np.array_equal(outs[True], outs[False])), rel_to_twin=rel)), flush=True)
