"""Twenty-seventh session: where the block GEMM's all-E4M3 FP8 loop spends
its time. Variants of kernels/block_gemm.py's FP8 step, each built from the
source by text replacement into its own module (its own kernel), timed by
kernel (benchmarks/profile.py's ``kernel_times``) at (16384, 8192, 8192),
all blocks E4M3, against cuBLAS BF16 and kernels/gemm.py's FP8 loop on
128 x 256 and 128 x 128 tiles, in one process:

  v0  the kernel as it is;
  v1  no promotion: acc + part (the factors unread);
  v2  no per-step product: every K step's wgmma accumulates in one
      tensor-core accumulator, waited for each step (no zeroing, no read);
  v3  v2 with one wgmma in flight (each slot released a step late);
  v4  the factors loaded before the wgmma is issued;
  v5  v0 on four stages instead of three;
  v6  two K blocks per step, the second's wgmma in flight while the first
      is promoted (two stages: the same shared memory as four);

v0 -> v1 is the promotion's multiply-adds and factor loads, v1 -> v2 the
per-step accumulator (zeroing, reading it out, adding), v2 -> v3 waiting for
each step's wgmma, v3 against gemm.py's 128 x 128 tiles the block loops'
bookkeeping. v1-v3 give wrong outputs (no scales), v4-v6 v0's; each is
compared with v0's output.

Run from the repository root: PYTHONPATH=$PWD:$PWD/benchmarks python3 <this>
[v0,v4,...] (v0 first: the others are compared with its output).
"""

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

NO_PROMOTION = [(
    "      part = pl.run_scoped(mma, plgpu.ACC((wr, BLOCK), jnp.float32))\n",
    "      part = pl.run_scoped(mma, plgpu.ACC((wr, BLOCK), jnp.float32))\n"
    "      return acc + part\n")]


def one_accumulator(delay: int):
  return [(
      "    def fp8_context(run_pipeline):\n"
      "      acc = run_pipeline(jnp.zeros((wr, BLOCK), jnp.float32))\n",
      "    def fp8_context(run_pipeline):\n"
      "      acc = run_scoped_acc(run_pipeline)\n"), (
      "    def fp8_step(_, a8, b8, ra, rb, acc):\n",
      "    def run_scoped_acc(run_pipeline):\n"
      "      def inner(acc_ref):\n"
      "        run_pipeline(acc_ref)\n"
      "        plgpu.wgmma_wait(0)\n"
      "        return acc_ref[...]\n"
      "      return pl.run_scoped(inner, plgpu.ACC((wr, BLOCK), jnp.float32))\n"
      "\n"
      "    def fp8_step(_, a8, b8, ra, rb, acc):\n"
      "      plgpu.wgmma(acc, a8.at[my_rows], b8.T)\n"
      f"      plgpu.wgmma_wait({delay})\n"
      "      return acc\n"), (
      "        spec((BLOCK, BLOCK), lambda s: (0, kk(s)), a8_ref.dtype),   # A8\n"
      "        spec((BLOCK, BLOCK), lambda s: (0, kk(s)), b8_ref.dtype),   # B8\n",
      f"        spec((BLOCK, BLOCK), lambda s: (0, kk(s)), a8_ref.dtype, {delay}),\n"
      f"        spec((BLOCK, BLOCK), lambda s: (0, kk(s)), b8_ref.dtype, {delay}),\n"
  )] + [(  # every input of a pipeline releases alike
      f"        spec((1, BLOCK), lambda s: (kk(s), 0)),   # {w}\n",
      f"        spec((1, BLOCK), lambda s: (kk(s), 0), None, {delay}),\n")
      for w in ("ra^T: this step's rows", "rb^T: this step's columns")]


# The factors (row scales times the block's scale) loaded and multiplied
# before the wgmma is issued, so their latency hides under it.
FACTORS_FIRST = [(
    "      part = pl.run_scoped(mma, plgpu.ACC((wr, BLOCK), jnp.float32))\n",
    "      factor = gemm.load_with_layout(\n"
    "          ra.at[0, my_rows], plgpu.Layout.WGMMA.reduce(1)) * rb[0, 0]\n"
    "      part = pl.run_scoped(mma, plgpu.ACC((wr, BLOCK), jnp.float32))\n"
    "      return acc + part * lax.broadcast_in_dim(factor, part.shape, [0])\n"
)]

