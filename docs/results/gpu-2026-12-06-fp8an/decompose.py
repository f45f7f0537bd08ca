"""Where issue 14's layer at (16384, 8192, 8192) stands against 1.6x, by parts.

MoRDense "fp8" (the default policy: per-channel E4M3, one scale per
contraction vector) timed in turns with nn.Dense BF16, Flax's FP8 Dense and
variants of itself, each compiled with one part swapped out:

- ``cublas_tensor``: its three GEMMs written as Flax's pattern, one scale
  per operand (the row factors' first entry), meant to cost what
  per-tensor cuBLAS costs. Inside the layer XLA did not rewrite it into
  cuBLAS's FP8 GEMM (README.md beside this file), so it measures nothing;
- ``cublas_rows``: the GEMMs as ``kernels.gemm.fp8_dot``, cuBLAS's FP8 GEMM
  with the per-row scales applied by XLA after it (right numbers, no
  device-side fallback);
- ``noerr``: the dual codes pass without its relative-error terms (every
  term 0, so every tensor is accepted as it is anyway): what MoR's metric
  costs the passes.

The patches are module attributes that MoR's code looks up when it traces
(``kernels.gemm.gemm``, ``kernels.tile.error_terms``); each variant's step is
compiled under its patch and its HLO checked to differ from the default's,
so that no cache hands a variant the default's executable. Then every layer
is timed in turns (``timing.timed_interleaved``), and each alone over
``--power-iters`` calls with NVML's energy counter (J per step, W, SM MHz):
the looped layer runs at the power limit, where a step's time follows its
energy.

Run from the repository root: ``PYTHONPATH=$PWD:$PWD/benchmarks python3
docs/results/gpu-2026-12-06-fp8an/decompose.py``.
"""

from __future__ import annotations

import argparse
import contextlib

import jax
import jax.numpy as jnp

from mor_jax import kernels
from gemm import TN, dense_layer, dense_step, say  # benchmarks/gemm.py
from power import Meter, open_gpu  # benchmarks/power.py
from timing import timed, timed_interleaved  # benchmarks/timing.py


def cublas_tensor(a, b, *, out_dtype, config):
  del config
  ta, tb = (o.recip[0].astype(jnp.bfloat16) for o in (a, b))
  return jax.lax.dot_general(a.codes.astype(jnp.bfloat16) * ta,
                             b.codes.astype(jnp.bfloat16) * tb, TN,
                             preferred_element_type=out_dtype)


def cublas_rows(a, b, *, out_dtype, config):
  del config
  return kernels.gemm.fp8_dot(a.codes, b.codes, a.recip, b.recip,
                              out_dtype=out_dtype)


def no_error_terms(y, q, if_zero, *, ptx):
  del q, if_zero, ptx
  return jnp.zeros_like(y)


PATCHES = {
    "mor_fp8": {},
    "mor_cublas_tensor": {"gemm": cublas_tensor},
    "mor_cublas_rows": {"gemm": cublas_rows},
    "mor_noerr": {"error_terms": no_error_terms},
}
_HOMES = {"gemm": kernels.gemm, "error_terms": kernels.tile}


@contextlib.contextmanager
def patched(names: dict):
  saved = {k: getattr(_HOMES[k], k) for k in names}
  try:
    for k, f in names.items():
      setattr(_HOMES[k], k, f)
    yield
  finally:
    for k, f in saved.items():
      setattr(_HOMES[k], k, f)


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--shape", default="16384x8192x8192")
  ap.add_argument("--iters", type=int, default=10)
  ap.add_argument("--power-iters", type=int, default=100)
  ap.add_argument("--turns", type=int, default=3,
                  help="rounds per case: each takes every place this often")
  ap.add_argument("--variants", default=",".join(PATCHES))
  args = ap.parse_args()
  m, k, n = (int(v) for v in args.shape.split("x"))
  dev = jax.devices()[0]
  say(device=dev.device_kind, jax=jax.__version__, shape=[m, k, n])
  x = jax.random.normal(jax.random.key(0), (m, k), jnp.bfloat16)
  cases, hlo = {}, {}
  for kind in ["bf16", "flax_fp8"] + args.variants.split(","):
    layer = dense_layer("mor_fp8" if kind.startswith("mor") else kind, n)
    v, step = dense_step(layer, x)
    with patched(PATCHES.get(kind, {})):
      hlo[kind] = step.lower(v, x).as_text()
      jax.block_until_ready(step(v, x))  # compiled here, under the patch
    if kind.startswith("mor") and kind != "mor_fp8":
      differs = hlo[kind] != hlo["mor_fp8"]
      say(variant=kind, hlo_differs_from_default=differs)
      if not differs:
        raise SystemExit(f"{kind} compiled to the default's program")
    cases[kind] = (step, (v, x))
  del hlo
  got = timed_interleaved(cases, iters=args.iters,
                          rounds=args.turns * len(cases))
  base = got["bf16"][0]
  for kind, (t, ratio) in got.items():
    say(timing="in_turns", layer=kind, ms=round(t * 1e3, 3),
        speedup_vs_bf16=round(base / t, 3),
        time_ratio_to_bf16_per_round=round(ratio, 4))
  gpu = open_gpu(dev.local_hardware_id)
  say(power_limit_w=gpu.power_limit_w())
  for kind, (step, a) in cases.items():
    meter = Meter(gpu)
    t = timed(step, *a, iters=args.power_iters, meter=meter)
    say(timing="alone", layer=kind, ms=round(t * 1e3, 3), **meter.report())


if __name__ == "__main__":
  main()
