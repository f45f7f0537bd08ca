"""A block-scaled GEMM whose 128x128 blocks each run in FP8 or in BF16.

For X on its K-major view [M, K] and W on its view [N, K], ``block_gemm``
computes Y = X W^T where both operands come in blocks of 128 rows (or, for
X, single rows: DeepSeek's 1x128 tiles) by 128 of K, each block with its
representation (``REP_E4M3``, ``REP_E5M2`` or ``REP_BF16``, as sub-tensor
MoR chose it) and the reciprocal of its float32 scale. For every step of 128
along K and every pair of a 128-row block of X and one of W:

  both FP8 (not both E5M2):  P = (A8_blk @ B8_blk^T) * ra[:, None] * rb[None, :]
                             on FP8 tensor cores into a fresh accumulator,
                             promoted into the float32 sum (DeepGEMM's rule:
                             partial sums leave the tensor cores every 128
                             of K, which also applies scales that change
                             along K);
  otherwise:                 P = A_blk @ B_blk^T on BF16 tensor cores from
                             the emulated path's values.

An operand's codes hold one FP8 format (its ``codes.dtype``); a block whose
representation is another FP8 format (E5M2 blocks of a three-way operand
coded in E4M3) runs on the BF16 path from its wide values, exact but at BF16
speed. E5M2 x E5M2 runs in BF16 too: Hopper's FP8 MMA would compute it with
too few bits of accumulation to match the emulated path.

Kernel (Mosaic GPU, as kernels/gemm.py, whose shared-memory layout and
epilogue it shares): each thread block owns 128 x 128 outputs (one block
pair per K step, so the choice is uniform in the thread block), split by
rows between two compute warpgroups of 64 x 128, with one TMA warpgroup and
a persistent grid in planar-snake order. Two thread blocks in a cluster
take the neighbouring tiles (i, 2j) and (i, 2j + 1) together, and each
tile of A (X's rows) reaches both through one multicast TMA load
(``BlockGemmConfig.paired``): with every block in E4M3 this took 0.670x
cuBLAS BF16's time where single tiles took 0.741x at (16384, 8192, 8192),
and 0.67-0.70x against 0.72-0.80x at the shapes of a 1B model's layers
(H100, docs/benchmarks.md, forty-second session). Both tiles of a pair then
run the same K steps: a K block runs in FP8 only where it does for both,
so an FP8 pair beside a BF16 one runs in BF16 (exact products of the
emulated path's values, as any BF16 pair). The choice is prepared in jnp
around the launch (``_plan``, a few KiB): per output tile, its K steps that
run in FP8 listed first, then those that run in BF16, and their count. Per
tile the TMA warpgroup copies the tile's list into shared memory, and every
warpgroup reads the count from device memory; then two warp-specialized
pipelines run with grids of those dynamic lengths, their index maps reading
the list: the FP8 one (K tile 128, one byte per element, plus the step's
scales), whose sum is carried in registers and parked in shared memory at
its end, and the BF16 one (K tile 64), whose tensor-core accumulator gets
the FP8 sum added before the output is written; a tile with no BF16 step
writes its output from the FP8 loop and sets up no BF16 one. The two loops
take turns in the same shared memory, each allocating its buffers for a
tile's run. A tile so loads only what its pairs need, but the time is not
linear in the share of BF16 pairs: at (16384, 8192, 8192) on an H100, half
of them take 0.97-1.03x cuBLAS BF16's time where the chord from none to
all gives 0.89-0.90x (paired tiles: 1.02x against a chord of 0.86x). A
BF16 K block costs about 1.25x what it costs cuBLAS on these 128 x 128
tiles, where it moves 1.4x the L2 bytes of cuBLAS's tilings (Nsight
Compute), and pairing, which halves X's bytes, does not make it cheaper
(within a pair the multicast still counts: loading X's 16-bit tiles in
each block instead took half BF16 from 1.02x to 1.07x). The tile's width
is the cost: on 128 x 128 tiles gemm.py's own loops take 1.27x (FP8) and
1.36x (16-bit) their time on 128 x 256. Larger tiles do not fit: an FP8
step holds the promoted sum and the step's product, at 64 x 256 outputs a
warpgroup 2 x 128 float32 registers a thread, over Hopper's 255. Mixing
itself costs 0.07-0.08 of cuBLAS's time at 10% and at 50% of BF16 blocks
alike, and neither one hand-written pipeline for both kinds of step nor
running a tile's steps in K order lowered it (docs/benchmarks.md, fortieth,
forty-first and forty-third sessions). Where no pair of
the whole GEMM runs in FP8 (an operand rejected whole, as tensor-level MoR
with 128x128 blocks rejects, or every pair holding a BF16 block), the
kernel runs kernels/gemm.py's 16-bit loop instead, on its larger tiles
(``BlockGemmConfig.wide``): the flag comes with the plan and is read in the
kernel, so this choice too costs no host round trip. The launch is one for
both paths, so that loop runs in the pairs' clusters, along N.

The emulated path's values of a block in the codes' format are its codes
dequantized; an operand carries its original values (``BlockOperand.wide``)
and the GEMM writes the values its BF16 loop multiplies, before the launch
and only in the blocks that loop reads (kernels/wide.py): where every pair
runs in FP8, as in training, it writes none. Where no pair runs in FP8, the
16-bit loop reads an operand with no block in its codes' format as it came.

Ragged shapes: M, N and K are padded with zeros to multiples of 128 (a copy
of each operand, codes, wide values, scales and representations); padded
elements are zero in both paths, so the product is unchanged and sliced.

Sharded operands (``_BlockGemm``, through kernels/sharding.py's
``per_shard``, as the per-channel GEMM): under ``jit`` each device runs the
kernel on its shards. Rows of A and of B stay sharded (the output is sharded
[M, N] alike) where each shard holds whole 128-row blocks (any rows for 1x128
tiles), and K where both operands split it alike in whole 128-blocks; each
device's partial output is then written in float32 and summed across K's
mesh axes before the cast to the output's dtype. The per-block
grids split along the codes' mesh axes, so a shard's scales and
representations are its blocks'. Any other sharded dimension (a mesh that
does not divide it, shards that would cut blocks) is gathered.

Hopper-only (sm_90), and Mosaic GPU has no public interpret mode:
``block_gemm_reference``, the jnp twin with the same per-step promotion,
runs elsewhere and is what the GPU tests compare the kernel with;
``block_gemm_reference_per_shard`` runs the twin under the kernel's sharding
rule, which is how a CPU tests the rule.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import mosaic_gpu as plgpu
from jax.sharding import PartitionSpec as P

from mor_jax import _numerics
from mor_jax.kernels import gemm
from mor_jax.kernels import sharding
from mor_jax.kernels import wide as wide_values

# A block's representation; the codes of a three-way SubTensorMoR choice.
REP_E4M3, REP_E5M2, REP_BF16 = 0, 1, 2
_REP_NAMES = {"E4M3": REP_E4M3, "E5M2": REP_E5M2, "BF16": REP_BF16}
# Edge of a block, and the K of one promotion step.
BLOCK = 128
# Output rows per compute warpgroup: two per thread block split its 128 rows.
_COMPUTE_WGS = 2
_WG_ROWS = BLOCK // _COMPUTE_WGS
# K per pipeline step of the BF16 loop: 128 bytes of a row, as in gemm.py.
_WIDE_K = 64


@dataclasses.dataclass(frozen=True, kw_only=True)
class BlockGemmConfig:
  """Tuning of ``block_gemm`` (hashable: part of every cache key).

  The two loops take turns in the same shared memory (each allocates its
  buffers per tile), so each can be deep: at (16384, 8192, 8192) on the
  H200 this took 100% BF16 blocks from 7.62 to 3.48 ms and all-E4M3 from
  2.76 to 2.64 ms (docs/benchmarks.md).

  Attributes:
    stages: pipeline depth of the FP8 loop.
    wide_stages: pipeline depth of the BF16 loop.
    grid_tile_width: output tiles per band of the planar-snake order.
    wide: the tiling of kernels/gemm.py's 16-bit loop, which the kernel runs
      instead of its block loops when no block pair of the GEMM runs in FP8
      (an operand rejected whole, or all pairs BF16), where that tiling
      divides the padded shape (its cluster is dropped where only that does
      not); None: the block loops always. Decided on the device, in the
      kernel, as the loops are. Paired, it runs in the pairs' clusters
      along N (a cluster along M is refused), or not at all where that
      tiling does not divide.
    paired: output tiles in pairs along N, in clusters of two that share
      A's tiles; each pair's K blocks run in FP8 only where both tiles'
      do. ``block_gemm_reference(paired=...)`` follows the same plan.
  """

  # Four FP8 stages fit beside the BF16 loop's sums, and a power of two
  # makes each step's slot arithmetic shorter: 1.982 -> 1.886 ms against
  # three at (16384, 8192, 8192), all E4M3 (H200, docs/benchmarks.md).
  stages: int = 4
  wide_stages: int = 4
  grid_tile_width: int = 8
  # The block loops' 128 x 128 tiles took BF16's time x 1.10-1.14 with all
  # pairs BF16; the per-channel GEMM's 16-bit loop on 128 x 256 tiles x
  # 1.03-1.04 without clusters, x 1.02-1.03 in clusters of two. Unpaired,
  # the cluster launch is the block loops' too, and slowed their kernel by
  # 3% at 0% BF16 blocks, 1% at 10% and 5-7% at 50% (H200, (16384, 8192,
  # 8192), docs/benchmarks.md). Paired, the loop runs in the pairs'
  # clusters along N: x 1.047 against x 1.038 unpaired (H100, one run).
  wide: gemm.GemmConfig | None = gemm.GemmConfig(cluster=None)
  # Tiles (i, 2j) and (i, 2j + 1) in a cluster of two, A's tiles multicast
  # to both, a K block in FP8 only where it is for both (the module's
  # docstring). At (16384, 8192, 8192) on an H100, in one process, over
  # cuBLAS BF16's time, paired against not: 0.670x / 0.741x with no BF16
  # block of X, 0.802x / 0.798x with 10%, 1.020x / 0.994x with half, 1.047x
  # / 1.038x with all; gpu1b_wide's mor_block step 204.9 / 212.7 ms. Where
  # the padded N is an odd number of tiles, tiles are not paired.
  paired: bool = True

  def __post_init__(self):
    for f in dataclasses.fields(self):
      v = getattr(self, f.name)
      if f.name == "paired":
        if not isinstance(v, bool):
          raise ValueError(f"BlockGemmConfig.paired must be a bool, got "
                           f"{v!r}.")
      elif f.name == "wide":
        if v is not None and not isinstance(v, gemm.GemmConfig):
          raise ValueError(f"BlockGemmConfig.wide must be a GemmConfig or "
                           f"None, got {v!r}.")
      elif isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"BlockGemmConfig.{f.name} must be a positive int, "
                         f"got {v!r}.")
    if self.paired and self.wide is not None and self.wide.cluster == "m":
      raise ValueError("BlockGemmConfig.paired clusters tiles along N; its "
                       "wide loop cannot run in clusters along M.")
    if self.wide_stages < 2:  # one wgmma stays in flight in the BF16 loop
      raise ValueError(f"BlockGemmConfig.wide_stages must be at least 2, got "
                       f"{self.wide_stages}.")


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["codes", "recip", "rep", "wide"],
                   meta_fields=["transposed"])
@dataclasses.dataclass(frozen=True)
class BlockOperand:
  """One operand on its K-major view [rows, K], in blocks along K of 128.

  Attributes:
    codes: [rows, K] FP8 codes (E4M3 or E5M2), valid where ``rep`` says so.
    recip: float32 reciprocals of the scales (what dequantization multiplies
      by): [cdiv(rows, 128), cdiv(K, 128)] for 128x128 blocks, or
      [rows, cdiv(K, 128)] for 1x128 tiles.
    rep: int32 representation per block (``REP_*``), shaped like ``recip``.
    wide: [rows, K], or [K, rows] if ``transposed``, in a 16-bit dtype
      (the kernel) or any float dtype (the reference): the emulated path's
      values where a block is not in the codes' format (the original values
      of BF16 blocks, another FP8 format's dequantized); ignored where it is
      (the values there are the codes dequantized: ``values``). So an
      operand of a two-way recipe passes its original values as they came.
    transposed: ``wide`` is stored [K, rows] (static). The BF16 loop reads
      16-bit tiles in either layout, so the operand of a transposed view
      needs only its one-byte codes transposed (FP8 tensor cores read
      K-major tiles only).
  """

  codes: jax.Array
  recip: jax.Array
  rep: jax.Array
  wide: jax.Array
  transposed: bool = False

  @property
  def values(self) -> jax.Array:
    """The emulated path's operand on the [rows, K] view, in ``wide``'s
    dtype: the codes dequantized in the blocks in their format
    (``mor_jax._numerics.dequantize_values``), ``wide`` elsewhere."""
    rows, k = self.codes.shape
    per_element = lambda g: jnp.repeat(g, BLOCK, axis=1)[:, :k]  # noqa: E731
    deq = _numerics.dequantize_values(
        self.codes.astype(jnp.float32),
        per_element(_per_row(self.recip.astype(jnp.float32), rows)),
        self.wide.dtype)
    return jnp.where(per_element(_own(self)), deq,
                     self.wide.T if self.transposed else self.wide)


def representation_codes(choice: jax.Array, names) -> jax.Array:
  """MoR's ``choice`` (indices into ``names``) as ``REP_*`` codes."""
  table = jnp.asarray([_REP_NAMES[n] for n in names], jnp.int32)
  return table[choice]


