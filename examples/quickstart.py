"""Quantize a few tensors to FP8 under each scaling and print the errors.

Run: python examples/quickstart.py
"""

import argparse

import jax
import jax.numpy as jnp

import mor_jax


def main():
  key = jax.random.key(0)
  # Sampled in float32: bfloat16 sampling caps |x| near 2.9.
  normal = jax.random.normal(key, (512, 512)).astype(jnp.bfloat16)
  outliers = normal.at[:, ::64].multiply(1000.0)
  print(f"{'tensor':10} {'format':6} {'partition':12} {'scaling':7} "
        f"{'rel. error':>10}")
  for name, x in (("normal", normal), ("outliers", outliers)):
    for fmt in (mor_jax.E4M3, mor_jax.E5M2):
      for part_name, block in (("per-tensor", (None, None)),
                               ("per-row", (1, None)),
                               ("128x128", (128, 128))):
        for scaling in ("fp32", "e8m0", "gam"):
          x_hat = mor_jax.fake_quantize(x, fmt, block_shape=block,
                                        scaling=scaling)
          err = float(mor_jax.relative_error(x, x_hat))
          print(f"{name:10} {fmt.name:6} {part_name:12} {scaling:7} "
                f"{err:10.4%}")
  qa = mor_jax.quantize(normal, mor_jax.E4M3, block_shape=(128, 128))
  print("\nquantize(normal, E4M3, 128x128 gam):", qa.data.dtype, qa.data.shape,
        "scales", qa.scale.shape, "max |x - dequantize| =",
        float(jnp.max(jnp.abs(mor_jax.dequantize(qa, jnp.float32)
                              - normal.astype(jnp.float32)))))


if __name__ == "__main__":
  # No options: --help says so, and anything else is refused, not ignored.
  argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args()
  main()
