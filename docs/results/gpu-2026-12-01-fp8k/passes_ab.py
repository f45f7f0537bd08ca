"""UNTESTED DRAFT (eleventh session, written without device time): what
bounds the two-orientation codes and statistics passes (kernels/dual.py)?

Both targets of issue 14's layer at 8192 now wait on these passes (1.28 ms a
layer, about 2.3x their HBM floor). This times variants of the codes pass
that each drop one piece of its work, so the piece that costs shows:
  current | no transposed store | no error terms | row orientation only
and the statistics pass with all four statistics against amax alone, next to
an XLA copy of the same bytes (the floor). Kernel times from a trace.

Run on the device from the repository root, with PYTHONPATH=$PWD and the
mor_jax/kernels link: python3 scratch/passes_ab.py [rows] [cols]
"""

import functools
import json
import sys

import jax
import jax.numpy as jnp

sys.path.insert(0, "benchmarks")
import profile as prof  # noqa: E402  (benchmarks/profile.py)

import mor_jax  # noqa: E402,F401
from mor_jax import _scaling  # noqa: E402
from mor_jax.kernels import dual  # noqa: E402
from mor_jax.kernels import sharding  # noqa: E402
from mor_jax.kernels import tile  # noqa: E402

ORIGINAL = dual._codes_kernel


def codes_variant(x_ref, row_scale_ref, col_scale_ref, codes_ref, codes_t_ref,
                  row_err_ref, col_err_ref, *, shape, cfg, fmt, drop):
  col_scale = col_scale_ref[...][None, :]

  def step(rows, mask, col_err):
    x, bits, _, counted = tile.load(x_ref.at[rows, :], mask)
    zero = tile.as_float(bits & tile.SIGN_BIT)
    errs = []
    sides = [(row_scale_ref[rows][:, None], codes_ref.at[rows, :], False)]
    if drop != "column":
      sides.append((col_scale, codes_t_ref.at[:, rows], True))
    for scale, out_ref, transposed in sides:
      y = jnp.where(counted, x * scale, zero)
      q8 = y.astype(fmt.dtype)
      if drop == "errors":
        errs.append(y * 0)
      else:
        errs.append(tile.error_terms(y, q8.astype(jnp.float32), counted))
      codes = jax.lax.bitcast_convert_type(q8, jnp.uint8)
      if transposed:
        if drop != "transposed_store":
          tile.store(out_ref, codes.T, None if mask is None else mask.T)
        else:  # keep the work alive: fold the codes into the error sum
          errs[-1] = errs[-1] + codes.astype(jnp.float32) * 0
      else:
        tile.store(out_ref, codes, mask)
    row_err_ref[rows] = jnp.sum(errs[0], axis=1)
    return col_err + (errs[1] if len(errs) > 1 else errs[0])

  col_err = dual._steps(shape, cfg, step,
                        jnp.zeros((cfg.tile_rows, cfg.tile_cols), jnp.float32))
  col_err_ref[...] = jnp.sum(col_err, axis=0)


ORIGINAL_STATS = dual._stats_kernel
ORIGINAL_ERRORS = tile.error_terms


def rcp_error_terms(y, q, counted):
  """tile.error_terms with rcp.approx.ftz (1 ulp) for the division, where
  Triton's division (div.full.f32) adds range fixes (~10 SASS per element,
  ncu). |y| of a counted element is normal and at most the format's max
  after scaling; a flushed subnormal |y| gives q == 0, error 1."""
  from jax.experimental.pallas import triton as pltriton
  [r] = pltriton.elementwise_inline_asm(
      "rcp.approx.ftz.f32 $0, $1;", args=[jnp.abs(y)], constraints="=r,r",
      pack=1, result_shape_dtypes=[jax.ShapeDtypeStruct(y.shape, jnp.float32)])
  term = jnp.where(q == 0, 1.0, jnp.abs(y - q) * r)
  return jnp.where(counted, term, 0.0)


def stats_variant(x_ref, *refs, shape, cfg, drop):
  """The statistics pass without the row statistics ("rows": four
  cross-thread reductions per step) or with amax alone ("all_but_amax")."""
  amax, nonfinite, count, low = refs[:4]

  def step(rows, mask, acc):
    _, _, abs_bits, counted = tile.load(x_ref.at[rows, :], mask)
    m = jnp.where(counted, abs_bits, 0)
    if drop == "rows":
      tile_acc = (m, abs_bits, counted.astype(jnp.int32),
                  jnp.where(counted, abs_bits, tile.EXP_FIELD))
      return (jnp.maximum(acc[0], tile_acc[0]),
              jnp.maximum(acc[1], tile_acc[1]),
              acc[2] + tile_acc[2], jnp.minimum(acc[3], tile_acc[3]))
    amax[rows] = tile.as_float(jnp.max(m, axis=1))
    return (jnp.maximum(acc[0], m),) + acc[1:]

  tile_shape = (cfg.tile_rows, cfg.tile_cols)
  zeros = jnp.zeros(tile_shape, jnp.int32)
  acc = dual._steps(shape, cfg, step, (zeros, zeros, zeros,
                    jnp.full(tile_shape, tile.EXP_FIELD, jnp.int32)))
  amax, nonfinite, count, low = refs[4:]
  amax[...] = tile.as_float(jnp.max(acc[0], axis=0))
  nonfinite[...] = (jnp.max(acc[1], axis=0) >= tile.EXP_FIELD).astype(
      jnp.int32)
  count[...] = jnp.sum(acc[2], axis=0)
  low[...] = tile.as_float(jnp.min(acc[3], axis=0))


