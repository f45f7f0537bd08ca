"""Times MoR quantization with the Pallas kernels and the XLA reference.

For bf16 tensors of 4096^2, 8192^2 and 16384^2 elements and each partition
(per-tensor, per-channel, 128x128 blocks with GAM, 1x32 blocks with E8M0),
it times tensor-level MoR producing FP8 codes: pass 1 (block statistics),
the scales, pass 2 (codes and error sums) and the decision. That moves 5
bytes per element (two bf16 reads and one FP8 write), against which the
effective bandwidth is reported. The HBM ceiling is measured in the same run
as the best of three XLA streaming ops (a bf16 scale, a bf16 -> FP8 cast and
a sum), each counted by the bytes it must move.

Run on a GPU: ``python benchmarks/quantize.py`` (``--sizes 4096`` for less).
Timings are medians of ``--iters`` calls after a warmup, each call waited
for; nothing here goes into tests.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import platform

import jax
import jax.numpy as jnp

import mor_jax
from mor_jax.kernels import KernelConfig
from mor_jax.kernels import TileConfig
from timing import timed  # benchmarks/timing.py, beside this script

PARTITIONS = {
    "per-tensor": ((None, None), "gam"),
    "per-channel": ((1, None), "gam"),
    "128x128 gam": ((128, 128), "gam"),
    "1x32 e8m0": ((1, 32), "e8m0"),
}
BYTES_PER_ELEMENT = 5  # bf16 read twice, FP8 written once


def mor_codes(x: jax.Array, block_shape, scaling: str):
  """Tensor-level MoR to E4M3 codes: (codes, scales, choice)."""
  r = mor_jax.mor_codes(x, mor_jax.TensorLevelMoR(block_shape=block_shape,
                                                  scaling=scaling))
  return r.codes.data, r.codes.scale, r.choice


def compiled(fn, x: jax.Array, impl: str,
             config: KernelConfig = KernelConfig()):
  """``fn`` compiled for ``x`` under the implementation ``impl`` and ``config``.

  The setting is read when a function is traced, and the config is part of
  every trace's key, so each call here compiles its own kernels.
  """
  with mor_jax.use_implementation(impl, config):
    return jax.jit(fn).lower(x).compile()


def ceiling(n: int, iters: int) -> tuple[float, dict[str, float]]:
  """HBM bandwidth (bytes/s) of streaming XLA ops on an n x n bf16 tensor."""
  x = jax.random.normal(jax.random.key(1), (n, n), jnp.bfloat16)
  ops = {
      "scale bf16->bf16 (4 B/elem)": (jax.jit(lambda v: v * 2), 4),
      "cast bf16->fp8 (3 B/elem)": (
          jax.jit(lambda v: v.astype(jnp.float8_e4m3fn)), 3),
      "sum bf16 (2 B/elem)": (
          jax.jit(lambda v: jnp.sum(v, dtype=jnp.float32)), 2),
  }
  rates = {name: b * n * n / timed(fn, x, iters=iters)
           for name, (fn, b) in ops.items()}
  return max(rates.values()), rates


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--sizes", default="4096,8192,16384")
  ap.add_argument("--iters", type=int, default=20)
  ap.add_argument("--sweep", action="store_true",
                  help="also time kernel variants (tile size, warps) and each "
                  "pass alone on the largest size with 128x128 blocks")
  args = ap.parse_args()
  sizes = [int(s) for s in args.sizes.split(",")]
  dev = jax.devices()[0]
  print(f"# {datetime.date.today()}, {dev.device_kind} ({jax.default_backend()}),"
        f" jax {jax.__version__}, jaxlib {importlib.metadata.version('jaxlib')},"
        f" Python {platform.python_version()}")
  if jax.default_backend() != "gpu":
    print("# not a GPU: Pallas runs in interpret mode, timings mean nothing")
  peak, rates = ceiling(max(sizes), args.iters)
  for name, rate in rates.items():
    print(f"# ceiling candidate {name}: {rate / 1e9:.0f} GB/s")
  print(f"# HBM ceiling (best of the above): {peak / 1e9:.0f} GB/s")
  print()
  print("| size | partition | Pallas ms | GB/s | % of ceiling | XLA ms |"
        " XLA GB/s | speed-up | same result |")
  print("|---|---|---|---|---|---|---|---|---|")
  for n in sizes:
    x = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
    for name, (block, scaling) in PARTITIONS.items():
      fns = {impl: compiled(lambda v: mor_codes(v, block, scaling), x, impl)
             for impl in ("pallas", "xla")}
      outs = {impl: fn(x) for impl, fn in fns.items()}
      codes, scale, accepted = (zip(outs["pallas"], outs["xla"]))
      same = (bool(jnp.array_equal(codes[0].view(jnp.uint8),
                                   codes[1].view(jnp.uint8)))
              and bool(jnp.array_equal(*scale))
              and bool(jnp.array_equal(*accepted)))
      t = {impl: timed(fn, x, iters=args.iters) for impl, fn in fns.items()}
      moved = BYTES_PER_ELEMENT * n * n
      print(f"| {n}^2 | {name} | {t['pallas'] * 1e3:.3f} |"
            f" {moved / t['pallas'] / 1e9:.0f} |"
            f" {100 * moved / t['pallas'] / peak:.1f}% |"
            f" {t['xla'] * 1e3:.3f} | {moved / t['xla'] / 1e9:.0f} |"
            f" {t['xla'] / t['pallas']:.2f}x | {'yes' if same else 'NO'} |",
            flush=True)
  if args.sweep:
    sweep(max(sizes), peak, args.iters)


# (tile elements, warps per 8K elements): the default first.
VARIANTS = ((4096, 8), (16384, 8), (8192, 8), (4096, 4), (2048, 8))


def sweep(n: int, peak: float, iters: int) -> None:
  """Kernel variants and the passes through the public API, 128x128 GAM."""
  x = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
  block = (128, 128)
  print(f"\n| variant ({n}^2, 128x128 gam) | ms | GB/s at 5 B/elem |"
        " % of ceiling |\n|---|---|---|---|")
  for tile, warps in VARIANTS:
    config = KernelConfig(quantize=TileConfig(tile_elements=tile,
                                              warps_per_8k=warps))
    fn = compiled(lambda v: mor_codes(v, block, "gam"), x, "pallas", config)
    t = timed(fn, x, iters=iters)
    print(f"| tile {tile} elements, {warps} warps per 8K | {t * 1e3:.3f} |"
          f" {5 * n * n / t / 1e9:.0f} | {100 * 5 * n * n / t / peak:.1f}% |",
          flush=True)
  kw = dict(block_shape=block, scaling="gam")
  steps = {
      "pass 1 and the scales (compute_scales, 2 B/elem)": (
          lambda v: mor_jax.compute_scales(v, mor_jax.E4M3, **kw), 2),
      "both passes to codes (quantize, 5 B/elem)": (
          lambda v: mor_jax.quantize(v, mor_jax.E4M3, **kw).data, 5),
  }
  for name, (fn, b) in steps.items():
    t = timed(compiled(fn, x, "pallas"), x, iters=iters)
    print(f"| {name} | {t * 1e3:.3f} | {b * n * n / t / 1e9:.0f} (its bytes)"
          f" | {100 * b * n * n / t / peak:.1f}% |", flush=True)


if __name__ == "__main__":
  main()
