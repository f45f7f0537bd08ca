"""Where the device's time goes, kernel by kernel.

Traces jitted calls with ``jax.profiler`` and sums the device's kernels by
name (CUPTI's kernel times: no host gaps, no launch queueing). Modes:

- layers (default): fwd+bwd steps of the layers of ``gemm.py``'s dense
  benchmark; per step, each kernel's time and launch count, the kernels'
  total (busy) and the span from the first kernel's start to the last one's
  end (busy < span: the device waited for the host or for launches);
- ``--sweep gemm``: tilings of kernels/gemm.py on both of its paths against
  cuBLAS FP8 and BF16 at one shape;
- ``--sweep dual``: tilings of kernels/dual.py, each pass apart, against an
  XLA copy;
- ``--trace DIR --steps N``: a trace taken elsewhere, e.g. by
  ``examples/train_lm.py --profile-steps N``.

On a CPU there is no device plane and nothing to sum. Run on a GPU:
``python benchmarks/profile.py`` (``--layers``, ``--shape``, ``--sweep``).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import glob
import json
import tempfile

import jax
import jax.numpy as jnp
from jax.profiler import ProfileData

from mor_jax import kernels
# benchmarks/gemm.py, beside this script.
from gemm import (DUAL_VARIANTS, TN, _codes, dense_layer, dense_step,
                  dual_passes, rel)


def device_kernels(trace_dir: str) -> list[tuple[str, float, float]]:
  """(name, start_ns, duration_ns) of every kernel on the device planes."""
  out = []
  for path in glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True):
    for plane in ProfileData.from_file(path).planes:
      if not plane.name.startswith("/device:"):
        continue
      for line in plane.lines:
        # Streams carry the kernels; other lines (e.g. "XLA Ops", "XLA
        # Modules") repeat them grouped differently.
        if not line.name.startswith("Stream"):
          continue
        out.extend((e.name, e.start_ns, e.duration_ns) for e in line.events)
  return out


def trace_times(trace_dir: str):
  """({kernel name: [durations in ns]}, span in ns) of a trace, or None
  without a device plane."""
  events = device_kernels(trace_dir)
  if not events:
    return None
  times = collections.defaultdict(list)
  for name, _, dur in events:
    times[name].append(dur)
  span = (max(s + d for _, s, d in events) - min(s for _, s, _ in events))
  return times, span


def kernel_times(fn, *args, calls: int = 5):
  """``trace_times`` of ``calls`` calls of a jitted ``fn`` after a first."""
  jax.block_until_ready(fn(*args))
  trace_dir = tempfile.mkdtemp()
  with jax.profiler.trace(trace_dir):
    for _ in range(calls):
      r = fn(*args)
    jax.block_until_ready(r)
  return trace_times(trace_dir)


def summarize(label: str, got, steps: int, top: int, **info) -> None:
  """Per step: busy and span, then the ``top`` kernels by time, the rest."""
  if got is None:
    print(json.dumps(dict(run=label, note="no device plane in the trace")))
    return
  time = collections.Counter({n: sum(d) for n, d in got[0].items()})
  count = collections.Counter({n: len(d) for n, d in got[0].items()})
  print(json.dumps(dict(run=label, **info,
                        busy_ms=round(sum(time.values()) / steps / 1e6, 3),
                        span_ms=round(got[1] / steps / 1e6, 3),
                        launches=sum(count.values()) // steps)), flush=True)
  for name, t in time.most_common(top):
    print(json.dumps(dict(run=label, kernel=name[:90],
                          ms=round(t / steps / 1e6, 4),
                          launches=count[name] // steps)), flush=True)
  rest = time.most_common()[top:]
  print(json.dumps(dict(run=label, kernel=f"({len(rest)} others)",
                        ms=round(sum(t for _, t in rest) / steps / 1e6, 4),
                        launches=sum(count[nm] for nm, _ in rest) // steps)),
        flush=True)


def per_call_ms(times, calls: int, prefix: str = "") -> float:
  """Milliseconds per call of the kernels whose name starts with prefix."""
  ns = sum(sum(d) for n, d in times.items() if n.startswith(prefix))
  return round(ns / calls / 1e6, 4)


GEMM_VARIANTS = (
    {},  # the default
    dict(delay_release=1),
    dict(delay_release=1, grid_tile_width=16),
    dict(delay_release=1, grid_tile_width=4),
    dict(delay_release=1, tile_k_fp8=64, stages=8),
    dict(tile_k_fp8=64, stages=8),
    dict(delay_release=1, epilogue_tile=32),
    dict(delay_release=1, tile_k_wide=32, stages=8),
)


def sweep_gemm(shape, calls: int) -> None:
  m, k, n = shape
  a = jax.random.normal(jax.random.key(0), (m, k), jnp.bfloat16)
  b = jax.random.normal(jax.random.key(1), (n, k), jnp.bfloat16)
  a8, ra = jax.jit(_codes)(a)
  b8, rb = jax.jit(_codes)(b)
  flops = 2 * m * n * k
  say = lambda case, ms, **kw: print(json.dumps(dict(  # noqa: E731
      sweep="gemm", shape=[m, k, n], case=case, ms=ms,
      tflops=round(flops / ms / 1e9, 1), **kw)), flush=True)
  peers = {
      "cublas_bf16": lambda: jax.lax.dot_general(
          a, b, TN, preferred_element_type=jnp.bfloat16),
      "cublas_fp8_with_scales": lambda: kernels.gemm.fp8_dot(
          a8, b8, ra, rb, out_dtype=jnp.bfloat16),
  }
  refs = {}
  for name, fn in peers.items():
    fn = jax.jit(fn)
    got = kernel_times(fn, calls=calls)
    if got is None:
      print(json.dumps(dict(note="no device plane in the trace")))
      return
    refs[name] = fn()
    say(name, per_call_ms(got[0], calls))
  for variant in GEMM_VARIANTS:
    cfg = kernels.GemmConfig(**variant)
    fn = jax.jit(lambda fp8, cfg=cfg: kernels.gemm.gemm(
        fp8, a8, b8, ra, rb, a, b, out_dtype=jnp.bfloat16, config=cfg))
    for fp8, ref in ((True, "cublas_fp8_with_scales"), (False, "cublas_bf16")):
      times, _ = kernel_times(fn, jnp.bool_(fp8), calls=calls)
      say(dict(variant, path="fp8" if fp8 else "bf16"),
          per_call_ms(times, calls, "anonymous_mosaic_gpu_kernel"),
          rel_to_cublas=rel(fn(jnp.bool_(fp8)), refs[ref]))


# (tile_rows, tile_cols, row_steps, warps, stages) beyond gemm.py's.
MORE_DUAL_VARIANTS = ((8, 512, 32, 8, 2), (4, 512, 64, 4, 2),
                      (16, 256, 16, 8, 2), (32, 256, 8, 8, 2),
                      (8, 256, 32, 8, 4), (16, 128, 32, 4, 4),
                      (16, 128, 16, 4, 1))


def sweep_dual(shape, calls: int) -> None:
  m, k = shape[:2]
  x = jax.random.normal(jax.random.key(0), (m, k), jnp.bfloat16)
  got = kernel_times(jax.jit(lambda v: v * 2), x, calls=calls)
  if got is None:
    print(json.dumps(dict(note="no device plane in the trace")))
    return
  print(json.dumps(dict(sweep="dual", shape=[m, k], case="xla_copy",
                        ms=per_call_ms(got[0], calls))), flush=True)

  for tr, tc, steps, warps, stages in DUAL_VARIANTS + MORE_DUAL_VARIANTS:
    tiling = kernels.PassTiling(tile_rows=tr, tile_cols=tc, row_steps=steps,
                                num_warps=warps, num_stages=stages)
    cfg = kernels.DualConfig(stats=tiling, codes=tiling)
    dual = kernels.dual.PallasDual(cfg, False)
    fn = jax.jit(functools.partial(dual_passes, dual=dual))
    times, _ = kernel_times(fn, x, calls=calls)
    print(json.dumps(dict(
        sweep="dual", shape=[m, k], case=dataclasses.asdict(tiling),
        stats_ms=per_call_ms(times, calls, "mor_dual_stats"),
        codes_ms=per_call_ms(times, calls, "mor_dual_codes"),
        all_ms=per_call_ms(times, calls))), flush=True)


def profile(kind: str, shape, steps: int, top: int) -> None:
  m, k, n = shape
  x = jax.random.normal(jax.random.key(0), (m, k), jnp.bfloat16)
  v, step = dense_step(dense_layer(kind, n), x)
  summarize(kind, kernel_times(step, v, x, calls=steps), steps, top,
            shape=list(shape))


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--layers", default="bf16,flax_fp8,mor_fp8,mor_rejected")
  ap.add_argument("--shape", default="16384x8192x8192")
  ap.add_argument("--steps", type=int, default=5)
  ap.add_argument("--top", type=int, default=25)
  ap.add_argument("--sweep", choices=("gemm", "dual"), default=None)
  ap.add_argument("--trace", default=None,
                  help="sum an existing trace instead, e.g. train_lm.py "
                  "--profile-steps N's <out>/<recipe>_profile (--steps: N)")
  args = ap.parse_args()
  if args.trace:
    return summarize(args.trace, trace_times(args.trace), args.steps,
                     args.top)
  shape = tuple(int(d) for d in args.shape.split("x"))
  if args.sweep == "gemm":
    return sweep_gemm(shape, args.steps)
  if args.sweep == "dual":
    return sweep_dual(shape, args.steps)
  for kind in args.layers.split(","):
    profile(kind, shape, args.steps, args.top)


if __name__ == "__main__":
  main()
