"""Relative error and MoR choice for typical tensors, partitions and scalings.

For normal, Student-t (3 dof), log-normal and outlier-channel tensors, runs
tensor-level MoR (E4M3 if the mean relative error < 4.5%, else BF16) under
per-tensor, per-channel and 128x128 partitions with fp32, e8m0 and gam scaling,
and prints a Markdown table (also written to --out).

Run: python examples/mor_table.py --out docs/mor_table.md
"""

from __future__ import annotations

import argparse
import platform

import jax
import jax.numpy as jnp
import numpy as np

import mor_jax

SHAPE = (1024, 1024)
PARTITIONS = {"per-tensor": (None, None), "per-channel": (1, None),
              "128x128": (128, 128)}
SCALINGS = ("fp32", "e8m0", "gam")


def tensors(seed: int = 0) -> dict[str, np.ndarray]:
  """The four test tensors, [tokens, channels], sampled in float64."""
  rng = np.random.default_rng(seed)
  outliers = rng.standard_normal(SHAPE)
  outliers[:, rng.choice(SHAPE[1], SHAPE[1] // 100, replace=False)] *= 1000.0
  return {
      "normal": rng.standard_normal(SHAPE),
      "student-t (3 dof)": rng.standard_t(3, SHAPE),
      "log-normal (sigma 2)": rng.lognormal(0.0, 2.0, SHAPE),
      "outlier channels (1% x1000)": outliers,
  }


def table(dtype=jnp.bfloat16) -> list[dict]:
  rows = []
  for name, x in tensors().items():
    x = jnp.asarray(x, dtype)
    for part, block in PARTITIONS.items():
      for scaling in SCALINGS:
        r = mor_jax.mor_quantize(x, mor_jax.TensorLevelMoR(
            block_shape=block, scaling=scaling))
        rows.append(dict(tensor=name, partition=part, scaling=scaling,
                         error=float(r.stats.error[0]),
                         choice=r.names[int(r.choice)]))
  return rows


def markdown(rows: list[dict]) -> str:
  lines = [
      "| tensor | partition | " + " | ".join(SCALINGS) + " |",
      "|---|---|" + "---|" * len(SCALINGS),
  ]
  for i in range(0, len(rows), len(SCALINGS)):
    group = rows[i:i + len(SCALINGS)]
    cells = [f"{r['error']:.2%} {r['choice']}" for r in group]
    lines.append(f"| {group[0]['tensor']} | {group[0]['partition']} | "
                 + " | ".join(cells) + " |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", help="also write the table to this file")
  args = parser.parse_args()
  text = markdown(table())
  header = (
      f"Tensor-level MoR on {SHAPE[0]}x{SHAPE[1]} bfloat16 tensors: E4M3 "
      "relative error under each partition and scaling, and the choice "
      "(threshold 4.5%).\n\n"
      f"Produced by `python examples/mor_table.py --out docs/mor_table.md` "
      f"(mor_jax {mor_jax.__version__}, jax {jax.__version__}, "
      f"{jax.default_backend()}, Python {platform.python_version()}).\n\n")
  print(text)
  if args.out:
    with open(args.out, "w") as f:
      f.write("# MoR on typical tensors\n\n" + header + text + "\n")


if __name__ == "__main__":
  main()