# Two K blocks per pipeline step, both wgmmas issued at once: the first
# block's promotion runs while the second's wgmma does. (W in 128x128
# blocks; an even count of FP8 steps per tile, as at 0% BF16 blocks.)
TWO_PER_STEP = [(
    "    pipeline(fp8_step, fp8_context, fp8_specs(), n8, stages[0])(\n"
    "        a8_ref.at[rows, :], b8_ref.at[cols, :], ra_ref.at[:, rows],\n"
    "        rb_ref.at[:, cols])\n",
    "    def fp8_specs2():\n"
    "      kk = lambda s, j: order_smem[2 * s + j]  # noqa: E731\n"
    "      return ([spec((BLOCK, BLOCK), lambda s, j=j: (0, kk(s, j)), a8_ref.dtype)\n"
    "               for j in (0, 1)] +\n"
    "              [spec((BLOCK, BLOCK), lambda s, j=j: (0, kk(s, j)), b8_ref.dtype)\n"
    "               for j in (0, 1)] +\n"
    "              [spec((1, BLOCK), lambda s, j=j: (kk(s, j), 0)) for j in (0, 1)] +\n"
    "              [spec((1, BLOCK), lambda s, j=j: (kk(s, j), 0)) for j in (0, 1)])\n"
    "\n"
    "    def fp8_step2(_, a0, a1, b0, b1, ra0, ra1, rb0, rb1, acc):\n"
    "      f = [gemm.load_with_layout(ra.at[0, my_rows],\n"
    "                                 plgpu.Layout.WGMMA.reduce(1)) * rb[0, 0]\n"
    "           for ra, rb in ((ra0, rb0), (ra1, rb1))]\n"
    "      def mma(p0, p1):\n"
    "        plgpu.wgmma(p0, a0.at[my_rows], b0.T)\n"
    "        plgpu.wgmma(p1, a1.at[my_rows], b1.T)\n"
    "        v0 = plgpu.wgmma_accumulator_load(p0, wait_n=1)\n"
    "        s = acc + v0 * lax.broadcast_in_dim(f[0], v0.shape, [0])\n"
    "        v1 = plgpu.wgmma_accumulator_load(p1, wait_n=0)\n"
    "        return s + v1 * lax.broadcast_in_dim(f[1], v1.shape, [0])\n"
    "      return pl.run_scoped(mma, plgpu.ACC((wr, BLOCK), jnp.float32),\n"
    "                           plgpu.ACC((wr, BLOCK), jnp.float32))\n"
    "\n"
    "    pipeline(fp8_step2, fp8_context, fp8_specs2(), n8 // 2, 2)(\n"
    "        *(a8_ref.at[rows, :],) * 2, *(b8_ref.at[cols, :],) * 2,\n"
    "        *(ra_ref.at[:, rows],) * 2, *(rb_ref.at[:, cols],) * 2)\n"
)]

VARIANTS = {"v0": [], "v1": NO_PROMOTION, "v2": one_accumulator(0),
            "v3": one_accumulator(1), "v4": FACTORS_FIRST,
            "v6": TWO_PER_STEP}
# Variants run under BlockGemmConfig(**CONFIGS.get(name, {})).
CONFIGS = {"v5": dict(stages=4)}
VARIANTS["v5"] = []


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
  for name, cfg in (("gemm_128x256", kernels.GemmConfig()),
                    ("gemm_128x128", kernels.GemmConfig(tile_n=64,
                                                        cluster=None))):
    fn = jax.jit(lambda cfg=cfg: kernels.gemm.gemm(
        *bench._operands(a, a8, ra, b, b8, rb, True),
        out_dtype=jnp.bfloat16, config=cfg))
    t = prof.per_call_ms(prof.kernel_times(fn, calls=calls)[0], calls,
                         "anonymous_mosaic_gpu_kernel")
    say(case=name, ms=t, vs_bf16=round(t / t_bf16, 3))
  wa = jax.jit(bench._blocks, static_argnums=(1, 2))(a, 0.0, 3)
  wb = jax.jit(bench._blocks, static_argnums=(1, 2))(b, 0.0, 2)
  ref = None
  names = sys.argv[1].split(",") if len(sys.argv) > 1 else list(VARIANTS)
  for name in names:
    mod = module(name, VARIANTS[name])
    fn = jax.jit(lambda x, y, mod=mod: mod._local_block_gemm(
        x, y, out_dtype=jnp.bfloat16,
        config=mod.BlockGemmConfig(**CONFIGS.get(name, {}))))
    t = prof.per_call_ms(prof.kernel_times(fn, wa, wb, calls=calls)[0],
                         calls, "anonymous_mosaic_gpu_kernel")
    y = fn(wa, wb).astype(jnp.float32)
    ref = y if ref is None else ref
    diff = float(jnp.linalg.norm(y - ref) / jnp.linalg.norm(ref))
    say(case=f"block_{name}", ms=t, vs_bf16=round(t / t_bf16, 3),
        rel_to_v0=diff)


if __name__ == "__main__":
  main()
