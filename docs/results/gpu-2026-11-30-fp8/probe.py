"""Feasibility probe (not product code): GEMM candidates for MoR's FP8 execution on the H200."""
import functools, json, statistics, sys, time, traceback
import jax, jax.numpy as jnp, numpy as np
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

DN = (((1,), (1,)), ((), ()))

def timed(fn, *args, iters=10, rounds=5):
  jax.block_until_ready(fn(*args))
  rs = []
  for _ in range(rounds):
    t0 = time.perf_counter()
    for _ in range(iters):
      out = fn(*args)
    jax.block_until_ready(out)
    rs.append((time.perf_counter() - t0) / iters)
  return statistics.median(rs)

def say(**kw):
  print(json.dumps(kw), flush=True)

# ---------------------------------------------------------------- Triton kernel
def _tile_of(pid, grid_m, grid_n, group_m):
  width = group_m * grid_n
  group = pid // width
  first = group * group_m
  size = jnp.minimum(grid_m - first, group_m)
  return first + (pid % width) % size, (pid % width) // size

def tri_gemm(mode, a8, b8, a, b, ra, rb, flag, *, bm, bn, bk8, bk16, gm, warps, stages, out_dtype=jnp.bfloat16):
  m, k = a.shape; n = b.shape[0]
  gmn = (m // bm, n // bn)
  tile = functools.partial(_tile_of, grid_m=gmn[0], grid_n=gmn[1], group_m=gm)
  def kern(flag_ref, a8_ref, b8_ref, a_ref, b_ref, ra_ref, rb_ref, o_ref):
    def loop(x_ref, y_ref, bk):
      def body(t, acc):
        ks = pl.ds(pl.multiple_of(t * bk, bk), bk)
        return acc + jax.lax.dot_general(x_ref[:, ks], y_ref[:, ks], DN, preferred_element_type=jnp.float32)
      return jax.lax.fori_loop(0, k // bk, body, jnp.zeros((bm, bn), jnp.float32))
    fp8 = lambda: loop(a8_ref, b8_ref, bk8) * ra_ref[...][:, None] * rb_ref[...][None, :]
    wide = lambda: loop(a_ref, b_ref, bk16)
    if mode == "fp8":
      acc = fp8()
    elif mode == "wide":
      acc = wide()
    else:
      acc = jax.lax.cond(flag_ref[0] != 0, fp8, wide)
    o_ref[...] = acc.astype(o_ref.dtype)
  row = pl.BlockSpec((bm, k), lambda p: (tile(p)[0], 0))
  col = pl.BlockSpec((bn, k), lambda p: (tile(p)[1], 0))
  return pl.pallas_call(kern, grid=(gmn[0] * gmn[1],),
      in_specs=[pl.BlockSpec((1,), lambda p: (0,)), row, col, row, col,
                pl.BlockSpec((bm,), lambda p: (tile(p)[0],)), pl.BlockSpec((bn,), lambda p: (tile(p)[1],))],
      out_specs=pl.BlockSpec((bm, bn), tile),
      out_shape=jax.ShapeDtypeStruct((m, n), out_dtype),
      compiler_params=pltriton.CompilerParams(num_warps=warps, num_stages=stages),
      name=f"probe_{mode}")(flag, a8, b8, a, b, ra, rb)

# ---------------------------------------------------------------- Mosaic GPU kernel
def mgpu_gemm(a, b, *, tile_m=128, tile_n=128, tile_k=128, steps=4, width=8, out_dtype=jnp.bfloat16):
  import jax.experimental.pallas.mosaic_gpu as plgpu
  from jax import lax
  m, k = a.shape; n = b.shape[0]
  bits = jnp.dtype(a.dtype).itemsize * 8
  swz = plgpu.find_swizzle(tile_k * bits)
  tr = (plgpu.TilingTransform((8, swz * 8 // bits)), plgpu.SwizzleTransform(swz))
  obits = jnp.dtype(out_dtype).itemsize * 8
  epi_m, epi_n = 64, 64
  oswz = plgpu.find_swizzle(epi_n * obits)
  otr = (plgpu.TilingTransform((8, oswz * 8 // obits)), plgpu.SwizzleTransform(oswz))
  cta_m, cta_n = tile_m, 2 * tile_n
  mi, ni, ki = m // cta_m, n // cta_n, k // tile_k
  def kernel(a_gmem, b_gmem, out_gmem, out_smem):
    def pipe(body, ctx):
      return plgpu.emit_pipeline_warp_specialized(
          body, grid=(ki,), memory_registers=40,
          in_specs=[plgpu.BlockSpec((cta_m, tile_k), lambda kk: (0, kk), transforms=tr, memory_space=plgpu.SMEM),
                    plgpu.BlockSpec((cta_n, tile_k), lambda kk: (0, kk), transforms=tr, memory_space=plgpu.SMEM)],
          wg_axis="wg", num_compute_wgs=2, max_concurrent_steps=steps, compute_context=ctx)
    ignore = lambda *_, **__: None
    @functools.partial(pl.run_scoped, allocs=pipe(ignore, ignore).get_allocations(a_gmem, b_gmem), collective_axes="wg")
    def _scope(allocs):
      wg = lax.axis_index("wg")
      @plgpu.nd_loop((mi * ni,), collective_axes="cluster_grid")
      def _loop(info):
        (lin,) = info.index
        im, jn = plgpu.planar_snake(lin, (mi, ni), 1, width)
        ms, ns = pl.ds(im * cta_m, cta_m), pl.ds(jn * cta_n, cta_n)
        wns = pl.ds(wg * tile_n, tile_n)
        def ctx(run):
          @functools.partial(pl.run_scoped, acc_ref=plgpu.ACC((tile_m, tile_n), jnp.float32))
          def _acc(acc_ref):
            run(acc_ref)
            acc = acc_ref[...].astype(out_dtype)
            plgpu.wait_smem_to_gmem(0, wait_read_only=True)
            for e_m in range(tile_m // epi_m):
              for e_n in range(tile_n // epi_n):
                sm, sn = slice(e_m * epi_m, (e_m + 1) * epi_m), slice(e_n * epi_n, (e_n + 1) * epi_n)
                slot = (e_m * (tile_n // epi_n) + e_n) % 2
                plgpu.wait_smem_to_gmem(1, wait_read_only=True)
                out_smem[wg, slot] = acc[sm, sn]
                plgpu.commit_smem()
                plgpu.copy_smem_to_gmem(out_smem.at[wg, slot], out_gmem.at[ms, ns].at[:, wns].at[sm, sn])
        def body(_, a_smem, b_smem, acc_ref):
          plgpu.wgmma(acc_ref, a_smem, plgpu.transpose_ref(b_smem.at[wns], (1, 0)))
          plgpu.wgmma_wait(0)
          return acc_ref
        pipe(body, ctx)(a_gmem.at[ms, :], b_gmem.at[ns, :], allocations=allocs)
    plgpu.wait_smem_to_gmem(0, wait_read_only=True)
  sms = getattr(jax.devices()[0], "core_count", 132)
  f = plgpu.kernel(kernel, out_type=jax.ShapeDtypeStruct((m, n), out_dtype), grid=(sms,), grid_names=("cluster_grid",),
                   cluster=(1,), cluster_names=("cluster",), num_threads=3, thread_name="wg",
                   compiler_params=plgpu.CompilerParams(lowering_semantics=plgpu.LoweringSemantics.Warpgroup),
                   scratch_types=dict(out_smem=plgpu.SMEM((2, 2, epi_m, epi_n), out_dtype, transforms=otr)))
  return f(a, b)

# ---------------------------------------------------------------- main
def main():
  dev = jax.devices()[0]
  say(device=dev.device_kind, jax=jax.__version__, sms=dev.core_count)
  M, K, N = 16384, 8192, 8192
  flop = 2 * M * N * K
  kx, kw = jax.random.split(jax.random.key(0))
  x = jax.random.normal(kx, (M, K), jnp.bfloat16)
  w = jax.random.normal(kw, (N, K), jnp.bfloat16) * 0.02
  sx = (448 / jnp.max(jnp.abs(x.astype(jnp.float32)), axis=1))
  sw = (448 / jnp.max(jnp.abs(w.astype(jnp.float32)), axis=1))
  x8 = (x * sx[:, None]).astype(jnp.float8_e4m3fn); w8 = (w * sw[:, None]).astype(jnp.float8_e4m3fn)
  rx, rw = 1 / sx, 1 / sw
  # Exact products (FP8 -> BF16 is exact), float32 accumulation: the accurate reference.
  ref = jax.jit(lambda: jax.lax.dot_general(x8.astype(jnp.bfloat16), w8.astype(jnp.bfloat16), DN, preferred_element_type=jnp.float32) * rx[:, None] * rw[None, :])()
  ref16 = jax.jit(lambda: jax.lax.dot_general(x, w, DN, preferred_element_type=jnp.float32))()
  def err(y, r):
    y = y.astype(jnp.float32); return float(jnp.linalg.norm(y - r) / jnp.linalg.norm(r))
  res = {}
  def run(name, fn, *args, r=None):
    try:
      y = fn(*args); t = timed(fn, *args)
      res[name] = t
      say(case=name, ms=round(t * 1e3, 3), tflops=round(flop / t / 1e12, 1), err=None if r is None else err(y, r))
    except Exception as e:
      say(case=name, error=f"{type(e).__name__}: {str(e)[:400]}")
  # cuBLAS through XLA
  run("xla_bf16_TN", jax.jit(lambda a, b: jax.lax.dot_general(a, b, DN, preferred_element_type=jnp.bfloat16)), x, w, r=ref16)
  wt = jnp.asarray(w.T)
  run("xla_bf16_NN", jax.jit(lambda a, b: a @ b), x, wt, r=ref16)
  for prec in ("DEFAULT", "HIGHEST"):
    p = getattr(jax.lax.Precision, prec)
    run(f"xla_fp8_f32out_scaled_{prec}", jax.jit(lambda a, b, s1, s2, p=p: (jax.lax.dot_general(a, b, DN, precision=p, preferred_element_type=jnp.float32) * s1[:, None] * s2[None, :]).astype(jnp.bfloat16)), x8, w8, rx, rw, r=ref)
    run(f"xla_fp8_bf16out_{prec}", jax.jit(lambda a, b, p=p: jax.lax.dot_general(a, b, DN, precision=p, preferred_element_type=jnp.bfloat16)), x8, w8)
  # Triton candidates
  one, zero = jnp.ones((1,), jnp.int32), jnp.zeros((1,), jnp.int32)
  cfgs = [dict(bm=128, bn=256, bk8=128, bk16=64, gm=8, warps=8, stages=3),
          dict(bm=128, bn=256, bk8=128, bk16=64, gm=8, warps=8, stages=4),
          dict(bm=128, bn=128, bk8=128, bk16=64, gm=8, warps=4, stages=4),
          dict(bm=256, bn=128, bk8=128, bk16=64, gm=8, warps=8, stages=3),
          dict(bm=128, bn=256, bk8=64, bk16=32, gm=8, warps=8, stages=4),
          dict(bm=128, bn=128, bk8=128, bk16=64, gm=8, warps=8, stages=3)]
  for i, c in enumerate(cfgs):
    for mode, flag in (("fp8", one), ("wide", zero), ("select", one), ("select", zero)):
      f = jax.jit(functools.partial(tri_gemm, mode, **c))
      run(f"triton_c{i}_{mode}_flag{int(flag[0])}", f, x8, w8, x, w, rx, rw, flag, r=ref if int(flag[0]) else ref16)
  # Mosaic GPU candidates
  for name, a, b, r in (("mgpu_fp8", x8, w8, None), ("mgpu_bf16", x, w, ref16)):
    for tk, steps, tm, tn in ((128, 4, 128, 128), (64, 4, 128, 128), (128, 3, 128, 128)):
      if name == "mgpu_bf16" and tk == 128:
        tk = 64
      fn = jax.jit(functools.partial(mgpu_gemm, tile_m=tm, tile_n=tn, tile_k=tk, steps=steps))
      rr = r
      if name == "mgpu_fp8":
        rr = ref / (rx[:, None] * rw[None, :])
      run(f"{name}_tk{tk}_s{steps}_{tm}x{tn}", fn, a, b, r=rr)
  try:
    from jax.experimental.pallas.ops.gpu import hopper_matmul_mgpu as hm
    cfg = hm.TuningConfig(tile_m=128, tile_n=128, tile_k=64, max_concurrent_steps=4, grid_minor_dim=hm.MatmulDimension.N, grid_tile_width=8, wg_dimension=hm.MatmulDimension.N)
    run("jax_hopper_matmul_bf16_NN", jax.jit(lambda a, b: hm.matmul(a, b, None, cfg)), x, wt, r=ref16)
  except Exception as e:
    say(case="jax_hopper_matmul", error=str(e)[:300])
  # 72-GEMM chain at 4096^3: the cost of the choice
  m = 4096
  h0 = jax.random.normal(kx, (m, m), jnp.bfloat16); wc = jax.random.normal(kw, (m, m), jnp.bfloat16) * 0.02
  wc8 = wc.astype(jnp.float8_e4m3fn); s1 = jnp.ones((m,), jnp.float32)
  best = min(((k_, v) for k_, v in res.items() if k_.startswith("triton_") and "select_flag1" in k_ and v), key=lambda kv: kv[1], default=(None, None))[0]
  say(best_triton_select=best)
  ci = int(best.split("_")[1][1:]) if best else 0
  c = dict(cfgs[ci]); c["bn"] = min(c["bn"], 256)
  def chain(kind, preds, h):
    for i in range(72):
      if kind == "xla_fp8":
        y = (jax.lax.dot_general(h.astype(jnp.float8_e4m3fn), wc8, DN, preferred_element_type=jnp.float32) * s1[:, None]).astype(jnp.bfloat16)
      elif kind == "xla_bf16":
        y = jax.lax.dot_general(h, wc, DN, preferred_element_type=jnp.bfloat16)
      elif kind == "xla_cond":
        y = jax.lax.cond(preds[i], lambda h: (jax.lax.dot_general(h.astype(jnp.float8_e4m3fn), wc8, DN, preferred_element_type=jnp.float32) * s1[:, None]).astype(jnp.bfloat16),
                         lambda h: jax.lax.dot_general(h, wc, DN, preferred_element_type=jnp.bfloat16), h)
      else:
        mode = kind.split("_")[1]
        y = tri_gemm(mode, h.astype(jnp.float8_e4m3fn), wc8, h, wc, s1, s1, preds[i].astype(jnp.int32).reshape(1), **c)
      h = y * 1e-2
    return h
  for kind in ("xla_bf16", "xla_fp8", "xla_cond", "tri_fp8", "tri_select"):
    for p in ((True, False) if kind in ("xla_cond", "tri_select") else (True,)):
      preds = jnp.full((72,), p)
      try:
        t = timed(jax.jit(functools.partial(chain, kind)), preds, h0, iters=3, rounds=3)
        say(chain=kind, pred=p, ms=round(t * 1e3, 3))
      except Exception as e:
        say(chain=kind, error=f"{type(e).__name__}: {str(e)[:300]}")

if __name__ == "__main__":
  main()
