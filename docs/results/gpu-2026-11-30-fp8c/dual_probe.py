"""Where the dual codes pass spends its time: variants leaving one stage out."""
import functools, json, sys
import jax, jax.numpy as jnp
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton
sys.path.insert(0, "benchmarks")
from profile import kernel_times, per_call_ms
import mor_jax
from mor_jax import kernels
from mor_jax.kernels import tile
from mor_jax.kernels.dual import PassTiling, _steps, _grid, _partials_spec, _partials_shape

def kernel(x_ref, rs_ref, cs_ref, codes_ref, codes_t_ref, row_err_ref, col_err_ref, *, shape, cfg, fmt, mode):
  col_scale = cs_ref[...][None, :]
  def step(rows, mask, col_err):
    x, bits, _, counted = tile.load(x_ref.at[rows, :], mask)
    zero = tile.as_float(bits & tile.SIGN_BIT)
    inv_x = 1.0 / jnp.abs(x)  # shared by both orientations
    errs = []
    outs = [(rs_ref[rows][:, None], codes_ref.at[rows, :], False)]
    if mode != "rows_only":
      outs.append((col_scale, codes_t_ref.at[:, rows], True))
    for scale, out_ref, transposed in outs:
      y = jnp.where(counted, x * scale, zero)
      q8 = y.astype(fmt.dtype)
      if mode == "no_errors":
        errs.append(jnp.zeros_like(y))
      elif mode == "cheap_errors":
        errs.append(jnp.abs(y - q8.astype(jnp.float32)))
      elif mode == "rcp_errors":
        q = q8.astype(jnp.float32)
        t = jnp.where(q == 0, 1.0, jnp.abs(y - q) * (inv_x * (1.0 / scale)))
        errs.append(jnp.where(counted, t, 0.0))
      else:
        errs.append(tile.error_terms(y, q8.astype(jnp.float32), counted))
      codes = jax.lax.bitcast_convert_type(q8, jnp.uint8)
      if transposed:
        if mode == "untransposed_store":
          codes_ref[rows, :] = codes  # write somewhere of the right shape
        else:
          tile.store(out_ref, codes.T, None)
      else:
        tile.store(out_ref, codes, None)
    row_err_ref[rows] = jnp.sum(errs[0], axis=1)
    return col_err + (errs[1] if len(errs) > 1 else errs[0])
  col_err = _steps(shape, cfg, step, jnp.zeros((cfg.tile_rows, cfg.tile_cols), jnp.float32))
  col_err_ref[...] = jnp.sum(col_err, axis=0)

def run(x, rs, cs, cfg, mode):
  r, c = x.shape
  tr, tc = cfg.band, cfg.tile_cols
  return pl.pallas_call(
      functools.partial(kernel, shape=x.shape, cfg=cfg, fmt=mor_jax.E4M3, mode=mode),
      grid=_grid(x.shape, cfg),
      in_specs=[pl.BlockSpec((tr, tc), lambda i, j: (i, j)), pl.BlockSpec((tr,), lambda i, j: (i,)), pl.BlockSpec((tc,), lambda i, j: (j,))],
      out_specs=[pl.BlockSpec((tr, tc), lambda i, j: (i, j)), pl.BlockSpec((tc, tr), lambda i, j: (j, i)), _partials_spec(1, tr), _partials_spec(0, tc)],
      out_shape=[jax.ShapeDtypeStruct((r, c), jnp.uint8), jax.ShapeDtypeStruct((c, r), jnp.uint8), _partials_shape(x.shape, cfg, 1, jnp.float32), _partials_shape(x.shape, cfg, 0, jnp.float32)],
      compiler_params=pltriton.CompilerParams(num_warps=cfg.num_warps, num_stages=cfg.num_stages),
      interpret=jax.default_backend() != "gpu", name=f"probe_{mode}")(x, rs, cs)

shape = tuple(int(v) for v in sys.argv[1].split("x")) if len(sys.argv) > 1 else (16384, 8192)
x = jax.random.normal(jax.random.key(0), shape, jnp.bfloat16)
rs = jnp.full((shape[0],), 100.0, jnp.float32); cs = jnp.full((shape[1],), 90.0, jnp.float32)
for cfg in (kernels.DualConfig().codes, PassTiling(tile_rows=16, tile_cols=128, row_steps=16, num_warps=4, num_stages=2), PassTiling(tile_rows=32, tile_cols=64, row_steps=8, num_warps=4, num_stages=2)):
  for mode in ("full", "untransposed_store", "no_errors", "cheap_errors", "rcp_errors", "rows_only"):
    fn = jax.jit(functools.partial(run, cfg=cfg, mode=mode))
    got = kernel_times(fn, x, rs, cs, calls=5)
    if got is None:
      fn(x, rs, cs); print("ok (cpu)", mode); continue
    print(json.dumps(dict(probe=mode, tiling=[cfg.tile_rows, cfg.tile_cols, cfg.row_steps, cfg.num_warps], ms=per_call_ms(got[0], 5, "probe_"))), flush=True)
