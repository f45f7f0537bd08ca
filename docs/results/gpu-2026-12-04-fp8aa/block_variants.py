"""Twenty-eighth session: two questions about the block GEMM's loops, asked
of variants of kernels/block_gemm.py built from its source by text
replacement, each its own module (its own kernel), timed by kernel
(benchmarks/profile.py's ``kernel_times``) at (16384, 8192, 8192), all
blocks E4M3, against cuBLAS BF16 and kernels/gemm.py's FP8 loop on 128 x 256
and 128 x 128 tiles, in one process:

  v0  the kernel as it is;
  t1  the two compute warpgroups take turns at the tensor cores: warpgroup 1
      issues step s's wgmma after warpgroup 0 has issued it, warpgroup 0
      step s + 1's after warpgroup 1's step s (mbarriers), so that one
      promotes while the other's wgmma runs (today both wait, then both
      promote, while the tensor pipe idles);
  t2  t1, each turn passed on after the wgmma has finished;
  f2  each tile's FP8 steps in two pipelines (the first half's sum parked in
      shared memory) instead of one: the cost of starting and stopping a
      pipeline, which a tile with BF16 steps pays once more than one
      without;
  w128 the BF16 loop on K tiles of 128, one step per K block (64 today);
  v0n, w128n  v0 and w128 with ``wide=None``: the block loops also where
      every pair is BF16;
  dq1, dq2  the BF16 loop dequantizes W's codes in shared memory instead of
      reading the values written before the launch (``dequantize_b``), one
      or two stages per warpgroup; dq1n, dq2n with ``wide=None``.

Each is compared with v0's output (all should match it bit for bit).

Run from the repository root: PYTHONPATH=$PWD:$PWD/benchmarks python3 <this>
[v0,t1,...] [patterns, e.g. r0,r0.1,c0.1: see ``blocks``] [skip] (v0 first:
the others are compared with its output; a third argument skips gemm.py's
kernels).
"""

import dataclasses
import importlib.util
import json
import pathlib
import sys
import tempfile

import jax
import jax.numpy as jnp

sys.path.insert(0, "benchmarks")
import gemm as bench  # noqa: E402
import profile as prof  # noqa: E402
from mor_jax import kernels  # noqa: E402

SRC = pathlib.Path("kernels/block_gemm.py").read_text()

def turns(strong: bool):
  """The two compute warpgroups take turns at the tensor cores: warpgroup 1
  issues step s's wgmma after warpgroup 0 has issued it (strong: after it
  has finished), warpgroup 0 step s + 1's after warpgroup 1's step s, so
  that one promotes while the other's wgmma runs."""
  after_wait = ("        return part_ref[...]  # waits for the wgmma\n")
  signal = "        plgpu.barrier_arrive(turn.at[1 - wg])\n"
  return [(
      "      order_barrier=plgpu.Barrier(num_barriers=1),\n",
      "      order_barrier=plgpu.Barrier(num_barriers=1),\n"
      "      turn=plgpu.Barrier(num_barriers=2),\n"), (
      "                 b_ref, out_ref, out_smem, sum_smem, order_smem, order_barrier,\n",
      "                 b_ref, out_ref, out_smem, sum_smem, order_smem, order_barrier,\n"
      "                 turn,\n"), (
      "  my_rows = pl.ds(wg * wr, wr)  # this warpgroup's rows of the tile\n",
      "  my_rows = pl.ds(wg * wr, wr)  # this warpgroup's rows of the tile\n"
      "\n"
      "  @pl.when(wg == 1)  # warpgroup 0 goes first\n"
      "  def _():\n"
      "    plgpu.barrier_arrive(turn.at[0])\n"), (
      "        plgpu.wgmma(part_ref, a8.at[my_rows], b8.T)\n" + after_wait,
      "        plgpu.barrier_wait(turn.at[wg])\n"
      "        plgpu.wgmma(part_ref, a8.at[my_rows], b8.T)\n" +
      ("        v = part_ref[...]\n" + signal + "        return v\n"
       if strong else signal + after_wait))]


def split():
  """Each tile's FP8 steps in two pipelines of half the steps each."""
  return [(
      "  def fp8_specs():\n",
      "  def fp8_specs(off=0):\n"), (
      "    kk = lambda s: order_smem[s]  # noqa: E731\n",
      "    kk = lambda s: order_smem[off + s]  # noqa: E731\n"), (
      "    pipeline(fp8_step, fp8_context, fp8_specs(), n8, stages[0])(\n"
      "        a8_ref.at[rows, :], b8_ref.at[cols, :], ra_ref.at[:, rows],\n"
      "        rb_ref.at[:, cols])\n",
      "    h = n8 // 2\n"
      "\n"
      "    def first_context(run_pipeline):\n"
      "      sum_smem[wg] = run_pipeline(jnp.zeros((wr, BLOCK), jnp.float32))\n"
      "\n"
      "    def second_context(run_pipeline):\n"
      "      acc = run_pipeline(gemm.load_with_layout(sum_smem.at[wg],\n"
      "                                               plgpu.Layout.WGMMA))\n"
      "\n"
      "      @pl.when(n8 == kb)\n"
      "      def _():\n"
      "        write_out(acc)\n"
      "\n"
      "      @pl.when(n8 < kb)\n"
      "      def _():\n"
      "        sum_smem[wg] = acc\n"
      "\n"
      "    gm = (a8_ref.at[rows, :], b8_ref.at[cols, :], ra_ref.at[:, rows],\n"
      "          rb_ref.at[:, cols])\n"
      "    pipeline(fp8_step, first_context, fp8_specs(), h, stages[0])(*gm)\n"
      "    pipeline(fp8_step, second_context, fp8_specs(h), n8 - h,\n"
      "             stages[0])(*gm)\n")]


