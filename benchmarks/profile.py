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
- ``--sweep block``: kernels/block_gemm.py's configurations at 0-100% BF16
  blocks, its kernel apart from the XLA work before it, against cuBLAS
  BF16;
- ``--trace DIR --steps N``: a trace taken elsewhere, e.g. by
  ``examples/train_lm.py --profile-steps N``;
- ``--trace DIR --steps N --by-op [--match MemcpyD2D]``: that trace's kernels
  (those whose name contains the match) summed per HLO op that launched them
  (its "hlo_op" stat, else the "XLA Ops" event around it): per step, time,
  launches and, for memcpys, bytes, with the op's module, JAX name and shape
  where the trace records them.

On a CPU there is no device plane and nothing to sum. Run on a GPU:
``python benchmarks/profile.py`` (``--layers``, ``--shape``, ``--sweep``).
"""

from __future__ import annotations

import argparse
import bisect
import collections
import dataclasses
import functools
import glob
import json
import re
import tempfile

import jax
import jax.numpy as jnp
from jax.profiler import ProfileData

from mor_jax import kernels
# benchmarks/gemm.py, beside this script.
from gemm import (BLOCK_VARIANTS, DUAL_VARIANTS, TN, _blocks, _codes,
                  dense_layer, dense_step, dual_passes, rel)
from mor_jax.kernels import block_gemm


@dataclasses.dataclass(frozen=True)
class Event:
  """One timed event of a device plane, with its stats by name."""
  name: str
  start_ns: float
  duration_ns: float
  stats: dict = dataclasses.field(default_factory=dict)


def device_lines(trace_dir: str) -> list[tuple[list[Event], list[Event]]]:
  """Per device plane: (its Stream events, its "XLA Ops" events)."""
  out = []
  for path in glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True):
    for plane in ProfileData.from_file(path).planes:
      if not plane.name.startswith("/device:"):
        continue
      streams, ops = [], []
      for line in plane.lines:
        # Streams carry the kernels and memcpys; "XLA Ops" the HLO ops that
        # launched them; other lines (e.g. "XLA Modules") regroup them.
        into = (streams if line.name.startswith("Stream") else
                ops if line.name == "XLA Ops" else None)
        if into is not None:
          into.extend(Event(e.name, e.start_ns, e.duration_ns, dict(e.stats))
                      for e in line.events)
      out.append((streams, ops))
  return out


def device_kernels(trace_dir: str) -> list[tuple[str, float, float]]:
  """(name, start_ns, duration_ns) of every kernel on the device planes."""
  return [(e.name, e.start_ns, e.duration_ns)
          for streams, _ in device_lines(trace_dir) for e in streams]


# Stats of GPU traces (XLA's cupti_collector.cc copies the thunk's annotation,
# xla/service/gpu/runtime/annotation.cc, onto each kernel): "hlo_op" and
# "hlo_module" always; the op's JAX name as "name" (prefix of the module's
# common op_name cut off) or in full as "op_name", and its output "shape" at
# the detailed annotation level; memcpys' "memcpy_details" reads
# "kind_src:... kind_dst:... size:<bytes> dest:... async:...".
_JAX_NAME = ("op_name", "name")
_SHAPE = ("long_name", "shape")


def _first(stats: dict, keys) -> str:
  return next((str(stats[k]) for k in keys if k in stats), "")


def op_times(kernels, ops, match: str = "") -> dict:
  """Sums the kernels whose name contains ``match`` by the HLO op behind them.

  A kernel's op is its "hlo_op" stat, else the "XLA Ops" event that contains
  its start (both from one device plane), else "?".

  Args:
    kernels: ``Event``s of the Stream lines.
    ops: ``Event``s of the "XLA Ops" line, which do not overlap.
    match: a substring of the kernel names to keep, e.g. "MemcpyD2D".

  Returns:
    {(kernel name, hlo_module, hlo_op, JAX name, shape): [ns, launches,
    bytes]}; bytes count memcpys' sizes (0 for kernels).
  """
  ops = sorted(ops, key=lambda o: o.start_ns)
  starts = [o.start_ns for o in ops]
  sums = collections.defaultdict(lambda: [0.0, 0, 0])
  for k in kernels:
    if match not in k.name:
      continue
    i = bisect.bisect_right(starts, k.start_ns) - 1
    op = (ops[i] if i >= 0 and k.start_ns < starts[i] + ops[i].duration_ns
          else None)
    hlo_op = str(k.stats.get("hlo_op", op.name if op else "?"))
    # The kernel's own stats win; the containing op's fill in only if it is
    # the kernel's op.
    stats = {**(op.stats if op and op.name == hlo_op else {}), **k.stats}
    size = re.search(r"\bsize:(\d+)", str(k.stats.get("memcpy_details", "")))
    key = (k.name, _first(stats, ("hlo_module",)), hlo_op,
           _first(stats, _JAX_NAME), _first(stats, _SHAPE))
    sums[key][0] += k.duration_ns
    sums[key][1] += 1
    sums[key][2] += int(size.group(1)) if size else 0
  return dict(sums)


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


def summarize_ops(label: str, trace_dir: str, steps: int, top: int,
                  match: str) -> None:
  """Per step: the kernels matching ``match``, then the ``top`` (kernel, HLO
  op) pairs by time with their launches and bytes, the rest."""
  sums = {}  # summed over device planes, like summarize
  for streams, ops in device_lines(trace_dir):
    for key, got in op_times(streams, ops, match).items():
      sums[key] = [a + b for a, b in zip(sums.get(key, (0, 0, 0)), got)]
  if not sums:
    print(json.dumps(dict(run=label, match=match,
                          note="no matching device events in the trace")))
    return
  per_step = lambda ns, n, b: dict(  # noqa: E731
      ms=round(ns / steps / 1e6, 4), launches=n // steps, bytes=b // steps,
      bytes_each=b // n)
  print(json.dumps(dict(run=label, match=match,
                        **per_step(*map(sum, zip(*sums.values()))))),
        flush=True)
  ranked = sorted(sums.items(), key=lambda kv: -kv[1][0])
  for (kernel, module, op, jax_name, shape), got in ranked[:top]:
    print(json.dumps(dict(run=label, kernel=kernel[:90], hlo_module=module,
                          hlo_op=op, name=jax_name[-120:], shape=shape[:200],
                          **per_step(*got))), flush=True)
  rest = [got for _, got in ranked[top:]]
  if rest:
    print(json.dumps(dict(run=label, hlo_op=f"({len(rest)} others)",
                          **per_step(*map(sum, zip(*rest))))), flush=True)


def per_call_ms(times, calls: int, prefix: str = "") -> float:
  """Milliseconds per call of the kernels whose name starts with prefix."""
  ns = sum(sum(d) for n, d in times.items() if n.startswith(prefix))
  return round(ns / calls / 1e6, 4)


GEMM_VARIANTS = (
    {},  # the default
    dict(cluster=None),
    dict(cluster="n"),
    dict(grid_tile_width=16),
    dict(grid_tile_width=4),
    dict(delay_release=0),
    dict(chain_fp8=False),
    dict(chain_wide=True),
    # Blocks of 128 x 128 outputs (each compute warpgroup 128 x 64), the
    # block GEMM's tile, against the default's 128 x 256.
    dict(tile_n=64),
)


def sweep_gemm(shape, calls: int, variants=None) -> None:
  """cuBLAS's GEMMs and ``GEMM_VARIANTS`` (those at the indices
  ``variants``, or all) on both of the kernel's paths."""
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
      # The ceiling: cuBLAS's FP8 GEMM alone, no scales to apply.
      "cublas_fp8_no_scales": lambda: jax.lax.dot_general(
          a8, b8, TN, preferred_element_type=jnp.bfloat16),
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
  for i, variant in enumerate(GEMM_VARIANTS):
    if variants is not None and i not in variants:
      continue
    cfg = kernels.GemmConfig(**variant)
    fn = jax.jit(lambda fp8, cfg=cfg: kernels.gemm.gemm(
        *(kernels.gemm.Operand(x, q, r, fp8, False)
          for x, q, r in ((a, a8, ra), (b, b8, rb))),
        out_dtype=jnp.bfloat16, config=cfg))
    for fp8, ref in ((True, "cublas_fp8_with_scales"), (False, "cublas_bf16")):
      times, _ = kernel_times(fn, jnp.bool_(fp8), calls=calls)
      say(dict(variant, path="fp8" if fp8 else "bf16"),
          per_call_ms(times, calls, "anonymous_mosaic_gpu_kernel"),
          rel_to_cublas=rel(fn(jnp.bool_(fp8)), refs[ref]))


