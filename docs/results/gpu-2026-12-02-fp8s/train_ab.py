"""Twentieth session: gpu1b_wide's training under kernel configurations in
one process: each entry of sys.argv[1] ("recipes@gemm@dual;...", gemm and
dual as benchmarks/gemm.py's --gemm-configs and --dual-configs take them)
trains its recipes under that KernelConfig into its own --out; the rest of
the arguments go to every run. Run from the repository root with
PYTHONPATH=$PWD, e.g.
  python3 docs/results/gpu-2026-12-02-fp8s/train_ab.py "dense@default@default;mor_channel@default@prefetch=False" --preset gpu1b_wide ...
"""
import sys

import mor_jax
from mor_jax import kernels

sys.path.insert(0, "benchmarks")
import gemm as bench  # noqa: E402
from examples import train_lm  # noqa: E402

for i, entry in enumerate(sys.argv[1].split(";")):
  recipes, g, d = entry.split("@")
  print(f"=== run {i}: {recipes} with GemmConfig {g}, DualConfig {d}",
        flush=True)
  cfg = kernels.KernelConfig(gemm=bench.gemm_config(g),
                             dual=bench.dual_config(d))
  with mor_jax.use_implementation("auto", cfg):
    train_lm.main(sys.argv[2:] + ["--recipes", recipes,
                                  "--out", f"/tmp/train_ab/{i}"])
