"""Thirty-seventh session: MoR's dot_general inside shard_map with
check_vma=True (its default) on one GPU, with the compiled kernels: the
Triton quantizers type their results through kernels.sharding.result
(90ef9d1) and the custom_vjp backward types each cotangent as its input.
Outputs, gradients and decisions against the same function under jit
alone, bit for bit, for each implementation; the compiled module's
kernel calls are counted, so that "pallas" is seen to run kernels.

Run from the repository root: PYTHONPATH=$PWD python3 <this>
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

import mor_jax


def local(x, w, vary):
  policy = mor_jax.Policy()
  probes = mor_jax.zero_probes(policy)
  if vary:
    probes = jax.lax.pcast(probes, ("d",), to="varying")

  def loss(x, w, probes):
    y, fwd = mor_jax.dot_general_with_stats(
        x, w, (((1,), (0,)), ((), ())), probes, policy=policy)
    return (jnp.sum(y.astype(jnp.float32) ** 2),
            fwd["fprop"]["activation"].fraction_blocks)
  (_, fraction), grads = jax.value_and_grad(loss, (0, 1, 2), has_aux=True)(
      x, w, probes)
  wgrad = grads[2]["wgrad"]["activation"].fraction_blocks
  return fraction[None], grads[0], grads[1][None], wgrad[None]


def main():
  rng = np.random.default_rng(5)
  x = rng.standard_normal((512, 1024)).astype(np.float32)
  x[:64, ::16] *= np.float32(1e4)  # some rows' blocks go BF16
  x = jnp.asarray(x, jnp.bfloat16)
  w = jnp.asarray(rng.standard_normal((1024, 768)), jnp.bfloat16)
  mesh = jax.make_mesh((1,), ("d",))
  for impl in ("pallas", "xla"):
    with mor_jax.use_implementation(impl), jax.set_mesh(mesh):
      xs = jax.device_put(x, P("d"))
      f = jax.jit(jax.shard_map(
          lambda x, w: local(x, w, True), mesh=mesh,
          in_specs=(P("d"), P()), out_specs=(P("d"),) * 4, check_vma=True))
      text = f.lower(xs, w).compile().as_text()
      got = f(xs, w)
      want = jax.jit(lambda x, w: local(x, w, False))(x, w)
    equal = [bool(np.array_equal(np.asarray(a), np.asarray(b)))
             for a, b in zip(got, want)]
    print(json.dumps(dict(
        impl=impl, equal=equal,
        triton_calls=text.count("__gpu$xla.gpu.triton"),
        mosaic_calls=text.count("mosaic_gpu"),
        fraction=np.asarray(got[0]).tolist())), flush=True)


if __name__ == "__main__":
  main()