def sweep_block(shape, calls: int, variants=None, same_k=False,
                shares=(0.0, 0.1, 0.5, 1.0)) -> None:
  """The block GEMM (``gemm.py``'s ``BLOCK_VARIANTS``, those at the indices
  ``variants``, or all) at ``shares`` of X's blocks in BF16 (with
  ``same_k``, at the same K in every row block), kernel by kernel: the
  Mosaic GPU kernel apart from the XLA work before it (the K order of each
  tile, the scales per row, the flag), against cuBLAS BF16's GEMM."""
  m, k, n = shape
  a = jax.random.normal(jax.random.key(0), (m, k), jnp.bfloat16)
  b = jax.random.normal(jax.random.key(1), (n, k), jnp.bfloat16)
  bf16 = jax.jit(lambda: jax.lax.dot_general(
      a, b, TN, preferred_element_type=jnp.bfloat16))
  got = kernel_times(bf16, calls=calls)
  if got is None:
    print(json.dumps(dict(note="no device plane in the trace")))
    return
  t_bf16 = per_call_ms(got[0], calls)
  print(json.dumps(dict(sweep="block", shape=[m, k, n], case="cublas_bf16",
                        ms=t_bf16)), flush=True)
  wb = jax.jit(_blocks, static_argnums=(1, 2))(b, 0.0, 2)
  for share in shares:
    wa = jax.jit(_blocks, static_argnums=(1, 2, 3))(a, share, 3, same_k)
    for i, variant in enumerate(BLOCK_VARIANTS):
      if variants is not None and i not in variants:
        continue
      fn = jax.jit(functools.partial(
          block_gemm.block_gemm, out_dtype=jnp.bfloat16,
          config=block_gemm.BlockGemmConfig(**variant)))
      times, span = kernel_times(fn, wa, wb, calls=calls)
      kernel = per_call_ms(times, calls, "anonymous_mosaic_gpu_kernel")
      total = per_call_ms(times, calls)
      print(json.dumps(dict(
          sweep="block", shape=[m, k, n], bf16_blocks=share, same_k=same_k,
          variant=i,
          kernel_ms=kernel, kernel_vs_bf16=round(kernel / t_bf16, 3),
          before_kernel_ms=round(total - kernel, 4),
          busy_vs_bf16=round(total / t_bf16, 3),
          span_ms=round(span / calls / 1e6, 4))), flush=True)


