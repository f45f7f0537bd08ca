"""An FP8 GEMM whose fallback to BF16 is decided on the device.

For two operands A [M, K] and B [N, K] (``Operand``: as they came, their
FP8 codes, the reciprocals of their per-row scales, MoR's decisions),
``gemm`` computes

  both accepted:  Y = (A8 @ B8^T) * ra[:, None] * rb[None, :]  (FP8 cores)
  otherwise:      Y = A' @ B'^T                                (BF16 cores)

A8 and B8 are FP8 codes (E4M3 or E5M2, in any pairing) on their K-major
[rows, K] views, ra and rb the reciprocals of their per-row scales (one per
contraction vector, so they factor out of the sum). A' and B' are the
operands of the emulated path: a rejected operand as it came, [rows, K] or
[K, rows] (16-bit wgmma reads either layout from shared memory, so a
transposed operand is never copied); an accepted one's codes dequantized
(bit for bit ``mor_jax._numerics.dequantize_values``). The decisions are
device scalars, made just before: every thread block reads them and runs
one of three K loops, so the choice costs no host round trip (``lax.cond``
on a GPU copies its predicate to the host and waits for it: 30-60 us per
GEMM, measured, see docs/benchmarks.md):

- both accepted: the FP8 loop, the factors applied to the accumulator;
- both rejected: the 16-bit loop on the operands as they came;
- one accepted: the dequantizing loop. Each warpgroup converts its rows of
  the accepted operand's FP8 tile to 16 bits in registers and passes them
  to wgmma as its A; with B accepted, the loop runs on the swapped pair
  and computes the output's transpose, written through transposed tiles.
  A warpgroup waits for each wgmma before converting the next codes
  (doing it while the wgmma ran gave wrong outputs). In a tile whose 64
  row factors cannot need the flush or the saturation (checked once per
  tile), the conversion is the bare product. At (16384, 8192, 8192) on the
  H200 it takes 1.13-1.15x cuBLAS BF16's time in such tiles, 1.38-1.52x
  in the others (1.29x with the full conversion everywhere). Dequantizing
  each tile in shared memory took twice cuBLAS BF16's time; writing the
  operand's values before the launch (kernels/wide.py) 1.07-1.10x, but its
  launch cost every GEMM 1.9% of the 72-GEMM chain, written or not, and
  each of its outputs held an operand's size in device memory. The two
  conversions share one wgmma site (a ``lax.cond`` on the tile's check):
  with a site under each ``pl.when`` the kernel's other loops ran 11%
  slower (docs/benchmarks.md, twenty-eighth to thirty-third sessions).

Backend: Mosaic GPU (the upstream default for Hopper). The FP8 loop needs
``wgmma`` on FP8 operands fed by TMA at the rate of cuBLAS, and Mosaic GPU
gives exactly that: warp specialization (one warpgroup loads through TMA,
two compute), a persistent grid, swizzled shared memory, and clusters of two
blocks that share one operand's tiles through multicast TMA loads. On the
H200, at 16384 x 8192 x 8192, this kernel ran its FP8 path at 1327 TFLOP/s
with the scales applied (cuBLAS through XLA: 1338) and its BF16 path at 705
(cuBLAS: 737), while a Pallas Triton GEMM reached 470 in FP8
(docs/benchmarks.md). Like cuBLAS's default, the FP8 path accumulates in the
tensor cores' own precision, without promoting partial sums. The kernel is
Hopper-only (sm_90) and Mosaic GPU has no public interpret mode, so
``gemm_reference``, its jnp twin, is what runs elsewhere and what the GPU
tests compare it with; a CPU still lowers the kernel for CUDA
(``jax.export``), which checks that every loop lowers.

Sharded operands (``_Gemm``, through kernels/sharding.py's ``per_shard``):
under ``jit`` each device runs the kernel on its shards. Rows of A and of B
stay sharded (the output is sharded [M, N] alike), and K where both operands
split it alike; each device's partial output is then written in float32 and
summed across K's mesh axes before the one cast to the output's dtype, as
one device rounds its float32 accumulator once. ``gemm_reference_per_shard``
runs the twin under the same rule, which is how a CPU tests the rule.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu
from jax.sharding import PartitionSpec as P

from mor_jax import _numerics
from mor_jax.kernels import sharding

# A x B^T: both operands contract their minor (K) dimension.
TN = (((1,), (1,)), ((), ()))
# The compute warpgroups of a block split its N extent. (Splitting M, each
# warpgroup 64 x 256, one wgmma per K step, was not faster: docs/benchmarks.md.)
_COMPUTE_WGS = 2
# Shared memory of an H100/H200 block (227 KiB), and room for barriers (608
# bytes with 4 pipeline stages, measured on the H200).
SMEM_BYTES = 232448
BARRIER_BYTES = 1024


@dataclasses.dataclass(frozen=True, kw_only=True)
class GemmConfig:
  """Tiles of the GEMM kernel (hashable: part of every cache key).

  Attributes:
    tile_m: output rows per block (and per compute warpgroup).
    tile_n: output columns per compute warpgroup; a block spans 2 * tile_n.
    tile_k_fp8: K per pipeline step of the FP8 loop (128 bytes of a row).
    tile_k_wide: K per pipeline step of the 16-bit loop (128 bytes of a row).
    stages: pipeline depth (shared-memory buffers per operand).
    grid_tile_width: blocks per band of the planar-snake tile order (L2
      reuse).
    epilogue_tile: edge of the square tiles the output leaves through.
    delay_release: K steps a compute warpgroup keeps in flight: 0 waits for
      each wgmma before releasing its shared-memory slot; 1 releases the
      previous step's slot instead, so that the next wgmma is issued while
      one runs. The dequantizing loop (one operand accepted) always waits.
    cluster: None, or the output dimension ("m" or "n") along which two
      blocks form a cluster and take their common operand tile through one
      multicast TMA load: "m" pairs blocks of the same columns (B's tile is
      shared), "n" blocks of the same rows (A's). Halves the shared
      operand's reads from L2.
    chain_fp8, chain_wide: one pipeline across each block's tiles (Mosaic
      GPU's pipeline of pipelines) for the FP8 loop, and for the 16-bit
      one, where the loop's K steps divide its stages, so that the next
      tile's first K steps load while this one ends. The compute warpgroups
      then release each slot themselves, ``delay_release`` steps late.

  Examples:
    The default chains the FP8 loop; a pipeline per tile is an option:

    >>> from mor_jax import kernels
    >>> cfg = kernels.GemmConfig(chain_fp8=False)
    >>> cfg.block_n, cfg.m_multiple  # a cluster's tile: 256 x 256 outputs
    (256, 256)
    >>> kernels.GemmConfig(chain_wide=1)
    Traceback (most recent call last):
    ...
    ValueError: GemmConfig.chain_wide must be a bool, got 1.
  """

  tile_m: int = 128
  tile_n: int = 128
  tile_k_fp8: int = 128
  tile_k_wide: int = 64
  stages: int = 4
  grid_tile_width: int = 8
  epilogue_tile: int = 64
  # 1.437 ms against 1.461 with 0 for the FP8 path at (16384, 8192, 8192)
  # on the H200 (benchmarks/profile.py --sweep gemm, docs/benchmarks.md).
  delay_release: int = 1
  # The MoRDense layer at (16384, 8192, 8192) on the H200, in three runs:
  # 1.501x, 1.471x and 1.518x BF16 against 1.471x, 1.447x and 1.480x without
  # clusters (benchmarks/gemm.py --gemm-configs, docs/benchmarks.md).
  cluster: str | None = "m"
  # On the H200 a chained FP8 loop was faster in all six kernel timings of
  # two sessions, by 0.5-1.5% (M x K x N = 16384 x 4096 x 4096, and 16128,
  # 16384 and 16896 x 8192 x 8192), with the same bits; the layer at
  # (16384, 8192, 8192) gained 0.7-0.9% and gpu1b_wide's training step
  # moved within its noise (161.9 ms against 161.3). The 16-bit loop gained
  # nothing, and the all-rejected layer with it chained took 1% longer
  # (docs/benchmarks.md, seventeenth and eighteenth sessions).
  chain_fp8: bool = True
  chain_wide: bool = False

  def __post_init__(self):
    for f in dataclasses.fields(self):
      v = getattr(self, f.name)
      if f.name == "cluster":
        if v not in (None, "m", "n"):
          raise ValueError(f"GemmConfig.cluster must be None, 'm' or 'n', "
                           f"got {v!r}.")
      elif f.name in ("chain_fp8", "chain_wide"):
        if not isinstance(v, bool):
          raise ValueError(f"GemmConfig.{f.name} must be a bool, got "
                           f"{v!r}.")
      elif f.name == "delay_release":
        if isinstance(v, bool) or v not in (0, 1):
          raise ValueError(f"GemmConfig.delay_release must be 0 or 1, got "
                           f"{v!r}.")
      elif isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"GemmConfig.{f.name} must be a positive int, got "
                         f"{v!r}.")

  @property
  def block_n(self) -> int:
    return _COMPUTE_WGS * self.tile_n

  @property
  def k_multiple(self) -> int:
    return max(self.tile_k_fp8, self.tile_k_wide)

  @property
  def cluster_size(self) -> int:
    return 1 if self.cluster is None else 2

  @property
  def m_multiple(self) -> int:
    """Rows of A a cluster's tile spans."""
    return self.tile_m * (2 if self.cluster == "m" else 1)

  @property
  def n_multiple(self) -> int:
    """Rows of B a cluster's tile spans."""
    return self.block_n * (2 if self.cluster == "n" else 1)


def smem_transforms(tile_minor: int, dtype) -> tuple:
  """Shared-memory tiling and swizzle for rows of ``tile_minor`` elements."""
  bits = jnp.dtype(dtype).itemsize * 8
  swizzle = plgpu.find_swizzle(tile_minor * bits)
  return (plgpu.TilingTransform((8, swizzle * 8 // bits)),
          plgpu.SwizzleTransform(swizzle))


def write_tile(acc: jax.Array, out_smem, wg, dst, transposed=False) -> None:
  """Stores a warpgroup's output tile through shared memory.

  ``out_smem[wg]`` holds two slots of the tiles the output leaves through,
  so that one leaves through TMA while the next is written; ``dst`` is the
  warpgroup's window of the output in GMEM, ``acc``'s transpose if
  ``transposed`` (the slots then square, each tile written through a
  transposed view of its slot from registers in the transposed WGMMA
  layout).
  """
  tm, tn = acc.shape
  em, en = out_smem.shape[-2:]
  if transposed:
    em, en = en, em
  plgpu.wait_smem_to_gmem(0, wait_read_only=True)
  for i in range(tm // em):
    for j in range(tn // en):
      slot = (i * (tn // en) + j) % 2
      plgpu.wait_smem_to_gmem(1, wait_read_only=True)
      tile = acc[i * em:(i + 1) * em, j * en:(j + 1) * en]
      if transposed:
        out_smem.at[wg, slot].T[...] = plgpu.layout_cast(
            tile, plgpu.Layout.WGMMA_TRANSPOSED)
        window = dst.at[pl.ds(j * en, en), pl.ds(i * em, em)]
      else:
        out_smem[wg, slot] = tile
        window = dst.at[pl.ds(i * em, em), pl.ds(j * en, en)]
      plgpu.commit_smem()
      plgpu.copy_smem_to_gmem(out_smem.at[wg, slot], window)


# jax 0.10's plgpu.load needs an index; 0.11 deprecates it (the ref is
# indexed instead).
_LOAD_NEEDS_INDEX = (inspect.signature(plgpu.load).parameters["idx"].default
                     is inspect.Parameter.empty)


def load_with_layout(ref, layout):
  """``plgpu.load(ref, layout=layout)`` on either jax (0.10 and 0.11)."""
  if _LOAD_NEEDS_INDEX:
    return plgpu.load(ref, (), layout=layout)
  return plgpu.load(ref, layout=layout)


def _room(cfg: GemmConfig, out_dtype) -> int:
  """Shared memory left for the pipeline.

  The output leaves through 2 x 2 epilogue tiles per warpgroup, and each
  warpgroup keeps its tile's float32 row factors.
  """
  out_bytes = (_COMPUTE_WGS * 2 * cfg.epilogue_tile**2 *
               jnp.dtype(out_dtype).itemsize)
  scale_bytes = _COMPUTE_WGS * (cfg.tile_m + cfg.tile_n) * 4
  return SMEM_BYTES - out_bytes - scale_bytes - BARRIER_BYTES


def _stages(cfg: GemmConfig, room: int, step_bytes: int) -> int:
  """Pipeline depth that fits ``room`` with ``step_bytes`` per K step."""
  return max(2, min(cfg.stages, room // step_bytes))


def _release_late(step, steps: int, stages: int, consumed) -> None:
  """Releases a chained pipeline's shared-memory slots a step late.

  ``consumed``: this step's slot's consumed barriers (one per input). A step
  releases the previous step's slot once that step's wgmma has finished, so
  that the next wgmma is issued while one runs (a chained pipeline cannot
  delay its releases itself); the tile's last step waits for its own and
  releases both.
  """
  plgpu.wgmma_wait(1)
  last = step == steps - 1
  prev = lax.rem(step + stages - 1, stages)

  @pl.when(step > 0)
  def _():
    for barrier in consumed:
      # The step's barrier is a view of the slots' array (``.ref``).
      plgpu.barrier_arrive(barrier.ref.at[prev])

  @pl.when(last)
  def _():
    plgpu.wgmma_wait(0)
    for barrier in consumed:
      plgpu.barrier_arrive(barrier)


def _plain_rows(recip_smem, fmt, dtype) -> jax.Array:
  """Whether every row factor in ``recip_smem`` dequantizes its codes
  without flush or saturation (``_numerics.dequantize_is_plain``): one
  scalar for the warpgroup, read factor by factor from shared memory once
  per tile, where a check of the whole tile costs less than a K step."""
  plain = jnp.bool_(True)
  for i in range(recip_smem.shape[0]):
    plain = plain & _numerics.dequantize_is_plain(recip_smem[i], fmt, dtype)
  return plain


def _scaled_tile(acc: jax.Array, ra: jax.Array, rb: jax.Array) -> jax.Array:
  """The FP8 loop's epilogue: scale_rows_and_columns on the accumulator and
  its row and column factors (WGMMA's layouts), bit for bit.

  The factors' parts above and below 1 are split on the vectors, a few
  registers a thread, before their broadcast over the tile: four multiplies
  an element and no selection, where choosing the order per element took
  eight operations (docs/benchmarks.md, thirty-seventh session).
  """
  def broadcast(v, dim):
    return lax.broadcast_in_dim(v, acc.shape, [dim])

  (big_a, small_a), (big_b, small_b) = _split(ra), _split(rb)
  return (acc * (broadcast(big_a, 0) * broadcast(small_b, 1))
          * (broadcast(small_a, 0) * broadcast(big_b, 1)))


# The kernel's K loops: on two 16-bit operands; on A's FP8 codes,
# dequantized in registers, and a 16-bit B; on two FP8 operands.
_WIDE, _DEQ, _FP8 = range(3)


def scratch_types(cfg: GemmConfig, out_dtype) -> dict:
  """The kernel's shared memory beside its pipelines (``_room``): output
  tiles, each warpgroup's row factors, and their barriers."""
  et = cfg.epilogue_tile
  return dict(
      out_smem=plgpu.SMEM((_COMPUTE_WGS, 2, et, et), out_dtype,
                          transforms=smem_transforms(et, out_dtype)),
      ra_smem=plgpu.SMEM((_COMPUTE_WGS, cfg.tile_m), jnp.float32),
      rb_smem=plgpu.SMEM((_COMPUTE_WGS, cfg.tile_n), jnp.float32),
      barriers=plgpu.Barrier(num_barriers=2 * _COMPUTE_WGS))


def _kernel(case_ref, a8, b8, ra, rb, a, b, out_ref, *, cfg: GemmConfig,
            a_t: bool, b_t: bool, **scratch):
  # Every thread reads the decisions (case a.accepted + 2 * b.accepted) and
  # runs one branch; the branches allocate the same shared memory (a switch
  # takes the largest of its branches' needs).
  run = functools.partial(_run, out_ref=out_ref, cfg=cfg, **scratch)
  lax.switch(case_ref[...], [
      functools.partial(run, _WIDE, a_ref=a, b_ref=b, a_t=a_t, b_t=b_t),
      functools.partial(run, _DEQ, a8_ref=a8, ra_ref=ra, b_ref=b, b_t=b_t),
      # B accepted: the same loop computes the output's transpose, B^T's
      # codes dequantized times A^T.
      functools.partial(run, _DEQ, a8_ref=b8, ra_ref=rb, b_ref=a, b_t=a_t,
                        swap=True),
      functools.partial(run, _FP8, a8_ref=a8, b8_ref=b8, ra_ref=ra,
                        rb_ref=rb)])


def wide_tiles(a_ref, b_ref, out_ref, *, cfg: GemmConfig,
               transposed: tuple[bool, bool]) -> None:
  """Inside a kernel launched as ``gemm``'s (``cfg``'s grid, cluster and
  warpgroups): out = A B^T, every tile through the 16-bit loop.

  For kernels whose GEMM falls back whole (kernels/block_gemm.py, when no
  block pair runs in FP8). ``a_ref`` [M, K] or [K, M] if ``transposed[0]``,
  ``b_ref`` alike; ``cfg``'s tile divides M and N, ``tile_k_wide`` K.
  """
  pl.run_scoped(
      functools.partial(_run, _WIDE, a_ref=a_ref, b_ref=b_ref,
                        out_ref=out_ref, cfg=cfg, a_t=transposed[0],
                        b_t=transposed[1]),
      **scratch_types(cfg, out_ref.dtype), collective_axes="wg")


def _run(loop: int, out_smem, ra_smem, rb_smem, barriers, *, out_ref,
         cfg: GemmConfig, a8_ref=None, b8_ref=None, ra_ref=None, rb_ref=None,
         a_ref=None, b_ref=None, a_t: bool = False, b_t: bool = False,
         swap: bool = False) -> None:
  """One K loop over every output tile of this block, on the refs it reads:
  _WIDE a_ref and b_ref; _DEQ a8_ref, ra_ref and b_ref, computing the
  output's transpose if ``swap``; _FP8 the codes and both row factors."""
  m, n = out_ref.shape[::-1] if swap else out_ref.shape
  tm, tn, bn = cfg.tile_m, cfg.tile_n, cfg.block_n
  m_iters, n_iters = m // cfg.m_multiple, n // cfg.n_multiple
  room = _room(cfg, out_ref.dtype)
  # The dequantizing loop's rows per warpgroup, whose factors it keeps in
  # the first half of the warpgroup's row of ra_smem.
  hm = tm // _COMPUTE_WGS

  def ra_half(wg):
    return ra_smem.at[wg, pl.ds(0, hm)]

  fp8, deq = loop == _FP8, loop == _DEQ
  tile_k = cfg.tile_k_fp8 if fp8 else cfg.tile_k_wide
  # Per operand: the GMEM array whose tiles the pipeline loads, and
  # whether it is stored [K, rows] (16-bit values in the x's layout).
  a_gmem, a_kr = (a8_ref, False) if fp8 or deq else (a_ref, a_t)
  b_gmem, b_kr = (b8_ref, False) if fp8 else (b_ref, b_t)
  k = a_gmem.shape[0 if a_kr else 1]
  step_bytes = (tm * tile_k * jnp.dtype(a_gmem.dtype).itemsize +
                bn * tile_k * jnp.dtype(b_gmem.dtype).itemsize)

  stages = _stages(cfg, room, step_bytes)
  steps = k // tile_k
  # The dequantizing loop waits for each wgmma before its next step
  # converts codes: a wgmma reads its A from registers while it runs, and
  # converting the next step's codes meanwhile gave wrong outputs on the
  # H200 (registers reused under it; docs/benchmarks.md, thirtieth session).
  release = 0 if deq else cfg.delay_release
  chained = (not deq and (cfg.chain_fp8 if fp8 else cfg.chain_wide) and
             steps % stages == 0)
  # A chained pipeline releases each step's slot itself (delay_release
  # 0 in its specs); releasing late takes the steps doing it themselves.
  manual = chained and release > 0

  def spec(rows, gmem, k_rows, shared):
    # A tile both blocks of a cluster read arrives in both through one
    # multicast load.
    shape, index = (((tile_k, rows), lambda kk: (kk, 0)) if k_rows else
                    ((rows, tile_k), lambda kk: (0, kk)))
    return plgpu.BlockSpec(
        shape, index, transforms=smem_transforms(shape[1], gmem.dtype),
        memory_space=plgpu.SMEM,
        delay_release=0 if chained else release,
        collective_axes=("cluster",) if shared else ())

  def pipeline(body, compute_context, state=None):
    return plgpu.emit_pipeline_warp_specialized(
        body,
        grid=(steps,),
        memory_registers=40,
        in_specs=[spec(tm, a_gmem, a_kr, cfg.cluster == "n"),
                  spec(bn, b_gmem, b_kr, cfg.cluster == "m")],
        wg_axis="wg",
        num_compute_wgs=_COMPUTE_WGS,
        max_concurrent_steps=stages,
        compute_context=compute_context,
        manual_consumed_barriers=manual,
        pipeline_state=state,
    )

  ignore = lambda *_, **__: None  # noqa: E731

  @functools.partial(
      pl.run_scoped,
      allocs=pipeline(ignore, ignore).get_allocations(a_gmem, b_gmem),
      collective_axes="wg")
  def _(allocs):
    wg = lax.axis_index("wg")
    cta = lax.axis_index("cluster")

    @plgpu.nd_loop((m_iters * n_iters,), collective_axes="grid")
    def _(info):
      (lin,) = info.index
      im, jn = plgpu.planar_snake(lin, (m_iters, n_iters), 1,
                                  cfg.grid_tile_width)
      if cfg.cluster == "m":
        im = im * 2 + cta
      elif cfg.cluster == "n":
        jn = jn * 2 + cta
      # This warpgroup's window: its half of the columns, or in the
      # dequantizing loop its half of the rows (so that each warpgroup
      # converts only the codes it multiplies).
      if deq:
        rows = pl.ds(im * tm + wg * hm, hm)
        cols = pl.ds(jn * bn, bn)
      else:
        rows = pl.ds(im * tm, tm)
        cols = pl.ds(jn * bn + wg * tn, tn)

      # What the dequantizing loop's compute context finds for its steps.
      tile = {}

      def compute_context(run_pipeline):
        @functools.partial(pl.run_scoped, acc_ref=plgpu.ACC(
            (hm, bn) if deq else (tm, tn), jnp.float32))
        def _(acc_ref):
          # This tile's row factors, which the FP8 loop applies to the
          # accumulator, load while it runs; the dequantizing loop needs
          # A's from its first step.
          if fp8:
            plgpu.copy_gmem_to_smem(ra_ref.at[rows], ra_smem.at[wg],
                                    barriers.at[2 * wg])
            plgpu.copy_gmem_to_smem(rb_ref.at[cols], rb_smem.at[wg],
                                    barriers.at[2 * wg + 1])
          if deq:
            plgpu.copy_gmem_to_smem(ra_ref.at[rows], ra_half(wg),
                                    barriers.at[2 * wg])
            plgpu.barrier_wait(barriers.at[2 * wg])
            tile["plain"] = _plain_rows(ra_half(wg), a_gmem.dtype,
                                        b_gmem.dtype)
          run_pipeline(acc_ref)
          acc = acc_ref[...]
          if fp8:
            # Per-row scales factor out of the sum over K: the FP8 GEMM
            # applies them to the float32 accumulator.
            plgpu.barrier_wait(barriers.at[2 * wg])
            plgpu.barrier_wait(barriers.at[2 * wg + 1])
            acc = _scaled_tile(
                acc,
                load_with_layout(ra_smem.at[wg],
                                 plgpu.Layout.WGMMA.reduce(1)),
                load_with_layout(rb_smem.at[wg],
                                 plgpu.Layout.WGMMA.reduce(0)))
          dst = out_ref.at[cols, rows] if swap else out_ref.at[rows, cols]
          write_tile(acc.astype(out_ref.dtype), out_smem, wg, dst,
                     transposed=swap)

      def mma(indices, a_smem, b_smem, *rest):
        *consumed, acc_ref = rest
        if deq:
          # The values of the emulated path, bit for bit: each code times
          # its row's factor, flushed and saturated, in B's dtype; in a
          # tile whose factors need neither, the product alone.
          q = a_smem[pl.ds(wg * hm, hm)].astype(jnp.float32)
          r = load_with_layout(ra_half(wg), plgpu.Layout.WGMMA.reduce(1))
          r = lax.broadcast_in_dim(r, q.shape, [0])
          a = lax.cond(
              tile["plain"],
              lambda q, r: (q * r).astype(b_gmem.dtype),
              lambda q, r: _numerics.dequantize_values(
                  q, r, b_gmem.dtype, q_finite=True), q, r)
          plgpu.wgmma(acc_ref, a, b_smem if b_kr else b_smem.T)
          plgpu.wgmma_wait(release)
          return acc_ref
        # wgmma takes A as [tm, tk] and B as [tk, tn]; 16-bit tiles
        # stored either way (FP8 ones K-major only).
        a = a_smem.T if a_kr else a_smem
        b = (b_smem.at[:, pl.ds(wg * tn, tn)] if b_kr else
             b_smem.at[pl.ds(wg * tn, tn)].T)
        plgpu.wgmma(acc_ref, a, b)
        if manual:
          _release_late(indices[0], steps, stages, consumed)
        else:
          plgpu.wgmma_wait(release)
        return acc_ref

      # The block's tiles (the loading warpgroup's ``rows`` are not).
      a_rows, b_cols = pl.ds(im * tm, tm), pl.ds(jn * bn, bn)
      a_tiles = a_gmem.at[:, a_rows] if a_kr else a_gmem.at[a_rows, :]
      b_tiles = b_gmem.at[:, b_cols] if b_kr else b_gmem.at[b_cols, :]
      # A block's first tile fills the pipeline; its last leaves the
      # slots loaded (the kernel ends: nothing waits for them).
      state = jnp.where(info.local_index == 0,
                        int(plgpu.PipelinePipeline.START),
                        int(plgpu.PipelinePipeline.STEADY)
                        ) if chained else None
      pipeline(mma, compute_context, state)(a_tiles, b_tiles,
                                            allocations=allocs)

  plgpu.wait_smem_to_gmem(0, wait_read_only=True)


def round_up(n: int, m: int) -> int:
  return -(-n // m) * m


def _padded_shape(m: int, n: int, k: int, config: GemmConfig
                 ) -> tuple[tuple[int, int, int], GemmConfig]:
  """The shape the kernel runs, and the config it runs with.

  A cluster that would pad the operands further (a copy of each) than
  single blocks do is left out. M and N are multiples of both the rows and
  the columns of a cluster's tile: with B accepted alone, the kernel
  computes the output's transpose.
  """
  def shape(c):
    rows = math.lcm(c.m_multiple, c.n_multiple)
    return (round_up(m, rows), round_up(n, rows), round_up(k, c.k_multiple))

  single = dataclasses.replace(config, cluster=None)
  if shape(config) != shape(single):
    return shape(single), single
  return shape(config), config


def _local_gemm(case, a8, b8, ra, rb, a, b, *, out_dtype, config: GemmConfig,
                transposed: tuple[bool, bool]):
  m, k = a8.shape
  n = b8.shape[0]
  (mp, np_, kp), config = _padded_shape(m, n, k, config)
  if (mp, np_, kp) != (m, n, k):
    def pad(x, rows, padded, k_rows=False):
      widths = [(0, padded - rows), (0, kp - k)]
      return jnp.pad(x, widths[::-1] if k_rows else widths)
    a8, a, ra = (pad(a8, m, mp), pad(a, m, mp, transposed[0]),
                 jnp.pad(ra, (0, mp - m)))
    b8, b, rb = (pad(b8, n, np_), pad(b, n, np_, transposed[1]),
                 jnp.pad(rb, (0, np_ - n)))
  cores = getattr(jax.devices()[0], "core_count", 132)
  call = plgpu.kernel(
      functools.partial(_kernel, cfg=config, a_t=transposed[0],
                        b_t=transposed[1]),
      out_type=jax.ShapeDtypeStruct((mp, np_), out_dtype),
      grid=(cores // config.cluster_size,),
      grid_names=("grid",),
      cluster=(config.cluster_size,),
      cluster_names=("cluster",),
      num_threads=_COMPUTE_WGS + 1,
      thread_name="wg",
      compiler_params=plgpu.CompilerParams(
          lowering_semantics=plgpu.LoweringSemantics.Warpgroup),
      scratch_types=scratch_types(config, out_dtype),
  )
  y = call(case, a8, b8, ra, rb, a, b)
  return y[:m, :n] if (mp, np_) != (m, n) else y


@functools.cache
def takes_mixed_fp8() -> bool:
  """Whether this jax's Mosaic GPU wgmma takes an E4M3 x E5M2 pair.

  jax 0.11's does; 0.10's refuses operands of two dtypes when a kernel is
  traced. Found by tracing this kernel once on such a pair, which needs no
  GPU; where it is False, ``mor_jax._dispatch`` keeps those GEMMs (this
  kernel's and kernels/block_gemm.py's) on XLA.

  Examples:
    >>> from mor_jax.kernels import gemm
    >>> gemm.takes_mixed_fp8() in (True, False)  # cached after the first
    True
  """
  cfg = GemmConfig(cluster=None)
  rows, k = (cfg.tile_m, cfg.block_n), cfg.k_multiple
  args = [jax.ShapeDtypeStruct((), jnp.int32)]
  args += [jax.ShapeDtypeStruct((r, k), t)
           for r, t in zip(rows, (jnp.float8_e4m3fn, jnp.float8_e5m2))]
  args += [jax.ShapeDtypeStruct((r,), jnp.float32) for r in rows]
  args += [jax.ShapeDtypeStruct((r, k), jnp.bfloat16) for r in rows]
  try:
    jax.eval_shape(functools.partial(
        _local_gemm, out_dtype=jnp.bfloat16, config=cfg,
        transposed=(False, False)), *args)
  except ValueError:
    return False
  return True


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Operand:
  """One operand [R, K] of a GEMM, as ``mor_jax._fp8.Side`` holds it.

  Attributes:
    x: the operand as it came: [R, K], or [K, R] if ``transposed``; what
      the BF16 path reads when the operand is rejected.
    codes: its FP8 codes [R, K].
    recip: [R] float32 reciprocals of its per-row scales.
    accepted: bool scalar: the operand was accepted in FP8.
    transposed: whether ``x`` is the transpose of the GEMM's view (static).

  Examples:
    A [2, 4] rejected and stored [K, M]; B [3, 4] accepted, its codes 2.0
    with factors 0.5, so its BF16 path takes 1.0:

    >>> import jax.numpy as jnp
    >>> from mor_jax.kernels import gemm
    >>> a = gemm.Operand(jnp.full((4, 2), 3.0, jnp.bfloat16),
    ...                  jnp.zeros((2, 4), jnp.float8_e4m3fn),
    ...                  jnp.ones((2,)), jnp.bool_(False), transposed=True)
    >>> b = gemm.Operand(jnp.zeros((3, 4), jnp.bfloat16),
    ...                  jnp.full((3, 4), 2.0, jnp.float8_e4m3fn),
    ...                  jnp.full((3,), 0.5), jnp.bool_(True), False)
    >>> gemm.gemm_reference(a, b, out_dtype=jnp.float32)  # 3 * 1 * K
    Array([[12., 12., 12.],
           [12., 12., 12.]], dtype=float32)
  """

  x: jax.Array
  codes: jax.Array
  recip: jax.Array
  accepted: jax.Array
  transposed: bool = dataclasses.field(metadata=dict(static=True))


@dataclasses.dataclass(frozen=True)
class _Gemm:
  """The GEMM per shard: rows of A and B stay put, a sharded K's partial
  outputs are summed in float32 and cast once to ``out_dtype``.

  ``config`` None runs the jnp twin per shard (how a CPU tests the rule).
  """

  out_dtype: jnp.dtype
  config: GemmConfig | None
  transposed: tuple[bool, bool]

  @property
  def rule(self) -> str:
    # The case is a scalar; each operand's x as it is stored.
    a = "k m" if self.transposed[0] else "m k"
    b = "k n" if self.transposed[1] else "n k"
    return f", m k, n k, m, n, {a}, {b} -> m n"

  def local(self, *args, out_dtype=None):
    out_dtype = self.out_dtype if out_dtype is None else out_dtype
    if self.config is None:
      return (_reference(*args, transposed=self.transposed,
                         out_dtype=out_dtype),)
    return (_local_gemm(*args, out_dtype=out_dtype, config=self.config,
                        transposed=self.transposed),)

  def batchable_local(self, *args):
    return (_reference(*args, transposed=self.transposed,
                       out_dtype=self.out_dtype),)

  def plan(self, arg_shapes):
    mesh, (ma, ka) = sharding.layout(arg_shapes[1])
    _, (na, kb) = sharding.layout(arg_shapes[2])
    # A mesh axis can split one dimension of the output; K is summed only
    # where both operands split it alike.
    na = tuple(ax for ax in na if ax not in ma)
    k = ka if ka == kb and not set(ka) & set(ma + na) else ()
    m_, n_, k_ = (sharding.entry(x) for x in (ma, na, k))
    x_a, x_b = (P(k_, r) if t else P(r, k_)
                for r, t in zip((m_, n_), self.transposed))
    args = sharding.named(mesh, P(), P(m_, k_), P(n_, k_), P(m_), P(n_),
                          x_a, x_b)
    results = sharding.named(mesh, P(m_, n_))
    return sharding.k_summed_plan(self, mesh, results, args, k)


def _check(a: Operand, b: Operand, kernel: bool) -> None:
  for name, op in (("a", a), ("b", b)):
    view = op.x.shape[::-1] if op.transposed else op.x.shape
    if op.codes.ndim != 2 or view != op.codes.shape:
      raise ValueError(f"{name}.x {op.x.shape} (transposed={op.transposed})"
                       f" must hold the codes' [rows, K] {op.codes.shape}.")
    if op.recip.shape != op.codes.shape[:1]:
      raise ValueError(f"{name}.recip {op.recip.shape} must hold one factor "
                       f"per row of the codes {op.codes.shape}.")
  if a.codes.shape[1] != b.codes.shape[1]:
    raise ValueError(f"a and b must share K, got {a.codes.shape} and "
                     f"{b.codes.shape}.")
  if kernel and (a.x.dtype != b.x.dtype or
                 jnp.dtype(a.x.dtype).itemsize != 2):
    raise TypeError(f"the GEMM kernel's x operands must share a 16-bit "
                    f"dtype, got {a.x.dtype} and {b.x.dtype}.")


def _flat(a: Operand, b: Operand, kernel: bool) -> tuple:
  """The kernel's (and twin's) arguments, checked: the index of the K loop
  (``a.accepted + 2 * b.accepted``), then codes, row factors and x."""
  _check(a, b, kernel)
  case = (jnp.asarray(a.accepted, jnp.int32) +
          2 * jnp.asarray(b.accepted, jnp.int32))
  return (case, a.codes, b.codes, a.recip.astype(jnp.float32),
          b.recip.astype(jnp.float32), a.x, b.x)


def _per_shard(a: Operand, b: Operand, out_dtype,
               config: GemmConfig | None) -> jax.Array:
  op = _Gemm(jnp.dtype(out_dtype), config, (a.transposed, b.transposed))
  return sharding.per_shard(op)(*_flat(a, b, config is not None))[0]


def gemm(a: Operand, b: Operand, *, out_dtype, config: GemmConfig
         ) -> jax.Array:
  """See the module docstring; runs on Hopper GPUs only.

  Args:
    a: the operand [M, K].
    b: the operand [N, K].
    out_dtype: the output's dtype.
    config: the tiles.

  Returns:
    [M, N] in ``out_dtype``: the FP8 product if both operands are accepted,
    else the product in the x's 16-bit dtype of each accepted operand's
    codes dequantized (``mor_jax._numerics.dequantize_values``) and each
    rejected one's x. Shapes that the tiles do not divide are padded with
    zeros (a copy of each operand), which leaves the product unchanged;
    clusters run only where they add no padding.
    Under ``jit`` with sharded operands it runs per shard: rows of A and B
    stay sharded, and a K split alike on both operands is summed across
    devices in float32 (each device writes its partial output in float32),
    then cast once to ``out_dtype``. Under ``vmap``, ``gemm_reference``
    runs.
  """
  return _per_shard(a, b, out_dtype, config)


def gemm_reference_per_shard(a: Operand, b: Operand, *,
                             out_dtype) -> jax.Array:
  """``gemm``'s partitioning around ``gemm_reference``.

  The twin per shard, as ``gemm`` runs the kernel: how a device without the
  kernel (a CPU) tests the sharding rule.
  """
  return _per_shard(a, b, out_dtype, None)


def fp8_dot(a8: jax.Array, b8: jax.Array, ra: jax.Array, rb: jax.Array, *,
            out_dtype, precision=None) -> jax.Array:
  """The FP8 path in jnp: XLA's FP8 dot, the scales applied to its output.

  E5M2 x E5M2 runs on the codes converted to BF16 (exact): cuBLAS would
  silently compute that pair in F16. ``precision`` HIGHEST asks cuBLAS for
  float32 accumulation, the default for its fast FP8 accumulation.
  """
  if a8.dtype == b8.dtype == jnp.float8_e5m2:
    a8, b8 = a8.astype(jnp.bfloat16), b8.astype(jnp.bfloat16)
  acc = lax.dot_general(a8, b8, TN, precision=precision,
                        preferred_element_type=jnp.float32)
  # Scaled in float32, or in float64 for a float64 output.
  wide = accumulator_dtype(out_dtype)
  return scale_rows_and_columns(*(v.astype(wide) for v in (acc, ra, rb))
                                ).astype(out_dtype)


def accumulator_dtype(dtype) -> jnp.dtype:
  """float64 for float64, float32 for every other float (FP8 ones too,
  which ``jnp.promote_types`` refuses to promote).

  Examples:
    >>> import jax.numpy as jnp
    >>> from mor_jax.kernels import gemm
    >>> [str(gemm.accumulator_dtype(t)) for t in (jnp.bfloat16, jnp.float64,
    ...                                           jnp.float8_e4m3fn)]
    ['float32', 'float64', 'float32']
  """
  return jnp.dtype(jnp.float64 if jnp.dtype(dtype) == jnp.float64
                   else jnp.float32)


def scale_rows_and_columns(acc: jax.Array, ra: jax.Array,
                           rb: jax.Array) -> jax.Array:
  """acc * ra[:, None] * rb[None, :] with no intermediate
  overflow or underflow that the result itself does not have.

  Each factor splits into its part at or above 1 and its part below 1 (one
  of them is 1), and acc is multiplied first by the row's big part times the
  column's small part, then by the row's small part times the column's big
  part. Each of those two products pairs factors from opposite sides of 1,
  so it lies between them; and where the row and column factors lie on the
  same side, the one that is not 1 meets acc alone, moving it towards the
  result. So: acc * ra * rb where both are at least 1, acc * rb * ra where
  both are below 1, acc * (ra * rb) where they lie on opposite sides. One
  fixed order is not enough: a row of 1e36 (factor about 2e33) against a
  column of 1e-3 overflowed acc * ra to inf, where the product was 1e33.
  """
  (big_a, small_a), (big_b, small_b) = _split(ra), _split(rb)
  return (acc * (big_a[:, None] * small_b[None, :])
          * (small_a[:, None] * big_b[None, :]))


def _split(r: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Factors as (part at or above 1, part below 1): (r, 1) or (1, r)."""
  big = r >= 1
  return jnp.where(big, r, 1.0), jnp.where(big, 1.0, r)


def _reference(case, a8, b8, ra, rb, a, b, *, transposed, out_dtype,
               precision=None) -> jax.Array:
  def fp8_branch():
    return fp8_dot(a8, b8, ra, rb, out_dtype=out_dtype, precision=precision)

  def wide_branch():
    dtype = jnp.result_type(a.dtype, b.dtype)
    ops = []
    for accepted, codes, recip, x, t in ((case % 2 == 1, a8, ra, a,
                                          transposed[0]),
                                         (case >= 2, b8, rb, b,
                                          transposed[1])):
      deq = _numerics.dequantize_values(codes.astype(jnp.float32),
                                        recip[:, None], dtype)
      ops.append(jnp.where(accepted, deq, (x.T if t else x).astype(dtype)))
    return lax.dot_general(*ops, TN, precision=precision,
                           preferred_element_type=jnp.float32
                           ).astype(out_dtype)

  return lax.cond(case == 3, fp8_branch, wide_branch)


def gemm_reference(a: Operand, b: Operand, *, out_dtype,
                   precision=None) -> jax.Array:
  """``gemm`` in jnp: ``fp8_dot`` or XLA's dot of the BF16 path's operands,
  chosen by ``lax.cond``.

  The reference of the GPU tests, and what runs under ``vmap``.
  """
  return _reference(*_flat(a, b, False),
                    transposed=(a.transposed, b.transposed),
                    out_dtype=out_dtype, precision=precision)