def _per_row(x: jax.Array, rows: int) -> jax.Array:
  """Per-block [cdiv(rows, 128), Kb] or per-row [rows, Kb] -> per row."""
  return x if x.shape[0] == rows else jnp.repeat(x, BLOCK, axis=0)[:rows]


def _own(op: BlockOperand) -> jax.Array:
  """[rows, cdiv(K, 128)] bool: the row's block is in ``codes``' format."""
  own = REP_E4M3 if op.codes.dtype == jnp.float8_e4m3fn else REP_E5M2
  return _per_row(op.rep, op.codes.shape[0]) == own


def _fp8_blocks(op: BlockOperand, rows_p: int, kb: int) -> jax.Array:
  """[rows_p // 128, kb] bool: the 128-row block is all in ``codes``' format.

  Padded rows count as FP8 (their codes and wide values are both zero).
  """
  ok = _own(op)
  ok = jnp.pad(ok, ((0, rows_p - ok.shape[0]), (0, kb - ok.shape[1])),
               constant_values=True)
  return ok.reshape(rows_p // BLOCK, BLOCK, kb).all(axis=1)


def _pairs(a: BlockOperand, b: BlockOperand, mp: int, np_: int, kb: int,
           paired: bool = False) -> jax.Array:
  """[mp/128, np/128, kb] bool: the K step of a tile runs in FP8.

  ``paired`` (where ``_paired(np_)``): tiles (i, 2j) and (i, 2j + 1) run a
  K step in FP8 only where both do.
  """
  fa, fb = _fp8_blocks(a, mp, kb), _fp8_blocks(b, np_, kb)
  if a.codes.dtype == b.codes.dtype == jnp.float8_e5m2:
    return jnp.zeros((mp // BLOCK, np_ // BLOCK, kb), bool)
  if paired and _paired(np_):
    # Of W's blocks, each pair of neighbouring block rows: FP8 where both are.
    fb = jnp.repeat(fb.reshape(-1, 2, kb).all(axis=1), 2, axis=0)
  return fa[:, None, :] & fb[None, :, :]


def _paired(np_: int) -> bool:
  """Whether tiles of a padded N of ``np_`` can pair: an even count."""
  return np_ % (2 * BLOCK) == 0


def _check(a: BlockOperand, b: BlockOperand) -> None:
  for name, op in (("a", a), ("b", b)):
    rows, k = op.codes.shape
    kb = -(-k // BLOCK)
    if op.codes.dtype not in (jnp.float8_e4m3fn, jnp.float8_e5m2):
      raise TypeError(f"{name}.codes must be float8_e4m3fn or float8_e5m2, "
                      f"got {op.codes.dtype}.")
    if op.wide.shape != (op.codes.shape[::-1] if op.transposed else
                         op.codes.shape):
      raise ValueError(f"{name}.wide {op.wide.shape} (transposed="
                       f"{op.transposed}) must hold "
                       f"{name}.codes' [rows, K] {op.codes.shape}.")
    if (op.recip.shape != op.rep.shape or op.recip.shape[1] != kb or
        op.recip.shape[0] not in (rows, -(-rows // BLOCK))):
      raise ValueError(
          f"{name}.recip {op.recip.shape} and {name}.rep {op.rep.shape} must "
          f"both be [{-(-rows // BLOCK)} or {rows}, {kb}] for codes "
          f"{op.codes.shape}.")
  if a.codes.shape[1] != b.codes.shape[1]:
    raise ValueError(f"a and b contract different K: {a.codes.shape} and "
                     f"{b.codes.shape}.")


def _kernel(*refs, cfg: BlockGemmConfig, stages: tuple[int, int],
            blocked: tuple[bool, bool], transposed: tuple[bool, bool],
            wide: gemm.GemmConfig | None):
  """The block loops, or (``wide``: the case in ``refs[0]`` nonzero)
  gemm.py's 16-bit loop over the whole output; each allocates its own
  shared memory.

  With ``wide``, refs end in the operands as they came (``_local_block_gemm``
  passes them after the written values): case 1 + i + 2 j reads A's as they
  came if i, B's if j, where the operand has no block in its codes' format.
  """
  if wide is None:
    _block_tiles(*refs, cfg=cfg, stages=stages, blocked=blocked,
                 transposed=transposed)
    return
  case_ref, *refs, a_in, b_in, out_ref = refs
  a_ref, b_ref = refs[-2:]
  lax.switch(case_ref[...], [
      functools.partial(_block_tiles, *refs, out_ref, cfg=cfg, stages=stages,
                        blocked=blocked, transposed=transposed)] + [
      functools.partial(gemm.wide_tiles, a, b, out_ref, cfg=wide,
                        transposed=transposed)
      for b in (b_ref, b_in) for a in (a_ref, a_in)])


def _block_tiles(order_ref, n8_ref, a8_ref, b8_ref, ra_ref, rb_ref, a_ref,
                 b_ref, out_ref, *, cfg: BlockGemmConfig,
                 stages: tuple[int, int], blocked: tuple[bool, bool],
                 transposed: tuple[bool, bool]):
  """Every output tile through the FP8 loop, then the BF16 loop."""
  et_m, et_n = _out_tile(out_ref.dtype)
  pl.run_scoped(
      functools.partial(_block_loops, order_ref, n8_ref, a8_ref, b8_ref,
                        ra_ref, rb_ref, a_ref, b_ref, out_ref, cfg=cfg,
                        stages=stages, blocked=blocked, transposed=transposed),
      out_smem=plgpu.SMEM((_COMPUTE_WGS, 2, et_m, et_n), out_ref.dtype,
                          transforms=gemm.smem_transforms(et_n,
                                                          out_ref.dtype)),
      sum_smem=plgpu.SMEM((_COMPUTE_WGS, _WG_ROWS, BLOCK), jnp.float32,
                          transforms=gemm.smem_transforms(BLOCK, jnp.float32)),
      order_smem=plgpu.SMEM((order_ref.shape[-1],), jnp.int32),
      order_barrier=plgpu.Barrier(num_barriers=1),
      collective_axes="wg")


def _block_loops(order_ref, n8_ref, a8_ref, b8_ref, ra_ref, rb_ref, a_ref,
                 b_ref, out_ref, out_smem, sum_smem, order_smem, order_barrier,
                 *, cfg: BlockGemmConfig, stages: tuple[int, int],
                 blocked: tuple[bool, bool], transposed: tuple[bool, bool]):
  mp, kp = a8_ref.shape
  np_ = b8_ref.shape[0]
  m_iters, n_iters, kb = mp // BLOCK, np_ // BLOCK, kp // BLOCK
  wr = _WG_ROWS

  def pipeline(body, compute_context, specs, steps, depth):
    return plgpu.emit_pipeline_warp_specialized(
        body, grid=(steps,), memory_registers=40, in_specs=specs,
        wg_axis="wg", num_compute_wgs=_COMPUTE_WGS,
        max_concurrent_steps=depth, compute_context=compute_context)

  def spec(shape, index_map, dtype=None, delay_release=0, shared=False):
    transforms = () if dtype is None else gemm.smem_transforms(shape[1], dtype)
    return plgpu.BlockSpec(shape, index_map, transforms=transforms,
                           memory_space=plgpu.SMEM,
                           delay_release=delay_release,
                           collective_axes=("cluster",) if shared else ())

  # The index maps run in the TMA warpgroup only, and read the tile's list
  # of K blocks from shared memory (order_smem, copied in once per tile).
  def fp8_specs():
    # Step s runs K block order[s]: the tile's FP8 steps come first. Each
    # step reads its wgmma's result at once, so no slot is released late.
    kk = lambda s: order_smem[s]  # noqa: E731
    return [
        spec((BLOCK, BLOCK), lambda s: (0, kk(s)), a8_ref.dtype,
             shared=cfg.paired),   # A8
        spec((BLOCK, BLOCK), lambda s: (0, kk(s)), b8_ref.dtype),   # B8
        spec((1, BLOCK), lambda s: (kk(s), 0)),   # ra^T: this step's rows
        spec((1, BLOCK), lambda s: (kk(s), 0)),   # rb^T: this step's columns
    ]

  def wide_specs(n8):
    # Two K tiles of 64 per K block: step s is half s % 2 of the block. One
    # wgmma stays in flight while the next is issued (delay_release=1). A
    # transposed operand's tiles are [64 of K, 128 rows].
    halves = BLOCK // _WIDE_K
    kk = lambda s: order_smem[n8 + s // halves] * halves + s % halves  # noqa: E731
    return [spec((_WIDE_K, BLOCK), lambda s: (kk(s), 0), ref.dtype, 1, sh)
            if t else
            spec((BLOCK, _WIDE_K), lambda s: (0, kk(s)), ref.dtype, 1, sh)
            for ref, t, sh in ((a_ref, transposed[0], cfg.paired),
                               (b_ref, transposed[1], False))]

  # Each loop allocates its buffers when it runs (pl.run_scoped inside the
  # pipeline), so the two take turns in the same shared memory.
  wg = lax.axis_index("wg")
  my_rows = pl.ds(wg * wr, wr)  # this warpgroup's rows of the tile

  # Paired, a cluster takes two neighbouring tiles of a row; else each block
  # takes its own tiles, also where the launch pairs blocks in clusters for
  # the 16-bit loop.
  pairs = 2 if cfg.paired else 1

  @plgpu.nd_loop((m_iters * n_iters // pairs,),
                 collective_axes="grid" if cfg.paired else
                 ("grid", "cluster"))
  def _(info):
    (lin,) = info.index
    im, jn = plgpu.planar_snake(lin, (m_iters, n_iters // pairs), 1,
                                cfg.grid_tile_width)
    if cfg.paired:
      jn = jn * 2 + lax.axis_index("cluster")
    rows, cols = pl.ds(im * BLOCK, BLOCK), pl.ds(jn * BLOCK, BLOCK)
    n8 = n8_ref[im, jn]

    def write_out(acc):  # this warpgroup's rows of the tile, from either loop
      gemm.write_tile(acc.astype(out_ref.dtype), out_smem, wg,
                      out_ref.at[rows, cols].at[my_rows])

    @pl.when(wg == _COMPUTE_WGS)  # the TMA warpgroup
    def _():
      plgpu.copy_gmem_to_smem(order_ref.at[im, jn], order_smem,
                              order_barrier.at[0])
      plgpu.barrier_wait(order_barrier.at[0])

    def fp8_context(run_pipeline):
      acc = run_pipeline(jnp.zeros((wr, BLOCK), jnp.float32))

      @pl.when(n8 == kb)  # no BF16 step: the tile is done
      def _():
        write_out(acc)

      @pl.when(n8 < kb)  # parked for the BF16 loop's accumulator
      def _():
        sum_smem[wg] = acc

    def fp8_step(_, a8, b8, ra, rb, acc):
      # Where one operand's 128x128 block has one scale, it joins the
      # other's per-row (or per-column) factors, and each element takes one
      # fused multiply-add: 2.765 -> 2.023 ms at (16384, 8192, 8192), all
      # E4M3, 1.14x -> 1.56x cuBLAS BF16 (docs/benchmarks.md). The factors
      # are loaded and multiplied before the wgmma is issued, so that their
      # latency passes under it: 1.982 -> 1.909 ms.
      rows_in = lambda: gemm.load_with_layout(  # noqa: E731
          ra.at[0, my_rows], plgpu.Layout.WGMMA.reduce(1))
      cols_in = lambda: gemm.load_with_layout(  # noqa: E731
          rb.at[0], plgpu.Layout.WGMMA.reduce(0))
      if blocked[1]:
        factors = [(rows_in() * rb[0, 0], 0)]
      elif blocked[0]:
        factors = [(cols_in() * ra[0, wg * wr], 1)]
      else:
        factors = [(rows_in(), 0), (cols_in(), 1)]

      # A fresh accumulator per K block: its scales apply to this block
      # only, and the float32 sum outside the tensor cores is exact. The
      # promotion bounds the loop: both warpgroups wait for their wgmmas,
      # then issue their multiply-adds and the next step's addressing
      # (about 150 instructions a warp) while the tensor pipe idles (65%
      # busy; Nsight Compute on the H200). Promoting step s - 1 while step
      # s's wgmma runs, the product carried in registers, was slower; two K
      # blocks per step, the first promoted while the second's wgmma runs,
      # no faster (docs/benchmarks.md).
      def mma(part_ref):
        plgpu.wgmma(part_ref, a8.at[my_rows], b8.T)
        return part_ref[...]  # waits for the wgmma

      part = pl.run_scoped(mma, plgpu.ACC((wr, BLOCK), jnp.float32))
      for factor, dim in factors:
        part = part * lax.broadcast_in_dim(factor, part.shape, [dim])
      return acc + part

    pipeline(fp8_step, fp8_context, fp8_specs(), n8, stages[0])(
        a8_ref.at[rows, :], b8_ref.at[cols, :], ra_ref.at[:, rows],
        rb_ref.at[:, cols])

    def wide_context(run_pipeline):
      # BF16 products need no promotion: they sum in the tensor cores'
      # float32 accumulator, and the FP8 loop's sum joins them at the end.
      @functools.partial(pl.run_scoped,
                         acc_ref=plgpu.ACC((wr, BLOCK), jnp.float32))
      def _(acc_ref):
        run_pipeline(acc_ref)
        write_out(acc_ref[...] + sum_smem[wg])

    def wide_step(_, a, b, acc_ref):
      # wgmma takes A as [64 rows, tk] and B as [tk, 128]; 16-bit tiles
      # stored either way.
      a = a.at[:, my_rows].T if transposed[0] else a.at[my_rows]
      plgpu.wgmma(acc_ref, a, b if transposed[1] else b.T)
      plgpu.wgmma_wait(1)
      return acc_ref

    a_tiles, b_tiles = (ref.at[:, r] if t else ref.at[r, :]
                        for ref, r, t in ((a_ref, rows, transposed[0]),
                                          (b_ref, cols, transposed[1])))
    # A tile whose K steps all ran in FP8 (most of them, in training) sets
    # up no BF16 loop and parks no sum: all E4M3 at (16384, 8192, 8192) on
    # the H200, 0.736x and 0.745x cuBLAS BF16's time against 0.749x and
    # 0.758x, in turns (docs/benchmarks.md).
    @pl.when(n8 < kb)
    def _():
      pipeline(wide_step, wide_context, wide_specs(n8),
               (BLOCK // _WIDE_K) * (kb - n8), stages[1])(a_tiles, b_tiles)

  plgpu.wait_smem_to_gmem(0, wait_read_only=True)


# Bytes of a row of the output tiles: 64, half a swizzle, which leaves room
# for the loops' stages beside the sums.
_OUT_ROW_BYTES = 64


def _out_tile(out_dtype) -> tuple[int, int]:
  """The output leaves in tiles of a warpgroup's 64 rows (a WGMMA-layout
  array splits only along whole 64-row groups) by 64 bytes."""
  return _WG_ROWS, _OUT_ROW_BYTES // jnp.dtype(out_dtype).itemsize


def _stages(cfg: BlockGemmConfig, kb: int) -> tuple[int, int]:
  """Pipeline depths of the FP8 and the BF16 loop that fit beside the
  output tiles, the sums, the tile's list of K blocks and the barriers."""
  out_bytes = _COMPUTE_WGS * 2 * _WG_ROWS * _OUT_ROW_BYTES
  sum_bytes = _COMPUTE_WGS * _WG_ROWS * BLOCK * 4
  order_bytes = 4 * gemm.round_up(kb, 4)
  room = (gemm.SMEM_BYTES - out_bytes - sum_bytes - order_bytes -
          2 * gemm.BARRIER_BYTES)
  # Per step: the FP8 loop's two 128x128 code tiles and two rows of scales;
  # the BF16 loop's two 128x64 tiles (at least two: one wgmma in flight).
  fp8, wide = 2 * BLOCK * BLOCK + 2 * BLOCK * 4, 2 * BLOCK * _WIDE_K * 2
  return (max(1, min(cfg.stages, room // fp8)),
          max(2, min(cfg.wide_stages, room // wide)))


def _wide_config(cfg: gemm.GemmConfig | None, mp: int, np_: int,
                 kp: int) -> gemm.GemmConfig | None:
  """``cfg``, without its cluster if only that does not divide the padded
  shape, or None where neither does (the block loops then run alone)."""
  for c in (cfg, None if cfg is None else
            dataclasses.replace(cfg, cluster=None)):
    if c is not None and (mp % c.m_multiple == np_ % c.n_multiple ==
                          kp % c.tile_k_wide == 0):
      return c
  return None


def _launch_wide(cfg: BlockGemmConfig, mp: int, np_: int,
                 kp: int) -> gemm.GemmConfig | None:
  """The 16-bit loop's tiling in ``cfg``'s launch (``_wide_config``). Paired,
  the launch's clusters are the pairs: the loop runs in them along N, or
  not at all where its clustered tile does not divide the padded shape."""
  if not cfg.paired or cfg.wide is None:
    return _wide_config(cfg.wide, mp, np_, kp)
  wide = _wide_config(dataclasses.replace(cfg.wide, cluster="n"), mp, np_, kp)
  return wide if wide is not None and wide.cluster == "n" else None


def _plan(fp8: jax.Array, kb: int):
  """From ``_pairs``: (order [Mb, Nb, >= Kb] int32: per output tile, its FP8
  K blocks first, then the others, each in K order, padded to 16 bytes for
  TMA; n8 [Mb, Nb] int32: how many run in FP8)."""
  order = jnp.argsort(~fp8, axis=-1, stable=True).astype(jnp.int32)
  order = jnp.pad(order, ((0, 0), (0, 0), (0, gemm.round_up(kb, 4) - kb)))
  return order, fp8.sum(axis=-1, dtype=jnp.int32)


def _padded(op: BlockOperand, rows_p: int, kp: int):
  """codes [rows_p, kp]; wide in its layout, [rows_p, kp] or [kp, rows_p];
  recip^T [kp / 128, rows_p] per row."""
  rows, k = op.codes.shape
  widths = ((0, rows_p - rows), (0, kp - k))
  return (jnp.pad(op.codes, widths),
          jnp.pad(op.wide, widths[::-1] if op.transposed else widths),
          _padded_grid(op.recip.astype(jnp.float32), op, rows_p, kp).T)


def _padded_grid(grid: jax.Array, op: BlockOperand, rows_p: int,
                 kp: int) -> jax.Array:
  """A per-block grid of ``op`` per row, padded to [rows_p, kp / 128]."""
  g = _per_row(grid, op.codes.shape[0])
  return jnp.pad(g, ((0, rows_p - g.shape[0]), (0, kp // BLOCK - g.shape[1])))


def _local_block_gemm(a: BlockOperand, b: BlockOperand, *, out_dtype,
                      config: BlockGemmConfig) -> jax.Array:
  """The kernel on one device's operands, padded to whole blocks."""
  _check(a, b)
  m, k = a.codes.shape
  n = b.codes.shape[0]
  mp, np_, kp = (gemm.round_up(m, BLOCK), gemm.round_up(n, BLOCK),
                 gemm.round_up(k, BLOCK))
  if config.paired and not _paired(np_):
    config = dataclasses.replace(config, paired=False)
  fp8 = _pairs(a, b, mp, np_, kp // BLOCK, config.paired)
  order, n8 = _plan(fp8, kp // BLOCK)
  a8, a_in, ra = _padded(a, mp, kp)
  b8, b_in, rb = _padded(b, np_, kp)
  wide = _launch_wide(config, mp, np_, kp)
  # The 16-bit loop over the whole output (no pair in FP8) reads an operand
  # with no block in its codes' format as it came.
  own = [_own(op) for op in (a, b)]
  whole = jnp.logical_not(fp8.any()) & (wide is not None)
  direct = [whole & jnp.logical_not(o.any()) for o in own]
  # A's block (i, k) is read where a pair (i, j, k) runs in BF16; B's alike.
  reads = (jnp.logical_not(fp8.all(axis=1)) & jnp.logical_not(direct[0]),
           jnp.logical_not(fp8.all(axis=0)) & jnp.logical_not(direct[1]))
  aw, bw = wide_values.values(*(wide_values.Request(
      codes, r.T, _padded_grid(o, op, codes.shape[0], kp), w, read,
      op.transposed)
      for op, o, codes, r, w, read in ((a, own[0], a8, ra, a_in, reads[0]),
                                       (b, own[1], b8, rb, b_in, reads[1]))))
  args = (order, n8, a8, b8, ra, rb, aw, bw)
  if wide is not None:
    case = jnp.where(whole, 1 + direct[0] + 2 * direct[1], 0)
    args = (case.astype(jnp.int32),) + args + (a_in, b_in)
  cluster = (2 if config.paired else
             1 if wide is None else wide.cluster_size)
  cores = getattr(jax.devices()[0], "core_count", 132)
  call = plgpu.kernel(
      functools.partial(_kernel, cfg=config, stages=_stages(config, kp // BLOCK),
                        blocked=(_rows_per_block(a.codes, a.recip) == BLOCK,
                                 _rows_per_block(b.codes, b.recip) == BLOCK),
                        transposed=(a.transposed, b.transposed), wide=wide),
      out_type=jax.ShapeDtypeStruct((mp, np_), out_dtype),
      grid=(cores // cluster,),
      grid_names=("grid",),
      cluster=(cluster,),
      cluster_names=("cluster",),
      num_threads=_COMPUTE_WGS + 1,
      thread_name="wg",
      compiler_params=plgpu.CompilerParams(
          lowering_semantics=plgpu.LoweringSemantics.Warpgroup),
  )
  y = call(*args)
  return y[:m, :n] if (mp, np_) != (m, n) else y


def _whole_blocks(mesh, axes: tuple[str, ...], size: int,
                  block: int) -> tuple[str, ...]:
  """``axes`` where each of their shards holds whole blocks, else ()."""
  shards = math.prod(mesh.shape[ax] for ax in axes)
  return axes if size % (shards * block) == 0 else ()


def _rows_per_block(codes, recip) -> int:
  """1 for an operand in 1x128 tiles (a scale per row), else 128."""
  return 1 if recip.shape[0] == codes.shape[0] else BLOCK


@dataclasses.dataclass(frozen=True)
class _BlockGemm:
  """The block GEMM per shard: rows of A and B stay put, a sharded K's
  partial outputs are summed in float32; a dimension stays sharded only in
  shards of whole blocks, so that the per-block grids split along the
  codes' shard edges.

  ``config`` None runs the jnp twin per shard (how a CPU tests the rule).
  """

  out_dtype: jnp.dtype
  config: BlockGemmConfig | None
  transposed: tuple[bool, bool]  # each operand's wide, as stored

  @property
  def rule(self) -> str:
    # Per operand: codes, recip, rep, wide. The grids have their own factors
    # (as in sharding.BlockwiseOp): ``plan`` ties them to the codes' axes.
    a = "k m" if self.transposed[0] else "m k"
    b = "k n" if self.transposed[1] else "n k"
    return f"m k, i j, i j, {a}, n k, u v, u v, {b} -> m n"

  def _operands(self, args) -> tuple[BlockOperand, BlockOperand]:
    return (BlockOperand(*args[:4], transposed=self.transposed[0]),
            BlockOperand(*args[4:], transposed=self.transposed[1]))

  def local(self, *args, out_dtype=None):
    a, b = self._operands(args)
    out_dtype = self.out_dtype if out_dtype is None else out_dtype
    if self.config is None:
      return (block_gemm_reference(a, b, out_dtype=out_dtype,
                                   paired=self._paired),)
    return (_local_block_gemm(a, b, out_dtype=out_dtype,
                              config=self.config),)

  def batchable_local(self, *args):
    return (block_gemm_reference(*self._operands(args),
                                 out_dtype=self.out_dtype,
                                 paired=self._paired),)

  @property
  def _paired(self) -> bool:
    """The twin runs the kernel's plan (the default's, without a config)."""
    return (self.config or BlockGemmConfig()).paired

  def plan(self, arg_shapes):
    a_codes, a_recip, b_codes, b_recip = (arg_shapes[i] for i in (0, 1, 4, 5))
    mesh, (ma, ka) = sharding.layout(a_codes)
    _, (na, kb) = sharding.layout(b_codes)
    (m, k), n = a_codes.shape, b_codes.shape[0]
    ma = _whole_blocks(mesh, ma, m, _rows_per_block(a_codes, a_recip))
    # A mesh axis can split one dimension of the output.
    na = _whole_blocks(mesh, tuple(ax for ax in na if ax not in ma), n,
                       _rows_per_block(b_codes, b_recip))
    # K is summed only where both operands split it alike.
    ks = ka if ka == kb and not set(ka) & set(ma + na) else ()
    ks = _whole_blocks(mesh, ks, k, BLOCK)
    m_, n_, k_ = (sharding.entry(x) for x in (ma, na, ks))
    wide = [P(k_, r) if t else P(r, k_)
            for r, t in zip((m_, n_), self.transposed)]
    args = sharding.named(mesh, *(P(m_, k_),) * 3, wide[0],
                          *(P(n_, k_),) * 3, wide[1])
    results = sharding.named(mesh, P(m_, n_))
    return sharding.k_summed_plan(self, mesh, results, args, ks)


def _per_shard(a: BlockOperand, b: BlockOperand, out_dtype,
               config: BlockGemmConfig | None) -> jax.Array:
  op = _BlockGemm(jnp.dtype(out_dtype), config, (a.transposed, b.transposed))
  args = [(x.codes, x.recip.astype(jnp.float32), x.rep.astype(jnp.int32),
           x.wide) for x in (a, b)]
  return sharding.per_shard(op)(*args[0], *args[1])[0]


@functools.partial(jax.jit, static_argnames=("out_dtype", "config"))
def block_gemm(a: BlockOperand, b: BlockOperand, *, out_dtype,
               config: BlockGemmConfig = BlockGemmConfig()) -> jax.Array:
  """Y = A B^T from two block-represented operands; Hopper GPUs only.

  Args:
    a: the left operand, [M, K] (128x128 blocks or 1x128 tiles).
    b: the right operand, [N, K] (128x128 blocks).
    out_dtype: the output's dtype.
    config: the tuning.

  Returns:
    [M, N] in ``out_dtype``, as ``block_gemm_reference`` computes it up to
    the order of float32 additions. Under ``jit`` with operands sharded by
    named mesh axes it runs per shard: M and N stay sharded where each shard
    holds whole 128-row blocks (any rows for 1x128 tiles), K where both
    operands split it alike in whole 128-blocks, its partial outputs summed
    across devices in float32 (then cast to ``out_dtype``); any other
    sharded dimension is gathered. Under ``vmap``, ``block_gemm_reference``
    runs.
  """
  _check(a, b)
  if a.wide.dtype != b.wide.dtype or jnp.dtype(a.wide.dtype).itemsize != 2:
    raise TypeError(f"block_gemm's wide operands must share a 16-bit dtype, "
                    f"got {a.wide.dtype} and {b.wide.dtype}.")
  return _per_shard(a, b, out_dtype, config)


def block_gemm_reference_per_shard(a: BlockOperand, b: BlockOperand, *,
                                   out_dtype) -> jax.Array:
  """``block_gemm``'s partitioning around ``block_gemm_reference``.

  The twin per shard, as ``block_gemm`` runs the kernel: how a device
  without the kernel (a CPU) tests the sharding rule.
  """
  _check(a, b)
  return _per_shard(a, b, out_dtype, None)


def block_gemm_reference(a: BlockOperand, b: BlockOperand, *, out_dtype,
                         precision=None, paired: bool | None = None
                         ) -> jax.Array:
  """``block_gemm`` in jnp, with its per-K-block promotion; runs anywhere.

  Every K block pair that runs in FP8 is a float32 dot of the codes, scaled
  by the two blocks' reciprocals and added to a float32 sum in K order; the
  BF16 pairs' products are summed apart and the two sums added, as the
  kernel's two loops do. For float64 values (the kernel's are 16-bit) the
  scaling and both sums are float64, as the emulated path's dot.
  ``precision`` HIGHEST makes a GPU's float32 dots exact in their inputs.
  ``paired`` runs the pairs as ``BlockGemmConfig(paired=...)`` does (None:
  as the default configuration does).
  """
  _check(a, b)
  m, k = a.codes.shape
  n = b.codes.shape[0]
  mp, np_, kp = (gemm.round_up(m, BLOCK), gemm.round_up(n, BLOCK),
                 gemm.round_up(k, BLOCK))
  kb = kp // BLOCK
  if paired is None:
    paired = BlockGemmConfig().paired
  on = jnp.moveaxis(_pairs(a, b, mp, np_, kb, paired), 2, 0)  # [kb, Mb, Nb]
  a8, _, ra = _padded(a, mp, kp)
  b8, _, rb = _padded(b, np_, kp)
  aw, bw = (jnp.pad(op.values, ((0, rows - op.codes.shape[0]),
                                (0, kp - k)))
            for op, rows in ((a, mp), (b, np_)))
  dtype = jnp.result_type(aw, bw)
  aw, bw = aw.astype(dtype), bw.astype(dtype)
  blocks = lambda x: x.reshape(x.shape[0], kb, BLOCK).swapaxes(0, 1)  # noqa: E731
  acc_t = gemm.accumulator_dtype(dtype)
  dot = functools.partial(lax.dot_general, dimension_numbers=gemm.TN,
                          precision=precision)

  # The step's pairs, one per output element (made per step: at full size
  # all of K's would take gigabytes).
  expand = lambda on: jnp.repeat(jnp.repeat(on, BLOCK, 0), BLOCK, 1)  # noqa: E731

  def fp8_step(acc, xs):
    pa, pb, sa, sb, on = xs
    # 128 products of codes: exact enough in float32 for any dtype.
    part = dot(pa.astype(jnp.float32), pb.astype(jnp.float32),
               preferred_element_type=jnp.float32)
    scaled = gemm.scale_rows_and_columns(
        *(v.astype(acc_t) for v in (part, sa, sb)))
    return acc + jnp.where(expand(on), scaled, 0.0), None

  def wide_step(acc, xs):
    pa, pb, on = xs
    return acc + jnp.where(expand(on), 0.0,
                           dot(pa, pb, preferred_element_type=acc_t)), None

  zero = jnp.zeros((mp, np_), acc_t)
  acc8, _ = lax.scan(fp8_step, zero, (blocks(a8), blocks(b8), ra, rb, on))
  acc, _ = lax.scan(wide_step, zero, (blocks(aw), blocks(bw), on))
  return (acc + acc8)[:m, :n].astype(out_dtype)