# (tile_rows, tile_cols, row_steps, warps, stages) beyond gemm.py's.
MORE_DUAL_VARIANTS = ((8, 512, 32, 8, 2), (4, 512, 64, 4, 2),
                      (16, 256, 16, 8, 2), (32, 256, 8, 8, 2),
                      (8, 256, 32, 8, 4), (16, 128, 32, 4, 4),
                      (16, 128, 16, 4, 1),
                      # The eighth session's second sweep, its best first.
                      (16, 64, 16, 4, 2), (32, 64, 8, 4, 2),
                      (32, 64, 16, 4, 4), (32, 32, 8, 2, 2),
                      (16, 32, 16, 1, 2), (64, 32, 4, 2, 2),
                      # The twentieth session's: codes tiles of 16 elements
                      # per thread, or more.
                      (64, 64, 4, 4, 2), (32, 64, 8, 8, 2),
                      # The twenty-second session's: more warps and bytes in
                      # flight for both passes (codes: 24-31, statistics:
                      # 32-36).
                      (64, 64, 4, 8, 2), (64, 64, 4, 16, 2),
                      (32, 128, 8, 8, 2), (32, 128, 8, 16, 2),
                      (64, 128, 4, 16, 2), (32, 64, 16, 8, 2),
                      (32, 64, 4, 8, 2), (128, 64, 2, 16, 2),
                      (16, 256, 16, 16, 2), (8, 1024, 32, 16, 2),
                      (16, 512, 16, 16, 2), (8, 256, 64, 4, 2),
                      (8, 256, 16, 4, 2))


