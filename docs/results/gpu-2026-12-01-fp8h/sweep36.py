"""Ninth session, call 1: codes-pass A/B (one shared reciprocal), wide-writer
grid sweep on the 72-GEMM chain and on the rejected layer's operands."""
import functools, json, sys, os
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
import jax, jax.numpy as jnp
import mor_jax
from mor_jax import kernels
from mor_jax.kernels import dual as kdual, tile
from gemm import dual_passes, _codes, TN
from profile import kernel_times, per_call_ms
from timing import timed

def say(**r): print(json.dumps(r), flush=True)

OLD = kdual._codes_kernel

def shared_recip_kernel(x_ref, row_scale_ref, col_scale_ref, codes_ref, codes_t_ref,
                        row_err_ref, col_err_ref, *, shape, cfg, fmt):
  col_scale = col_scale_ref[...][None, :]
  col_recip = 1.0 / col_scale

  def step(rows, mask, col_err):
    x, bits, _, counted = tile.load(x_ref.at[rows, :], mask)
    zero = tile.as_float(bits & tile.SIGN_BIT)
    inv_x = 1.0 / jnp.abs(x)
    row_scale = row_scale_ref[rows][:, None]
    errs = []
    for scale, recip, out_ref, transposed in (
        (row_scale, 1.0 / row_scale, codes_ref.at[rows, :], False),
        (col_scale, col_recip, codes_t_ref.at[:, rows], True)):
      y = jnp.where(counted, x * scale, zero)
      q8 = y.astype(fmt.dtype)
      q = q8.astype(jnp.float32)
      term = jnp.where(q == 0, 1.0, jnp.abs(y - q) * inv_x * recip)
      errs.append(jnp.where(counted, term, 0.0))
      codes = jax.lax.bitcast_convert_type(q8, jnp.uint8)
      if transposed:
        tile.store(out_ref, codes.T, None if mask is None else mask.T)
      else:
        tile.store(out_ref, codes, mask)
    row_err_ref[rows] = jnp.sum(errs[0], axis=1)
    return col_err + errs[1]

  col_err = kdual._steps(shape, cfg, step, jnp.zeros((cfg.tile_rows, cfg.tile_cols), jnp.float32))
  col_err_ref[...] = jnp.sum(col_err, axis=0)

def codes_ab(calls=5):
  for m, k in ((16384, 8192), (16384, 4096), (8192, 8192)):
    x = jax.random.normal(jax.random.key(0), (m, k), jnp.bfloat16)
    res = {}
    for name, kern in (("old", OLD), ("shared_recip", shared_recip_kernel), ("old_again", OLD)):
      kdual._codes_kernel = kern
      dual = kdual.PallasDual(kernels.DualConfig(), False)
      fn = jax.jit(functools.partial(dual_passes, dual=dual))
      times, _ = kernel_times(fn, x, calls=calls)
      res[name] = fn(x)
      say(ab="codes", shape=[m, k], kernel=name,
          codes_ms=per_call_ms(times, calls, "mor_dual_codes"),
          stats_ms=per_call_ms(times, calls, "mor_dual_stats"))
    o, n = res["old"], res["shared_recip"]
    say(ab="codes_check", shape=[m, k],
        codes_equal=bool(jnp.array_equal(o[0], n[0])), codes_t_equal=bool(jnp.array_equal(o[1], n[1])),
        row_err_maxrel=float(jnp.max(jnp.abs(o[2] - n[2]) / jnp.abs(o[2]))),
        col_err_maxrel=float(jnp.max(jnp.abs(o[3] - n[3]) / jnp.abs(o[3]))))
  kdual._codes_kernel = OLD

WIDE = [dict(), dict(programs=256), dict(programs=128), dict(programs=128, num_warps=4),
        dict(programs=256, num_warps=4), dict(programs=1024)]

def chain(iters=10):
  m = 4096
  w = jax.random.normal(jax.random.key(1), (m, m), jnp.bfloat16) * 0.02
  w8, rw = jax.jit(_codes)(w)
  ones = jnp.ones((m,), jnp.float32)
  h0 = jax.random.normal(jax.random.key(0), (m, m), jnp.bfloat16)
  gcfg = kernels.GemmConfig()
  def step(kind, wcfg, h, pred):
    h8 = h.astype(jnp.float8_e4m3fn)
    if kind == "xla_fp8":
      return kernels.gemm.fp8_dot(h8, w8, ones, rw, out_dtype=jnp.bfloat16)
    wa, wb = h, w
    if kind == "writers":
      wa, wb = kernels.wide.wide_operands(
          ~pred, kernels.wide.Operand(h, h8, ones, pred, False),
          kernels.wide.Operand(w, w8, rw, pred, False), dtype=jnp.bfloat16,
          cfg=kernels.WideConfig(**wcfg), interpret=False)
    return kernels.gemm.gemm(pred, h8, w8, ones, rw, wa, wb, out_dtype=jnp.bfloat16, config=gcfg)
  def run(kind, wcfg, preds, h):
    return jax.lax.scan(lambda h, p: (step(kind, wcfg, h, p) * 1e-2, None), h, preds)[0]
  cases = [("xla_fp8", {}), ("kernel", {})] + [("writers", c) for c in WIDE] + [("xla_fp8", {}), ("kernel", {})] + [("writers", c) for c in WIDE[:4]]
  for kind, wcfg in cases:
    for p in ((True,) if kind == "xla_fp8" or wcfg else (True, False)):
      fn = jax.jit(functools.partial(run, kind, wcfg))
      t = timed(fn, jnp.full((72,), p), h0, iters=max(1, iters // 3), rounds=5)
      say(bench="chain", case=kind, wide=wcfg, fp8=p, ms=round(t * 1e3, 3))

def wide_alone(calls=5):
  m, k = 16384, 8192
  x = jax.random.normal(jax.random.key(0), (m, k), jnp.bfloat16)
  x8 = x.astype(jnp.float8_e4m3fn); ones = jnp.ones((m,), jnp.float32)
  x8t = x8.T; onesk = jnp.ones((k,), jnp.float32)
  f = jnp.bool_(False)
  for c in WIDE:
    fn = jax.jit(lambda a, c=c: kernels.wide.wide_operands(
        jnp.bool_(True), kernels.wide.Operand(a, x8, ones, f, False),
        kernels.wide.Operand(a, x8t, onesk, f, True), dtype=jnp.bfloat16,
        cfg=kernels.WideConfig(**c), interpret=False))
    times, _ = kernel_times(fn, x, calls=calls)
    say(bench="wide_rejected_both", wide=c, ms=per_call_ms(times, calls, "mor_wide"))

if __name__ == "__main__":
  what = sys.argv[1:] or ["codes", "chain", "wide"]
  say(jax=jax.__version__, device=jax.devices()[0].device_kind)
  if "codes" in what: codes_ab()
  if "wide" in what: wide_alone()
  if "chain" in what: chain()
