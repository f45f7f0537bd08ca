"""Each launch of one kernel in a trace, in time order (thirty-first session).

In gpu1b_wide's training step (twenty-first session's trace), one backward
GEMM of each layer ran at about 1170 TFLOP/s where its peers ran at 1460.
This lists every launch of the GEMM kernel with its HLO op, duration, the
gap before it and the kernel before it, then each op's durations; and does
the same for MoRDense's step alone at a shape (``--layer MxKxN``), where the
three GEMMs ran alike at (16384, 8192, 8192).

Run from benchmarks/ (``PYTHONPATH=$PWD/..:$PWD``):
  python3 ../docs/results/gpu-2026-12-04-fp8ad/launches.py --trace DIR
  python3 ../docs/results/gpu-2026-12-04-fp8ad/launches.py --layer 16384x4096x16384
"""

import argparse
import collections
import json
import tempfile

import jax
import jax.numpy as jnp

import profile as prof  # benchmarks/profile.py
from gemm import dense_layer, dense_step


def launches(trace_dir: str, match: str) -> None:
  for streams, _ in prof.device_lines(trace_dir):
    streams = sorted(streams, key=lambda e: e.start_ns)
    t0 = streams[0].start_ns
    by_op = collections.defaultdict(list)
    prev = None
    for e in streams:
      if match in e.name:
        op = str(e.stats.get("hlo_op", "?"))
        by_op[op].append(e.duration_ns / 1e3)
        print(json.dumps(dict(
            op=op, start_ms=round((e.start_ns - t0) / 1e6, 3),
            us=round(e.duration_ns / 1e3, 1),
            gap_us=(round((e.start_ns - prev.start_ns - prev.duration_ns)
                          / 1e3, 1) if prev else None),
            before=prev.name[:40] if prev else None)))
      prev = e
    print(json.dumps(dict(stats_keys=sorted(
        next(e for e in streams if match in e.name).stats))))
    for op, us in sorted(by_op.items()):
      print(json.dumps(dict(op=op, n=len(us), mean_us=round(sum(us) / len(us), 1),
                            min_us=round(min(us), 1), max_us=round(max(us), 1))))


def layer(shape: str, match: str) -> None:
  m, k, n = map(int, shape.split("x"))
  x = jax.random.normal(jax.random.key(0), (m, k), jnp.bfloat16)
  v, step = dense_step(dense_layer("mor_fp8", n), x)
  jax.block_until_ready(step(v, x))
  trace_dir = tempfile.mkdtemp()
  with jax.profiler.trace(trace_dir):
    for _ in range(3):
      r = step(v, x)
    jax.block_until_ready(r)
  launches(trace_dir, match)


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--trace")
  p.add_argument("--layer")
  p.add_argument("--match", default="anonymous_mosaic_gpu_kernel")
  a = p.parse_args()
  if a.trace:
    launches(a.trace, a.match)
  if a.layer:
    for shape in a.layer.split(","):
      print(json.dumps(dict(layer=shape)))
      layer(shape, a.match)


if __name__ == "__main__":
  main()