def sweep_dual(shape, calls: int, variants=None) -> None:
  m, k = shape[:2]
  x = jax.random.normal(jax.random.key(0), (m, k), jnp.bfloat16)
  got = kernel_times(jax.jit(lambda v: v * 2), x, calls=calls)
  if got is None:
    print(json.dumps(dict(note="no device plane in the trace")))
    return
  print(json.dumps(dict(sweep="dual", shape=[m, k], case="xla_copy",
                        ms=per_call_ms(got[0], calls))), flush=True)

  tilings = [(v, prefetch)
             for i, v in enumerate(DUAL_VARIANTS + MORE_DUAL_VARIANTS)
             if variants is None or i in variants
             for prefetch in (False, True)]
  for (tr, tc, steps, warps, stages), prefetch in tilings:
    tiling = kernels.PassTiling(tile_rows=tr, tile_cols=tc, row_steps=steps,
                                num_warps=warps, num_stages=stages,
                                prefetch=prefetch)
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
  ap.add_argument("--sweep", choices=("gemm", "dual", "block"),
                  default=None)
  ap.add_argument("--variants", default=None,
                  help="with --sweep gemm: indices into GEMM_VARIANTS, "
                  "e.g. 0,5; with --sweep block: into gemm.py's "
                  "BLOCK_VARIANTS; with --sweep dual: into gemm.py's "
                  "DUAL_VARIANTS then MORE_DUAL_VARIANTS (each tiling runs "
                  "without and with prefetch)")
  ap.add_argument("--same-k", action="store_true",
                  help="with --sweep block: X's BF16 blocks at the same K "
                  "in every row block (each tile's K blocks alike)")
  ap.add_argument("--shares", default="0,0.1,0.5,1",
                  help="with --sweep block: shares of X's blocks in BF16")
  ap.add_argument("--trace", default=None,
                  help="sum an existing trace instead, e.g. train_lm.py "
                  "--profile-steps N's <out>/<recipe>_profile (--steps: N)")
  ap.add_argument("--by-op", action="store_true",
                  help="with --trace: sum the kernels by the HLO op that "
                  "launched them")
  ap.add_argument("--match", default="",
                  help="with --by-op: only kernels whose name contains this, "
                  "e.g. MemcpyD2D")
  args = ap.parse_args()
  if args.trace and args.by_op:
    return summarize_ops(args.trace, args.trace, args.steps, args.top,
                         args.match)
  if args.trace:
    return summarize(args.trace, trace_times(args.trace), args.steps,
                     args.top)
  shape = tuple(int(d) for d in args.shape.split("x"))
  variants = args.variants and {int(i) for i in args.variants.split(",")}
  if args.sweep == "gemm":
    return sweep_gemm(shape, args.steps, variants)
  if args.sweep == "dual":
    return sweep_dual(shape, args.steps, variants)
  if args.sweep == "block":
    return sweep_block(shape, args.steps, variants, args.same_k,
                       tuple(float(f) for f in args.shares.split(",")))
  for kind in args.layers.split(","):
    profile(kind, shape, args.steps, args.top)


if __name__ == "__main__":
  main()
