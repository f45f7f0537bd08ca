"""MoR's FP8 execution against BF16 and Flax's FP8 Dense, in one run.

Three measurements, each against its ceiling and peers in the same process:

1. ``dense``: MoRDense forward and backward (three GEMMs, six MoR
   quantizations) with the default policy, against ``nn.Dense`` in BF16 and
   ``nn.Dense`` with Flax's ``Fp8DirectDotGeneralOp`` (per-tensor current
   scaling, no fallback), at (tokens, in, out) = (16384, 8192, 8192) and
   (16384, 8192, 28672) in bf16: MoR with every operand accepted
   (execution "fp8"), with every operand rejected (threshold 1e-9: the BF16
   fallback of every GEMM), and emulated; one after another, or with
   ``--in-turns`` all timed in turns, every round.
2. ``gemm``: one GEMM of (16384, 8192) x (8192, 8192)^T: cuBLAS BF16; cuBLAS
   FP8 with one scale per operand, in two patterns, and with row and column
   scales (``kernels.gemm.fp8_dot``) with its fast and its accurate
   accumulation (precision DEFAULT and HIGHEST); and mor_jax's kernel
   (kernels/gemm.py) on its FP8 and its BF16 path, the BF16 path both with
   two rejected operands and with one accepted (its codes dequantized) and
   one rejected; the relative Frobenius error of each FP8 result against
   the exact product of the codes (float32 accumulation), of each mixed one
   against its twin ``gemm_reference``.
3. ``dual``: the two passes that quantize a matrix in both orientations
   (kernels/dual.py) on a (16384, 8192) bf16 X, for several tilings,
   against an XLA copy (the bandwidth ceiling), and the dense layer of 1.
   with the fastest tiling against the default.
4. ``block``: the block-scaled GEMM (kernels/block_gemm.py) at (16384,
   8192, 8192) in bf16, X and W in 128x128 E4M3 blocks with 0%, 10%, 50%
   and 100% of X's blocks in BF16 (so as many block pairs run wide), for
   each configuration in ``BLOCK_VARIANTS``, against cuBLAS BF16 and the per-channel FP8 kernel (kernels/gemm.py) in
   the same run: ms, ratio to BF16, and the relative Frobenius difference
   from the twin ``block_gemm_reference`` (float32, precision HIGHEST),
   the time including the values the BF16 loop reads (kernels/wide.py); the
   default configuration again with X's wide values stored [K, M] (a
   transposed view's operand); and the transpose of X's codes (XLA's, and
   kernels/transpose.py's) against a copy of the same bytes.
5. ``chain``: 72 GEMMs of 4096^3 in a chain (a scan), each on the codes of
   the previous output (the cost of choosing at run time): XLA's FP8 dot
   unconditionally, inside ``lax.cond``, and the kernel with its device-side
   choice, as a layer calls it, timed in turns: the median time of each and
   its median ratio to the unconditional chain over rounds that each time
   every case once.

With ``--power``, each gemm row and each dense row timed alone also gives
the GPU's joules per call, mean watts and SM clock over its timed calls
(benchmarks/power.py): under sustained load the H200 runs at its power
limit, so a looped time measures energy per step as much as kernel time.

Run on a Hopper GPU: ``python benchmarks/gemm.py`` (``--only dense`` etc.).
Each time is the median of rounds of queued calls; nothing here is a test.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import importlib.metadata
import json
import platform

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen import fp8_ops

import mor_jax
from mor_jax import kernels
from mor_jax.dense import MoRDense
from mor_jax.kernels import block_gemm
from power import Meter, open_gpu  # benchmarks/power.py, beside it
from timing import timed, timed_interleaved  # benchmarks/timing.py, beside it

TN = (((1,), (1,)), ((), ()))


def say(**row) -> None:
  print(json.dumps(row), flush=True)


def rel(a, b) -> float:
  a, b = a.astype(jnp.float32), b.astype(jnp.float32)
  return float(jnp.linalg.norm(a - b) / jnp.linalg.norm(b))


def dense_layer(kind: str, n: int):
  kw = dict(use_bias=False, dtype=jnp.bfloat16, param_dtype=jnp.float32)
  if kind == "bf16":
    return nn.Dense(n, **kw)
  if kind == "flax_fp8":
    return nn.Dense(n, dot_general_cls=fp8_ops.Fp8DirectDotGeneralOp, **kw)
  threshold = 1e-9 if kind == "mor_rejected" else 0.045
  recipe = mor_jax.TensorLevelMoR(block_shape=(1, None), threshold=threshold)
  execution = "emulate" if kind == "mor_emulate" else "fp8"
  return MoRDense(n, policy=mor_jax.Policy.uniform(recipe, execution),
                  **kw)


def dense_step(layer, x):
  """(the layer's variables, its jitted forward and backward step on x)."""
  v = layer.init(jax.random.key(1), x[:8])

  def loss(v, x):
    y = layer.apply(v, x, mutable=True)[0]
    return jnp.sum(y.astype(jnp.float32) ** 2) * 1e-6

  return v, jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


def _value(v: str):
  """A config field's value as the command line spells it."""
  if v in ("True", "False"):
    return v == "True"
  return int(v) if v.isdigit() else None if v == "None" else v


def gemm_config(text: str) -> kernels.GemmConfig:
  """A GemmConfig from "default" or "field=value,...", e.g. "cluster=m"."""
  if text == "default":
    return kernels.GemmConfig()
  kw = dict(kv.split("=") for kv in text.split(","))
  return kernels.GemmConfig(**{k: _value(v) for k, v in kw.items()})


def dual_config(text: str) -> kernels.DualConfig:
  """A DualConfig from "default" or "field=value,...": a field set in both
  passes' tilings, or, as "stats.field" or "codes.field", in one, e.g.
  "prefetch=False" or "codes.tile_rows=16,codes.row_steps=16"."""
  if text == "default":
    return kernels.DualConfig()
  kw = {"stats": {}, "codes": {}}
  for item in text.split(","):
    key, value = item.split("=")
    passes, _, field = key.rpartition(".")
    for name in (passes,) if passes else kw:
      kw[name][field] = _value(value)
  d = kernels.DualConfig()
  return kernels.DualConfig(
      **{name: dataclasses.replace(getattr(d, name), **fields)
         for name, fields in kw.items()})


def same_bits(a, b) -> bool:
  """Whether two pytrees of arrays are equal bit for bit."""
  def bits(x):
    return jax.lax.bitcast_convert_type(
        x, jnp.dtype(f"uint{8 * x.dtype.itemsize}"))
  return all(bool(jnp.array_equal(bits(u), bits(w)))
             for u, w in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def bench_dense(shapes, iters: int, kinds=("bf16", "flax_fp8", "mor_fp8",
                                           "mor_rejected", "mor_emulate"),
                gemm_configs=("default",),
                dual_configs=(kernels.DualConfig(),),
                in_turns: bool = False, gpu=None) -> None:
  """Each layer timed on its own as it is built (``timing.timed``), or a
  shape's layers all built, then timed in turns (``in_turns``:
  ``timing.timed_interleaved``, each row with its per-round time ratio to
  the first run, ``kinds[0]``'s, and, for a MoR layer under another
  ``GemmConfig`` or ``DualConfig`` than the first, whether its loss and
  gradients equal that one's bit for bit). With ``gpu`` (power.py's
  ``Nvml``) each row timed alone gives its timed calls' energy, watts and
  SM clock."""
  if gpu and in_turns:
    raise ValueError("power is measured on layers timed alone: NVML's energy "
                     "counter moves in steps too coarse for the 0.1 s "
                     "windows of a turn (docs/benchmarks.md, twenty-first "
                     "session).")
  for m, k, n in shapes:
    x = jax.random.normal(jax.random.key(0), (m, k), jnp.bfloat16)
    base = None

    def say_run(kind, g, d, layer, v, t, ratio=None, bits=None, meter=None):
      row = dict(bench="dense", shape=[m, k, n], layer=kind,
                 ms=round(t * 1e3, 3),
                 speedup_vs_bf16=round(base / t, 3) if base else None,
                 tflops=round(6 * m * n * k / t / 1e12, 1))
      if ratio is not None:
        row["time_ratio_to_first_per_round"] = round(ratio, 4)
      if bits is not None:
        row["same_bits_as_first_config"] = bits
      if meter is not None:
        row.update(meter.report())
      if g is not None:
        row["gemm"] = g
      if d is not None and d != kernels.DualConfig():
        row["dual"] = dataclasses.asdict(d)
      if kind.startswith("mor"):
        _, state = layer.apply(v, x, mutable=["mor_stats"])
        fprop = state["mor_stats"]["fprop"]
        row["fprop_e4m3"] = [float(fprop[r].fraction_blocks[0])
                             for r in ("activation", "weight")]
      say(**row)

    runs = [(kind, g, d) for kind in kinds
            for g in (gemm_configs if kind.startswith("mor") else (None,))
            for d in (dual_configs if kind.startswith("mor") else (None,))]
    cases, built = {}, {}  # per run: (step, its args), (layer, variables)
    # Per run, whether it gives the bits of its layer's first configuration;
    # per layer, that first run's loss and gradients.
    bits, first = {}, {}
    for kind, g, d in runs:
      layer = dense_layer(kind, n)
      v, step = dense_step(layer, x)
      config = kernels.KernelConfig(gemm=gemm_config(g or "default"),
                                    dual=d or kernels.DualConfig())
      with mor_jax.use_implementation("auto", config):
        if in_turns:
          # Compiled here, under this run's configuration; the calls in
          # turns, outside it, reuse this step's executable.
          out = jax.block_until_ready(step(v, x))
          cases[kind, g, d], built[kind, g, d] = (step, (v, x)), (layer, v)
          if g is not None and kind in first:
            bits[kind, g, d] = same_bits(out, first[kind])
          first.setdefault(kind, out)
          continue
        meter = Meter(gpu) if gpu else None
        t = timed(step, v, x, iters=iters, meter=meter)
      if kind == "bf16":
        base = t
      say_run(kind, g, d, layer, v, t, meter=meter)
    if in_turns:
      first.clear()  # compared: free their memory before timing
      # Every run takes every place in the turn three times.
      got = timed_interleaved(cases, iters=iters, rounds=3 * len(cases))
      base = next((t for (kind, _, _), (t, _) in got.items()
                   if kind == "bf16"), None)
      for run, (t, ratio) in got.items():
        say_run(*run, *built[run], t, ratio, bits.get(run))


def _codes(x):
  """Per-row E4M3 codes and reciprocal scales of x through mor_jax."""
  r = mor_jax.mor_codes(x, mor_jax.TensorLevelMoR(block_shape=(1, None)))
  return r.codes.data, (1.0 / r.codes.scale[:, 0]).astype(jnp.float32)


def _operands(a, a8, ra, b, b8, rb, accepted, b_accepted=None):
  """Both GEMM operands (K-major), accepted or rejected alike (or B as
  ``b_accepted`` says)."""
  flags = accepted, accepted if b_accepted is None else b_accepted
  return [kernels.gemm.Operand(x, q, r, jnp.asarray(f), False)
          for x, q, r, f in ((a, a8, ra, flags[0]), (b, b8, rb, flags[1]))]


def bench_gemm(iters: int, gpu=None) -> None:
  """Each case timed alone; with ``gpu`` (power.py's ``Nvml``) also its
  energy per GEMM, watts and SM clock (windows of ``iters`` GEMMs: a few
  hundred make them long enough for NVML's energy counter)."""
  m, k, n = 16384, 8192, 8192
  a = jax.random.normal(jax.random.key(0), (m, k), jnp.bfloat16)
  b = jax.random.normal(jax.random.key(1), (n, k), jnp.bfloat16)
  a8, ra = jax.jit(_codes)(a)
  b8, rb = jax.jit(_codes)(b)
  exact = jax.jit(lambda: jax.lax.dot_general(
      a8.astype(jnp.bfloat16), b8.astype(jnp.bfloat16), TN,
      preferred_element_type=jnp.float32) * ra[:, None] * rb[None, :])()
  wide_ref = jax.lax.dot_general(a, b, TN, preferred_element_type=jnp.float32)
  # One scale per operand, as Flax's FP8 Dense has them. Only Flax's pattern
  # (``dequantized``) gets them into cuBLAS's GEMM, with a bfloat16 output;
  # scaling the float32 product takes a second kernel, as row and column
  # scales do (docs/benchmarks.md, twenty-second session). Scales a bfloat16
  # holds exactly serve both patterns.
  ta, tb = (r[0].astype(jnp.bfloat16) for r in (ra, rb))

  def tensor_scaled():
    return (jax.lax.dot_general(a8, b8, TN, preferred_element_type=jnp.float32)
            * ta.astype(jnp.float32) * tb.astype(jnp.float32)
            ).astype(jnp.bfloat16)

  def dequantized():
    # Flax's fp8_ops pattern: bfloat16 operands dequantized from the codes
    # and a bfloat16 dot, which XLA rewrites into cuBLAS's FP8 GEMM with the
    # scales and a bfloat16 output.
    return jax.lax.dot_general(a8.astype(jnp.bfloat16) * ta,
                               b8.astype(jnp.bfloat16) * tb, TN,
                               preferred_element_type=jnp.bfloat16)

  exact_tensor = jax.jit(lambda: jax.lax.dot_general(
      a8.astype(jnp.bfloat16), b8.astype(jnp.bfloat16), TN,
      preferred_element_type=jnp.float32) * ta.astype(jnp.float32)
      * tb.astype(jnp.float32))()
  cfg = kernels.GemmConfig()
  cases = {
      "cublas_bf16": (lambda: jax.lax.dot_general(
          a, b, TN, preferred_element_type=jnp.bfloat16), wide_ref),
      "cublas_fp8_tensor_scaled": (tensor_scaled, exact_tensor),
      "cublas_fp8_dequantized_pattern": (dequantized, exact_tensor),
      "cublas_fp8_fast": (lambda: kernels.gemm.fp8_dot(
          a8, b8, ra, rb, out_dtype=jnp.bfloat16), exact),
      "cublas_fp8_accurate": (lambda: kernels.gemm.fp8_dot(
          a8, b8, ra, rb, out_dtype=jnp.bfloat16,
          precision=jax.lax.Precision.HIGHEST), exact),
      "mor_kernel_fp8_path": (lambda: kernels.gemm.gemm(
          *_operands(a, a8, ra, b, b8, rb, True), out_dtype=jnp.bfloat16,
          config=cfg), exact),
      "mor_kernel_bf16_path": (lambda: kernels.gemm.gemm(
          *_operands(a, a8, ra, b, b8, rb, False), out_dtype=jnp.bfloat16,
          config=cfg), wide_ref),
  }
  # One operand accepted, the other rejected: BF16 with the accepted one's
  # codes dequantized, against XLA's dot of the same values.
  for name, flags in (("a", (True, False)), ("b", (False, True))):
    ops = functools.partial(_operands, a, a8, ra, b, b8, rb, *flags)
    cases[f"mor_kernel_dequant_{name}_path"] = (
        lambda ops=ops: kernels.gemm.gemm(*ops(), out_dtype=jnp.bfloat16,
                                          config=cfg),
        jax.jit(lambda ops=ops: kernels.gemm.gemm_reference(
            *ops(), out_dtype=jnp.float32))())
  for name, (fn, ref) in cases.items():
    fn = jax.jit(fn)
    meter = Meter(gpu) if gpu else None
    t = timed(fn, iters=iters, meter=meter)
    say(bench="gemm", case=name, ms=round(t * 1e3, 3),
        tflops=round(2 * m * n * k / t / 1e12, 1),
        rel_frobenius=rel(fn(), ref), **(meter.report() if meter else {}))


def _blocks(x, bf16_share: float, seed: int, same_k: bool = False):
  """x's 128x128 E4M3 blocks, a random ``bf16_share`` of them BF16 (with
  ``same_k``, the same K blocks in every 128-row block)."""
  qa = mor_jax.quantize(x, mor_jax.E4M3, block_shape=(128, 128))
  rows, kb = qa.scale.shape
  rep = jax.random.bernoulli(jax.random.key(seed), bf16_share,
                             (1, kb) if same_k else (rows, kb))
  rep = jnp.broadcast_to(rep, (rows, kb))
  rep = jnp.where(rep, block_gemm.REP_BF16, block_gemm.REP_E4M3)
  return block_gemm.BlockOperand(qa.data, 1.0 / qa.scale, rep, x)


# Configurations of the block GEMM, the default first (BlockGemmConfig:
# tiles paired along N in clusters); the BF16 loop's depth matters only
# where blocks are BF16; ``wide`` runs where all are (6: the block loops
# alone); 7-9 unpaired: 7 as the default was before the pairs, 8 with the
# block loops alone, 9 with gemm.py's tiles in clusters of two, whose launch
# is the block loops' too.
BLOCK_VARIANTS = (
    dict(),
    dict(stages=2), dict(stages=3), dict(wide_stages=3),
    dict(grid_tile_width=4), dict(grid_tile_width=16),
    dict(wide=None),
    dict(paired=False), dict(paired=False, wide=None),
    dict(paired=False, wide=kernels.GemmConfig(cluster="m")),
)


def bench_block(iters: int, variants=BLOCK_VARIANTS) -> None:
  m, k, n = 16384, 8192, 8192
  a = jax.random.normal(jax.random.key(0), (m, k), jnp.bfloat16)
  b = jax.random.normal(jax.random.key(1), (n, k), jnp.bfloat16)
  a8, ra = jax.jit(_codes)(a)
  b8, rb = jax.jit(_codes)(b)
  t_bf16 = timed(jax.jit(lambda: jax.lax.dot_general(
      a, b, TN, preferred_element_type=jnp.bfloat16)), iters=iters)
  t_chan = timed(jax.jit(lambda: kernels.gemm.gemm(
      *_operands(a, a8, ra, b, b8, rb, True), out_dtype=jnp.bfloat16,
      config=kernels.GemmConfig())), iters=iters)
  for case, t in (("cublas_bf16", t_bf16), ("per_channel_fp8", t_chan)):
    say(bench="block", case=case, ms=round(t * 1e3, 3),
        vs_bf16=round(t / t_bf16, 3), tflops=round(2 * m * n * k / t / 1e12, 1))
  interpret = jax.default_backend() != "gpu"
  flip = lambda c: jax.lax.bitcast_convert_type(  # noqa: E731
      jax.lax.bitcast_convert_type(c, jnp.uint8) ^ 1, c.dtype)
  for case, fn in (("codes_copy", flip), ("codes_xla_transpose", lambda c: c.T),
                   ("codes_kernel_transpose", functools.partial(
                       kernels.transpose.transpose_codes,
                       interpret=interpret))):
    t = timed(jax.jit(fn), a8, iters=iters)
    say(bench="block", case=case, shape=list(a8.shape), ms=round(t * 1e3, 3),
        gbps=round(2 * a8.size / t / 1e9))
  wb = jax.jit(_blocks, static_argnums=(1, 2))(b, 0.0, 2)
  for share in (0.0, 0.1, 0.5, 1.0):
    wa = jax.jit(_blocks, static_argnums=(1, 2))(a, share, 3)
    want = block_gemm.block_gemm_reference(
        wa, wb, out_dtype=jnp.float32, precision=jax.lax.Precision.HIGHEST)
    for variant in variants:
      cfg = block_gemm.BlockGemmConfig(**variant)
      fn = functools.partial(block_gemm.block_gemm, out_dtype=jnp.bfloat16,
                             config=cfg)
      try:
        t = timed(fn, wa, wb, iters=iters)
      except Exception as e:  # noqa: BLE001 - a variant that fails to build
        say(bench="block", case="block_kernel", bf16_blocks=share,
            **dataclasses.asdict(cfg),
            error=f"{type(e).__name__}: {str(e)[:300]}")
        continue
      say(bench="block", case="block_kernel", bf16_blocks=share,
          **dataclasses.asdict(cfg),
          bf16_pairs=round(float(jnp.mean(wa.rep == block_gemm.REP_BF16)), 4),
          ms=round(t * 1e3, 3), vs_bf16=round(t / t_bf16, 3),
          tflops=round(2 * m * n * k / t / 1e12, 1),
          rel_frobenius=rel(fn(wa, wb), want))
    wa_t = block_gemm.BlockOperand(wa.codes, wa.recip, wa.rep, wa.wide.T, True)
    fn = functools.partial(block_gemm.block_gemm, out_dtype=jnp.bfloat16)
    t = timed(fn, wa_t, wb, iters=iters)
    say(bench="block", case="block_kernel_x_wide_stored_transposed",
        bf16_blocks=share, ms=round(t * 1e3, 3), vs_bf16=round(t / t_bf16, 3),
        rel_frobenius=rel(fn(wa_t, wb), want))


# Tilings of the dual passes: (tile_rows, tile_cols, row_steps, warps,
# stages); the default first.
DUAL_VARIANTS = ((16, 128, 16, 4, 2), (64, 128, 1, 4, 1), (8, 128, 32, 4, 2),
                 (16, 128, 32, 2, 2), (16, 128, 8, 4, 2), (16, 64, 16, 2, 2),
                 (8, 256, 32, 4, 2), (16, 128, 16, 8, 2), (32, 128, 8, 4, 2))


def dual_passes(v, dual):
  """Both dual passes of v; fp32 scaling (F / amax) is enough to time them."""
  st = dual.stats(v)
  rows, cols = (mor_jax.E4M3.max / jnp.maximum(a[:, 0], 1e-30)
                for a in (st.row_amax, st.cols.amax))
  return dual.codes(v, rows, cols, mor_jax.E4M3)


def bench_dual(iters: int) -> None:
  m, k = 16384, 8192
  x = jax.random.normal(jax.random.key(0), (m, k), jnp.bfloat16)
  copy = timed(jax.jit(lambda v: v * 2), x, iters=iters)
  say(bench="dual", case="xla_copy", ms=round(copy * 1e3, 3),
      gbps=round(4 * x.size / copy / 1e9))

  best = None
  for tr, tc, steps, warps, stages in DUAL_VARIANTS:
    tiling = kernels.PassTiling(tile_rows=tr, tile_cols=tc, row_steps=steps,
                                num_warps=warps, num_stages=stages)
    cfg = kernels.DualConfig(stats=tiling, codes=tiling)
    dual = kernels.dual.PallasDual(cfg, jax.default_backend() != "gpu")
    t = timed(jax.jit(functools.partial(dual_passes, dual=dual)), x,
              iters=iters)
    t1 = timed(jax.jit(dual.stats), x, iters=iters)
    say(bench="dual", case=dataclasses.asdict(tiling), ms=round(t * 1e3, 3),
        gbps_at_6B=round(6 * x.size / t / 1e9), stats_ms=round(t1 * 1e3, 3))
    best = min(best or (t, cfg), (t, cfg), key=lambda p: p[0])
  bench_dense([(m, k, k)], iters, kinds=("mor_fp8",),
              dual_configs=tuple(dict.fromkeys((kernels.DualConfig(),
                                                best[1]))))


def bench_chain(iters: int, gemm_configs=("default",)) -> None:
  """72 GEMMs of 4096^3, each on the codes of the previous output; the
  kernel once per GemmConfig."""
  m = 4096
  w = jax.random.normal(jax.random.key(1), (m, m), jnp.bfloat16) * 0.02
  w8, rw = jax.jit(_codes)(w)
  ones = jnp.ones((m,), jnp.float32)

  def step(kind, h, pred, config=None):
    h8 = h.astype(jnp.float8_e4m3fn)
    if kind == "xla_fp8":
      return kernels.gemm.fp8_dot(h8, w8, ones, rw, out_dtype=jnp.bfloat16)
    if kind == "xla_cond":
      return jax.lax.cond(
          pred, lambda: kernels.gemm.fp8_dot(h8, w8, ones, rw,
                                             out_dtype=jnp.bfloat16),
          lambda: jax.lax.dot_general(h, w, TN,
                                      preferred_element_type=jnp.bfloat16))
    # The kernel as a layer runs it: its BF16 path reads the operands as
    # they came.
    return kernels.gemm.gemm(*_operands(h, h8, ones, w, w8, rw, pred),
                             out_dtype=jnp.bfloat16, config=config)

  def chain(kind, preds, h, config=None):
    # A scan with a known trip count compiles each variant once and adds no
    # host synchronisation of its own.
    return jax.lax.scan(lambda h, p: (step(kind, h, p, config) * 1e-2, None),
                        h, preds)[0]

  h0 = jax.random.normal(jax.random.key(0), (m, m), jnp.bfloat16)
  # Timed in turns (timed_interleaved): the targets are a few percent, about
  # what the device drifts between runs timed one after the other.
  cases = {}
  for kind, preds in (("xla_fp8", (True,)), ("xla_cond", (True, False))):
    for p in preds:
      cases[kind, p, None] = (jax.jit(functools.partial(chain, kind)),
                              (jnp.full((72,), p), h0))
  for g in gemm_configs:
    for p in (True, False):
      cases["kernel", p, g] = (jax.jit(functools.partial(
          chain, "kernel", config=gemm_config(g))), (jnp.full((72,), p), h0))
  # Every case takes every place in the turn three times.
  got = timed_interleaved(cases, iters=max(1, iters // 3),
                          rounds=3 * len(cases))
  for (kind, p, g), (t, ratio) in got.items():
    row = dict(bench="chain", case=kind, fp8=p, ms=round(t * 1e3, 3),
               vs_xla_fp8=round(ratio, 4))
    if g is not None:
      row["gemm"] = g
    say(**row)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--only",
                  choices=("dense", "gemm", "dual", "block", "chain"),
                  default=None)
  ap.add_argument("--iters", type=int, default=10)
  ap.add_argument("--block-variants", default=None,
                  help="with block: indices into BLOCK_VARIANTS, e.g. 0 "
                  "(the default configuration); all if not given")
  ap.add_argument("--dense-shapes", default="16384x8192x8192,16384x8192x28672")
  ap.add_argument("--dense-layers",
                  default="bf16,flax_fp8,mor_fp8,mor_rejected,mor_emulate")
  ap.add_argument("--in-turns", action="store_true",
                  help="with dense: time a shape's layers in turns in each "
                  "round (timing.timed_interleaved), not one after another")
  ap.add_argument("--gemm-configs", default="default",
                  help="GemmConfigs the MoR layers (dense) and the kernel's "
                       "chains (chain) run with, each timed in the same run: "
                       "'default;cluster=m;...'")
  ap.add_argument("--dual-configs", default="default",
                  help="with dense: DualConfigs the MoR layers run with, "
                  "each timed in the same run: 'default;prefetch=False'")
  ap.add_argument("--power", action="store_true",
                  help="with dense (not --in-turns) and gemm: each row's "
                  "joules per call, watts and SM clock over its timed calls "
                  "(NVML; benchmarks/power.py); give --iters enough calls "
                  "for each timed window to last over half a second (100 "
                  "for the dense layers, 1000 for one GEMM)")
  args = ap.parse_args()
  if args.power and args.in_turns:
    ap.error("--power times each layer alone: leave out --in-turns")
  dev = jax.devices()[0]
  gpu = open_gpu(dev.local_hardware_id) if args.power else None
  say(date=str(datetime.date.today()), device=dev.device_kind,
      backend=jax.default_backend(), jax=jax.__version__,
      jaxlib=importlib.metadata.version("jaxlib"), flax=flax.__version__,
      python=platform.python_version(), mor_jax=mor_jax.__version__,
      **({"power_limit_w": gpu.power_limit_w()} if gpu else {}))
  shapes = [tuple(int(d) for d in s.split("x"))
            for s in args.dense_shapes.split(",")]
  if args.only in (None, "gemm"):
    bench_gemm(args.iters, gpu)
  if args.only in (None, "dual"):
    bench_dual(args.iters)
  if args.only in (None, "block"):
    bench_block(args.iters, BLOCK_VARIANTS if args.block_variants is None else
                [BLOCK_VARIANTS[int(i)]
                 for i in args.block_variants.split(",")])
  if args.only in (None, "chain"):
    bench_chain(args.iters, gemm_configs=args.gemm_configs.split(";"))
  if args.only in (None, "dense"):
    bench_dense(shapes, args.iters, kinds=args.dense_layers.split(","),
                gemm_configs=args.gemm_configs.split(";"),
                dual_configs=tuple(dual_config(d) for d in
                                   args.dual_configs.split(";")),
                in_turns=args.in_turns, gpu=gpu)


if __name__ == "__main__":
  main()