# The BF16 loop on K tiles of 128 (one step per K block, half as many
# steps, each twice the bytes) instead of 64.
W128 = [("_WIDE_K = 64\n", "_WIDE_K = 128\n")]

def dequantize_b(bufs: int):
  """The BF16 loop reads W's codes and dequantizes them in shared memory
  (as gemm.py's dequantizing loops) instead of the values written before
  the launch: half the bytes from L2, none written. Only for a W whose
  blocks are all in its codes' format (the bench's), not transposed. Each
  compute warpgroup dequantizes the step's whole B tile into its own stage
  (``bufs`` per warpgroup: with 2, the wgmma of the step before may still
  read the other while this one is written)."""
  wait = "1" if bufs == 2 else "0"
  return [(
      # The loop's shared memory: its stages beside the dequantized tiles.
      "  fp8, wide = 2 * BLOCK * BLOCK + 2 * BLOCK * 4, 2 * BLOCK * _WIDE_K * 2\n"
      "  return (max(1, min(cfg.stages, room // fp8)),\n"
      "          max(2, min(cfg.wide_stages, room // wide)))\n",
      "  fp8 = 2 * BLOCK * BLOCK + 2 * BLOCK * 4\n"
      "  wide = BLOCK * _WIDE_K * 3 + BLOCK * 4\n"
      f"  stage = _COMPUTE_WGS * {bufs} * BLOCK * _WIDE_K * 2\n"
      "  return (max(1, min(cfg.stages, room // fp8)),\n"
      "          max(2, min(cfg.wide_stages, (room - stage) // wide)))\n"), (
      "    return [spec((_WIDE_K, BLOCK), lambda s: (kk(s), 0), ref.dtype, 1) if t\n"
      "            else spec((BLOCK, _WIDE_K), lambda s: (0, kk(s)), ref.dtype, 1)\n"
      "            for ref, t in ((a_ref, transposed[0]), (b_ref, transposed[1]))]\n",
      "    assert not transposed[1]\n"
      "    kblk = lambda s: order_smem[n8 + s // halves]  # noqa: E731\n"
      "    return [spec((_WIDE_K, BLOCK), lambda s: (kk(s), 0), a_ref.dtype, 1)\n"
      "            if transposed[0] else\n"
      "            spec((BLOCK, _WIDE_K), lambda s: (0, kk(s)), a_ref.dtype, 1),\n"
      "            spec((BLOCK, _WIDE_K), lambda s: (0, kk(s)), b8_ref.dtype, 1),\n"
      "            spec((1, BLOCK), lambda s: (kblk(s), 0), None, 1)]\n"), (
      "    def wide_step(_, a, b, acc_ref):\n"
      "      # wgmma takes A as [64 rows, tk] and B as [tk, 128]; 16-bit tiles\n"
      "      # stored either way.\n"
      "      a = a.at[:, my_rows].T if transposed[0] else a.at[my_rows]\n"
      "      plgpu.wgmma(acc_ref, a, b if transposed[1] else b.T)\n"
      "      plgpu.wgmma_wait(1)\n"
      "      return acc_ref\n",
      "    def wide_step(idx, a, b8, rbt, acc_ref, stage):\n"
      "      a = a.at[:, my_rows].T if transposed[0] else a.at[my_rows]\n"
      f"      mine = stage.at[wg, lax.rem(idx[0], {bufs})]\n"
      "      gemm._dequantize(b8, rbt.at[0], mine)\n"
      "      plgpu.wgmma(acc_ref, a, mine.T)\n"
      f"      plgpu.wgmma_wait({wait})\n"
      "      return acc_ref\n"), (
      "      pipeline(wide_step, wide_context, wide_specs(n8),\n"
      "               (BLOCK // _WIDE_K) * (kb - n8), stages[1])(a_tiles, b_tiles)\n",
      "      @functools.partial(\n"
      "          pl.run_scoped, stage=plgpu.SMEM(\n"
      f"              (_COMPUTE_WGS, {bufs}, BLOCK, _WIDE_K), a_ref.dtype,\n"
      "              transforms=gemm.smem_transforms(_WIDE_K, a_ref.dtype)),\n"
      "          collective_axes=\"wg\")\n"
      "      def _(stage):\n"
      "        pipeline(lambda *r: wide_step(*r[:-1], r[-1], stage), wide_context,\n"
      "                 wide_specs(n8), (BLOCK // _WIDE_K) * (kb - n8),\n"
      "                 stages[1])(a_tiles, b8_ref.at[cols, :], rb_ref.at[:, cols])\n")]