def rcp_probe(x, rows, cols, pallas, fmt, say):
  """The codes pass as it is and with rcp_error_terms, in one run."""
  fresh()
  fn = jax.jit(lambda v, a, b: pallas.codes(v, a, b, fmt))
  t, _ = prof.kernel_times(fn, x, rows, cols, calls=10)
  ref = fn(x, rows, cols)
  say(case="codes_div_full", ms=prof.per_call_ms(t, 10, "mor_dual_codes"))
  tile.error_terms = rcp_error_terms
  fresh()
  fn = jax.jit(lambda v, a, b: pallas.codes(v, a, b, fmt))
  t, _ = prof.kernel_times(fn, x, rows, cols, calls=10)
  out = fn(x, rows, cols)
  rel = lambda u, v: float(jnp.max(jnp.abs(u - v) / jnp.maximum(jnp.abs(v), 1e-30)))  # noqa: E731
  say(case="codes_rcp_approx", ms=prof.per_call_ms(t, 10, "mor_dual_codes"),
      row_err=float(jnp.sum(out[2])), col_err=float(jnp.sum(out[3])),
      row_rel=rel(out[2], ref[2]), col_rel=rel(out[3], ref[3]),
      codes_equal=bool(jnp.all(jax.lax.bitcast_convert_type(out[0], jnp.uint8) ==
                               jax.lax.bitcast_convert_type(ref[0], jnp.uint8))))
  tile.error_terms = ORIGINAL_ERRORS
  fresh()


def fresh():
  """Drop the cached per-shard functions and traces: else every variant
  runs the first one's kernel."""
  sharding.per_shard.cache_clear()
  jax.clear_caches()


def main():
  dims = [int(a) for a in sys.argv[1:] if a.isdigit()]
  r, c = dims or (16384, 8192)
  x = jax.random.normal(jax.random.key(0), (r, c), jnp.bfloat16)
  fmt = mor_jax.E4M3
  pallas = dual.PallasDual(dual.DualConfig(), False)
  stats = pallas.stats(x)
  rows, cols = (_scaling.scales_from_amax(st.amax, fmt, "gam", None)[:, 0]
                for st in stats)
  say = lambda **kw: print(json.dumps(kw), flush=True)  # noqa: E731
  if "rcp" in sys.argv:
    return rcp_probe(x, rows, cols, pallas, fmt, say)
  copy = jax.jit(lambda v: v + 1)
  t, _ = prof.kernel_times(copy, x, calls=10)
  say(case="xla_copy_same_bytes_floor", ms=prof.per_call_ms(t, 10))
  for drop in (None, "transposed_store", "errors", "column"):
    kernel = (ORIGINAL if drop is None else
              functools.partial(codes_variant, drop=drop))
    dual._codes_kernel = kernel
    fresh()
    fn = jax.jit(lambda v, a, b, k=kernel: pallas.codes(v, a, b, fmt))
    t, _ = prof.kernel_times(fn, x, rows, cols, calls=10)
    out = fn(x, rows, cols)  # a fingerprint: each variant ran its own kernel
    say(case=f"codes_{drop or 'current'}",
        ms=prof.per_call_ms(t, 10, "mor_dual_codes"),
        row_err=float(jnp.sum(out[2])), col_err=float(jnp.sum(out[3])),
        codes_t_sum=int(jnp.sum(jax.lax.bitcast_convert_type(
            out[1], jnp.uint8).astype(jnp.int32))))
  dual._codes_kernel = ORIGINAL
  for drop in (None, "rows", "all_but_amax"):
    kernel = (ORIGINAL_STATS if drop is None else
              functools.partial(stats_variant, drop=drop))
    dual._stats_kernel = kernel
    fresh()
    fn = jax.jit(lambda v, k=kernel: pallas.stats(v))
    t, _ = prof.kernel_times(fn, x, calls=10)
    out = fn(x)
    say(case=f"stats_{drop or 'current'}",
        ms=prof.per_call_ms(t, 10, "mor_dual_stats"),
        row_count=int(jnp.sum(out[0].count)),
        col_count=int(jnp.sum(out[1].count)))
  dual._stats_kernel = ORIGINAL_STATS
  fn = jax.jit(lambda v: jnp.max(jnp.abs(v.astype(jnp.float32)), axis=1))
  t, _ = prof.kernel_times(fn, x, calls=10)
  say(case="xla_row_amax_read_floor", ms=prof.per_call_ms(t, 10))


if __name__ == "__main__":
  main()