VARIANTS = {"v0": [], "t1": turns(False), "t2": turns(True), "f2": split(),
            "w128": W128, "v0n": [], "w128n": W128,
            "dq1": dequantize_b(1), "dq2": dequantize_b(2),
            "dq1n": dequantize_b(1), "dq2n": dequantize_b(2)}
# n: the block loops also where every pair is BF16 (no 16-bit loop).
CONFIGS = {n: dict(wide=None) for n in ("v0n", "w128n", "dq1n", "dq2n")}


def module(name, edits):
  text = SRC
  for old, new in edits:
    assert text.count(old) == 1, (name, old)
    text = text.replace(old, new)
  path = pathlib.Path(tempfile.mkdtemp()) / f"block_gemm_{name}.py"
  path.write_text(text)
  spec = importlib.util.spec_from_file_location(f"block_gemm_{name}", path)
  mod = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = mod  # dataclasses look their module up
  spec.loader.exec_module(mod)
  return mod


def main():
  m, k, n = 16384, 8192, 8192
  calls = 5
  a = jax.random.normal(jax.random.key(0), (m, k), jnp.bfloat16)
  b = jax.random.normal(jax.random.key(1), (n, k), jnp.bfloat16)
  say = lambda **kw: print(json.dumps(kw), flush=True)  # noqa: E731
  bf16 = jax.jit(lambda: jax.lax.dot_general(
      a, b, bench.TN, preferred_element_type=jnp.bfloat16))
  t_bf16 = prof.per_call_ms(prof.kernel_times(bf16, calls=calls)[0], calls)
  say(case="cublas_bf16", ms=t_bf16)
  a8, ra = jax.jit(bench._codes)(a)
  b8, rb = jax.jit(bench._codes)(b)
  cfgs = (("gemm_128x256", kernels.GemmConfig()),
          ("gemm_128x128", kernels.GemmConfig(tile_n=64, cluster=None)))
  for name, cfg in cfgs if len(sys.argv) < 4 else ():  # a third arg: skip
    fn = jax.jit(lambda cfg=cfg: kernels.gemm.gemm(
        *bench._operands(a, a8, ra, b, b8, rb, True),
        out_dtype=jnp.bfloat16, config=cfg))
    t = prof.per_call_ms(prof.kernel_times(fn, calls=calls)[0], calls,
                         "anonymous_mosaic_gpu_kernel")
    say(case=name, ms=t, vs_bf16=round(t / t_bf16, 3))
  wb = jax.jit(bench._blocks, static_argnums=(1, 2))(b, 0.0, 2)
  names = sys.argv[1].split(",") if len(sys.argv) > 1 else list(VARIANTS)
  mods = {name: module(name, VARIANTS[name]) for name in names}
  for pattern in (sys.argv[2] if len(sys.argv) > 2 else "r0").split(","):
    wa = blocks(a, pattern)
    ref = None
    for name in names:
      ref = run(name, mods[name], wa, wb, t_bf16, pattern, ref, calls, say)


def blocks(a, pattern):
  """X's blocks for a pattern: "r0.1", a random 10% BF16 (as the bench);
  "c0.1", the same 10% of K blocks BF16 in every 128-row block, so that
  every tile takes its K steps in the same order."""
  share = float(pattern[1:])
  wa = jax.jit(bench._blocks, static_argnums=(1, 2))(a, share, 3)
  if pattern[0] == "c":
    kb = wa.rep.shape[1]  # exactly the share of K blocks, at random
    cols = jax.random.permutation(jax.random.key(4), kb) < round(share * kb)
    wa = dataclasses.replace(wa, rep=jnp.broadcast_to(
        jnp.where(cols, kernels.block_gemm.REP_BF16,
                  kernels.block_gemm.REP_E4M3).astype(wa.rep.dtype), wa.rep.shape))
  return wa


def run(name, mod, wa, wb, t_bf16, pattern, ref, calls, say):
  fn = jax.jit(lambda x, y, mod=mod: mod._local_block_gemm(
      x, y, out_dtype=jnp.bfloat16,
      config=mod.BlockGemmConfig(**CONFIGS.get(name, {}))))
  t = prof.per_call_ms(prof.kernel_times(fn, wa, wb, calls=calls)[0],
                       calls, "anonymous_mosaic_gpu_kernel")
  y = fn(wa, wb).astype(jnp.float32)
  ref = y if ref is None else ref
  diff = float(jnp.linalg.norm(y - ref) / jnp.linalg.norm(ref))
  say(case=f"block_{name}", pattern=pattern, ms=t,
      vs_bf16=round(t / t_bf16, 3), rel_to_v0=diff)
  return ref


if __name__ == "__main__":
  main()
