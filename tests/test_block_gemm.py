"""The block-scaled, mixed-representation GEMM (kernels/block_gemm.py).

On a CPU: its jnp twin ``block_gemm_reference`` against a NumPy float64
reference written here, and against mor_jax's emulated path (the operands
that ``mor_quantize`` with 128x128 blocks or 1x128 tiles gives), on ragged
shapes with 0%, 10%, 50% and 100% of each operand's blocks in BF16; the
paired tiles' plan (``BlockGemmConfig.paired``) against NumPy's; the twin
per shard under ``vmap``. On a Hopper GPU (marker ``gpu``): the
compiled kernel against the twin, and per shard on two GPUs against itself
on one (tests/test_kernels_sharding.py tests the rule on CPU devices).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import mor_jax
from mor_jax.kernels import block_gemm as bg
from mor_jax.kernels import gemm
from mor_jax.kernels import transpose
from mor_jax.kernels import wide
from tests import cases
from tests.blocks import TWO_WAY
from tests.blocks import data as _data
from tests.blocks import operand as _operand
from tests.blocks import stored_transposed

B = 128
DIMS = (((1,), (0,)), ((), ()))


def _rel(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _pairs_up(n: int) -> bool:
  """Whether N's 128-column tiles (padded) are an even count, so pair."""
  return -(-n // B) % 2 == 0


def numpy_block_gemm(a: bg.BlockOperand, b: bg.BlockOperand,
                     paired: bool = False) -> np.ndarray:
  """Y = A B^T in float64, one 128-row block pair and one K block at a time.

  ``paired``: where B's rows make an even number of 128-row blocks, a pair
  runs in FP8 only if the pair beside it in the same block row of the output
  (columns j and j xor 1, in blocks) does too.
  """
  def rows(op):
    n = op.codes.shape[0]
    r, p = np.asarray(op.recip, np.float64), np.asarray(op.rep)
    if r.shape[0] != n:
      r, p = np.repeat(r, B, 0)[:n], np.repeat(p, B, 0)[:n]
    own = p == (0 if op.codes.dtype == jnp.float8_e4m3fn else 1)
    codes = np.asarray(op.codes).astype(np.float64)
    # The values of the BF16 path: the codes dequantized in their own
    # blocks, rounded as the wide values are stored; ``wide`` elsewhere.
    wide = np.asarray(op.wide).T if op.transposed else np.asarray(op.wide)
    per_element = lambda g: np.repeat(g, B, 1)[:, :codes.shape[1]]  # noqa: E731
    deq = (codes * per_element(r)).astype(wide.dtype)
    values = np.where(per_element(own), deq, wide).astype(np.float64)
    return codes, r, own, values

  (ca, ra, fa, wa), (cb, rb, fb, wb) = rows(a), rows(b)
  both_e5m2 = a.codes.dtype == b.codes.dtype == jnp.float8_e5m2
  m, k = ca.shape
  n = cb.shape[0]
  y = np.zeros((m, n))
  pairs = paired and _pairs_up(n)
  for kk in range(-(-k // B)):
    ks = slice(kk * B, (kk + 1) * B)
    for i in range(0, m, B):
      for j in range(0, n, B):
        ri, rj = slice(i, i + B), slice(j, j + B)
        # Rows past n are padding, FP8 (an empty slice's all() is True).
        mate = slice((j // B ^ 1) * B, (j // B ^ 1) * B + B)
        fp8_b = fb[rj, kk].all() and (not pairs or fb[mate, kk].all())
        if fa[ri, kk].all() and fp8_b and not both_e5m2:
          y[ri, rj] += (ca[ri, ks] @ cb[rj, ks].T * ra[ri, kk][:, None] *
                        rb[rj, kk][None, :])
        else:
          y[ri, rj] += wa[ri, ks] @ wb[rj, ks].T
  return y


CASES = [
    # (m, k, n, share of BF16 blocks, X's recipe, W's recipe)
    (300, 520, 260, 0.0, TWO_WAY, TWO_WAY),
    (300, 520, 260, 0.1, TWO_WAY, TWO_WAY),
    (300, 520, 260, 0.5, TWO_WAY, TWO_WAY),
    (300, 520, 260, 1.0, TWO_WAY, TWO_WAY),
    (256, 384, 128, 0.0, TWO_WAY, TWO_WAY),
    # DeepSeek's 1x128 tiles for X.
    (200, 300, 130, 0.5, mor_jax.SubTensorMoR(block_shape=(1, 128)), TWO_WAY),
    # 1x128 tiles for W (as a wgrad GEMM's B may come), with X's 128x128
    # blocks or 1x128 tiles: the kernel's scale factors per column of the
    # output, or per row and per column.
    (200, 300, 130, 0.5, TWO_WAY, mor_jax.SubTensorMoR(block_shape=(1, 128))),
    (200, 300, 130, 0.1, mor_jax.SubTensorMoR(block_shape=(1, 128)),
     mor_jax.SubTensorMoR(block_shape=(1, 128))),
    # E4M3 x E5M2 pairs on the FP8 path.
    (200, 300, 130, 0.1, TWO_WAY,
     mor_jax.Static(mor_jax.E5M2, block_shape=(128, 128), scaling="gam")),
]


@pytest.mark.parametrize("m,k,n,share,rx,rw", CASES)
def test_reference_equals_numpy_and_emulation(m, k, n, share, rx, rw):
  x, w = _data(m, k, n, share)
  a, rep_a = _operand(jnp.asarray(x), rx)
  b, rep_b = _operand(jnp.asarray(w.T), rw)
  if rx == rw == TWO_WAY:  # the blocks spoiled are the blocks in BF16
    for rep in (rep_a, rep_b):
      assert np.mean(np.asarray(rep) == bg.REP_BF16) == pytest.approx(
          round(share * rep.size) / rep.size)
  got = _assert_twin_equals(a, b, x, w, rx, rw)
  assert got.shape == (m, n)


def _assert_twin_equals(a, b, x, w, rx, rw):
  """The twin on operands a, b (of x, w.T) equals NumPy and emulation."""
  got = bg.block_gemm_reference(a, b, out_dtype=jnp.float32)
  assert _rel(got, numpy_block_gemm(
      a, b, paired=bg.BlockGemmConfig().paired)) <= 1e-6
  policy = mor_jax.Policy(activation=rx, weight=rw,
                          gradient=mor_jax.NoQuant(), execution="emulate")
  want = mor_jax.dot_general(jnp.asarray(x), jnp.asarray(w), DIMS,
                             policy=policy)
  assert _rel(got, want) <= 1e-5
  return got


def _forced(op: bg.BlockOperand, share: float, seed: int) -> bg.BlockOperand:
  """op (all E4M3, its wide values as they came) with ``share`` of its
  blocks' representations set to BF16: values of one scale everywhere, so
  that a pair run in BF16 instead of FP8 shows in the output."""
  rep = np.asarray(op.rep).copy()
  pick = np.random.default_rng(seed).permutation(rep.size)
  rep.flat[pick[:round(share * rep.size)]] = bg.REP_BF16
  return bg.BlockOperand(op.codes, op.recip, jnp.asarray(rep), op.wide,
                         op.transposed)


def _paired_operands(m, k, n, share_w=0.25):
  """X all E4M3 and W^T with ``share_w`` of its blocks BF16, in bfloat16 (so
  that the BF16 path's dequantized values are rounded and differ from the
  FP8 path's)."""
  x, w = _data(m, k, n, 0.0)
  a, _ = _operand(jnp.asarray(x, jnp.bfloat16), TWO_WAY)
  b, _ = _operand(jnp.asarray(w.T, jnp.bfloat16), TWO_WAY)
  return a, _forced(b, share_w, seed=4)


@pytest.mark.parametrize("m,k,n", [(300, 520, 500), (256, 384, 256),
                                   (300, 520, 260)])
def test_paired_reference_equals_numpy(m, k, n):
  """The twin's paired plan against NumPy's: an FP8 pair beside a BF16 one
  runs in BF16, where N pads to an even number of tiles (500, 256; not
  260, whose three tiles run unpaired)."""
  a, b = _paired_operands(m, k, n)
  got = bg.block_gemm_reference(a, b, out_dtype=jnp.float32, paired=True)
  assert _rel(got, numpy_block_gemm(a, b, paired=True)) <= 1e-6
  alone = bg.block_gemm_reference(a, b, out_dtype=jnp.float32, paired=False)
  if _pairs_up(n):  # the moved pairs show: the data can tell the plans apart
    assert _rel(got, alone) >= 1e-4
  else:
    np.testing.assert_array_equal(got, alone)


def test_three_way_e5m2_blocks_run_wide():
  """A three-way operand coded in E4M3: its E5M2 blocks take the BF16 path."""
  rx = mor_jax.SubTensorMoR(mode="three_way")
  x, w = _data(300, 520, 260, 0.5, lo=1e-3)
  a, rep_a = _operand(jnp.asarray(x), rx)
  b, _ = _operand(jnp.asarray(w.T), TWO_WAY)
  assert (np.asarray(rep_a) == bg.REP_E5M2).any()
  _assert_twin_equals(a, b, x, w, rx, TWO_WAY)


def test_fp8_pairs_use_the_codes():
  """Wide values that disagree with the codes show which path a pair took."""
  x, w = _data(256, 256, 128, 0.0)
  a, _ = _operand(jnp.asarray(x), TWO_WAY)
  b, _ = _operand(jnp.asarray(w.T), TWO_WAY)
  y = bg.block_gemm_reference(a, b, out_dtype=jnp.float32)
  a_bad = bg.BlockOperand(a.codes, a.recip, a.rep, a.wide * 0)
  np.testing.assert_array_equal(
      bg.block_gemm_reference(a_bad, b, out_dtype=jnp.float32), y)
  rep = a.rep.at[0, 1].set(bg.REP_BF16)  # one block of X in BF16 now
  y2 = bg.block_gemm_reference(
      bg.BlockOperand(a.codes, a.recip, rep, a.wide * 0), b,
      out_dtype=jnp.float32)
  assert (np.asarray(y2[:B]) != np.asarray(y[:B])).any()
  np.testing.assert_array_equal(y2[B:], y[B:])


def test_plan_lists_each_tiles_fp8_steps_first():
  """The kernel's schedule: per output tile, its FP8 K blocks in K order,
  then its BF16 ones in K order, and how many are FP8."""
  rng = np.random.default_rng(3)
  m, k, n = 300, 900, 260
  rep_a = rng.choice([bg.REP_E4M3, bg.REP_BF16], (m, 8), p=[0.97, 0.03])
  rep_b = rng.choice([bg.REP_E4M3, bg.REP_E5M2, bg.REP_BF16], (3, 8))

  def op(rows, rep):
    z = jnp.zeros((rows, k))
    return bg.BlockOperand(z.astype(jnp.float8_e4m3fn), jnp.ones(rep.shape),
                           jnp.asarray(rep, jnp.int32), z)

  fp8 = bg._pairs(op(m, rep_a), op(n, rep_b), 384, 384, 8)  # pylint: disable=protected-access
  order, n8 = bg._plan(fp8, 8)  # pylint: disable=protected-access
  assert order.shape[-1] % 4 == 0  # 16-byte rows for TMA
  fa = np.pad(rep_a == bg.REP_E4M3, ((0, 384 - m), (0, 0)),
              constant_values=True).reshape(3, B, 8).all(axis=1)
  fb = rep_b == bg.REP_E4M3
  for i in range(3):
    for j in range(3):
      fp8 = [kk for kk in range(8) if fa[i, kk] and fb[j, kk]]
      wide = [kk for kk in range(8) if kk not in fp8]
      assert int(n8[i, j]) == len(fp8)
      assert list(np.asarray(order[i, j, :8])) == fp8 + wide


def test_per_shard_twin_under_vmap():
  """vmap runs the twin batched (custom_partitioning has no batching rule)."""
  pairs = []
  for seed in (0, 1):
    x, w = _data(200, 300, 130, 0.5)
    a, _ = _operand(jnp.asarray(x * (1 + seed)), TWO_WAY)
    b, _ = _operand(jnp.asarray(w.T), TWO_WAY)
    pairs.append((a, b))
  stack = lambda *v: jnp.stack(v)  # noqa: E731
  a, b = (jax.tree.map(stack, *ops) for ops in zip(*pairs))
  got = jax.vmap(lambda a, b: bg.block_gemm_reference_per_shard(
      a, b, out_dtype=jnp.float32))(a, b)
  for i, (ai, bi) in enumerate(pairs):
    np.testing.assert_array_equal(
        got[i], bg.block_gemm_reference(ai, bi, out_dtype=jnp.float32))


def test_bad_operands_are_rejected():
  a, _ = _operand(jnp.ones((128, 256)), TWO_WAY)
  with pytest.raises(ValueError, match="recip"):
    bg.block_gemm_reference(bg.BlockOperand(a.codes, a.recip[:, :1],
                                            a.rep[:, :1], a.wide), a,
                            out_dtype=jnp.float32)
  with pytest.raises(TypeError, match="float8"):
    bg.block_gemm_reference(bg.BlockOperand(a.wide, a.recip, a.rep, a.wide),
                            a, out_dtype=jnp.float32)


# Which operands' wide values are stored [K, rows].
TRANSPOSED = [(False, False), (True, False), (False, True), (True, True)]


def _stored(a, b, transposed):
  return tuple(stored_transposed(op) if t else op
               for op, t in zip((a, b), transposed))


@pytest.mark.parametrize("transposed", TRANSPOSED[1:], ids=str)
def test_wide_values_stored_transposed_give_the_same_product(transposed):
  """A transposed view's operand keeps its wide values where they are
  (``_block.transpose``): the same product, bit for bit, on ragged shapes
  with half of the blocks BF16."""
  x, w = _data(300, 520, 260, 0.5)
  a, _ = _operand(jnp.asarray(x), TWO_WAY)
  b, _ = _operand(jnp.asarray(w.T), TWO_WAY)
  np.testing.assert_array_equal(
      bg.block_gemm_reference(*_stored(a, b, transposed),
                              out_dtype=jnp.float32),
      bg.block_gemm_reference(a, b, out_dtype=jnp.float32))


@pytest.mark.parametrize("shape", [(256, 384), (300, 130), (1, 200)])
@pytest.mark.parametrize("dtype", [jnp.float8_e4m3fn, jnp.float8_e5m2])
def test_transpose_codes_moves_every_byte(shape, dtype):
  """kernels/transpose.py (compiled on a GPU, in interpret mode elsewhere):
  the codes' bytes transposed, NaN codes and ragged edges included."""
  bits = np.random.default_rng(7).integers(0, 256, shape, np.uint8)
  x = jnp.asarray(bits).view(dtype)
  got = transpose.transpose_codes(x,
                                  interpret=jax.default_backend() != "gpu")
  assert got.dtype == dtype
  np.testing.assert_array_equal(np.asarray(got).view(np.uint8), bits.T)


def test_transpose_codes_rejects_wider_elements():
  with pytest.raises(TypeError, match="one-byte"):
    transpose.transpose_codes(jnp.ones((4, 4), jnp.bfloat16), interpret=True)


def test_transpose_codes_lowers_for_cuda():
  x = jnp.zeros((300, 130), jnp.float8_e4m3fn)
  text = cases.lowered_for_cuda(
      functools.partial(transpose.transpose_codes, interpret=False), x)
  assert "mor_transpose_codes" in text


def test_wide_values_must_be_in_their_stated_layout():
  a, _ = _operand(jnp.ones((256, 384)), TWO_WAY)
  with pytest.raises(ValueError, match=r"transposed=True"):
    bg.block_gemm_reference(bg.BlockOperand(a.codes, a.recip, a.rep, a.wide,
                                            True), a, out_dtype=jnp.float32)


# The block GEMM's default (tiles paired in clusters along N), its tiles
# unpaired, and unpaired with the all-BF16 path in clusters along M.
PAIRED = bg.BlockGemmConfig()
UNPAIRED = bg.BlockGemmConfig(paired=False)
CLUSTERED = bg.BlockGemmConfig(paired=False, wide=gemm.GemmConfig(cluster="m"))
CONFIGS = [PAIRED, UNPAIRED, CLUSTERED]
CONFIG_IDS = ["paired", "unpaired", "clustered"]


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("transposed", TRANSPOSED, ids=str)
@pytest.mark.parametrize("m,k,n", [(200, 300, 130), (500, 1000, 510),
                                   (384, 256, 256)])
def test_kernel_lowers_for_cuda(transposed, m, k, n, config):
  """The kernel lowers to Mosaic GPU on any machine (``jax.export`` for
  CUDA), ragged, half of the blocks BF16, wide values in either layout: a
  CPU finds what does not lower before a GPU runs it. The last two shapes
  also compile in the 16-bit loop of an all-BF16 GEMM, the second in
  clusters where the configuration asks for them."""
  x, w = _data(m, k, n, 0.5)
  a, _ = _operand(jnp.asarray(x, jnp.bfloat16), TWO_WAY)
  b, _ = _operand(jnp.asarray(w.T, jnp.bfloat16), TWO_WAY)
  a, b = _stored(a, b, transposed)
  module = cases.lowered_for_cuda(
      functools.partial(bg.block_gemm, out_dtype=jnp.bfloat16,
                        config=config), a, b)
  assert "mosaic_gpu" in module and "mor_wide_values" in module
  # Both operands' values in one launch.
  assert module.count("custom_call @__gpu$xla.gpu.triton(") == 1


@pytest.mark.parametrize("config,mp,np_,kp,cluster", [
    # Paired, gemm.py's 16-bit loop runs in the pairs' clusters along N...
    (PAIRED, 512, 512, 1024, "n"),
    # ... or not at all where its clustered tile does not divide.
    (PAIRED, 384, 256, 256, "none"),
    (UNPAIRED, 512, 512, 1024, None),
    (UNPAIRED, 384, 256, 256, None),
    (CLUSTERED, 512, 512, 1024, "m"),
])
def test_all_bf16_path_runs_in_the_launchs_clusters(config, mp, np_, kp,
                                                    cluster):
  got = bg._launch_wide(config, mp, np_, kp)  # pylint: disable=protected-access
  if cluster == "none":
    assert got is None
  else:
    assert got.cluster == cluster


@pytest.mark.parametrize("mp,np_,kp,cluster", [
    (512, 512, 1024, "m"),      # the configured tile, in clusters along M
    (384, 256, 256, None),      # 384 rows: single blocks of 128 x 256 only
    (384, 384, 256, "none"),    # 384 columns: no 128 x 256 tile divides
])
def test_all_bf16_path_runs_where_its_tile_divides(mp, np_, kp, cluster):
  got = bg._wide_config(CLUSTERED.wide, mp, np_, kp)
  if cluster == "none":
    assert got is None
  else:
    assert got == dataclasses.replace(CLUSTERED.wide, cluster=cluster)
  assert bg._wide_config(None, mp, np_, kp) is None


def _values_case(transposed, per_row, k, seed=0):
  """Arguments of ``wide.values`` (R 256), and NumPy's values."""
  rng = np.random.default_rng(seed)
  r = 256
  x = rng.standard_normal((r, k)).astype(np.float32)
  codes = (x * 8).astype(ml_dtypes.float8_e4m3fn)
  grid = (r if per_row else r // B, k // B)
  recip = rng.uniform(0.01, 2, grid).astype(np.float32)
  own = rng.integers(0, 2, grid).astype(np.int32)
  if not per_row:
    recip, own = np.repeat(recip, B, 0), np.repeat(own, B, 0)
  read = rng.integers(0, 2, (r // B, k // B)).astype(np.int32)
  stored = x.astype(ml_dtypes.bfloat16)
  per_element = lambda g: np.repeat(g, B, 1)  # noqa: E731
  deq = (codes.astype(np.float32) * per_element(recip)).astype(stored.dtype)
  want = np.where(per_element(own) != 0, deq, stored)
  args = (jnp.asarray(codes), jnp.asarray(recip), jnp.asarray(own),
          jnp.asarray(stored.T if transposed else stored), jnp.asarray(read))
  return args, want, np.kron(read, np.ones((B, B), bool)) != 0


def _assert_written(got, want, read, transposed):
  """Bit for bit where read; the other blocks are left unwritten."""
  got = np.asarray(got.T if transposed else got)
  np.testing.assert_array_equal(got[read].view(np.uint16),
                                want[read].view(np.uint16))


def _assert_values_equal(transposed, per_row, k, interpret):
  args, want, read = _values_case(transposed, per_row, k)
  got, = wide.values(wide.Request(*args, transposed), interpret=interpret)
  _assert_written(got, want, read, transposed)


# K of 3 blocks: a block per program; of 12: four; of 16: eight.
VALUES_K = [384, 1536, 2048]


@pytest.mark.parametrize("k", VALUES_K)
@pytest.mark.parametrize("per_row", [False, True], ids=["blocks", "rows"])
@pytest.mark.parametrize("transposed", [False, True])
def test_values_kernel_equals_numpy(transposed, per_row, k):
  """kernels/wide.py in interpret mode: the codes dequantized in their own
  rows, the wide values in the others, in the blocks the plan reads."""
  _assert_values_equal(transposed, per_row, k, interpret=True)


def test_values_kernel_takes_both_operands_in_one_launch():
  """kernels/block_gemm.py's use: A's and B's requests (per-block flags,
  one stored [K, rows]) in one launch, each written as alone."""
  cases = [_values_case(t, False, 1536, seed=s)
           for t, s in ((False, 1), (True, 2))]
  got = wide.values(*(wide.Request(*args, t) for (args, _, _), t
                      in zip(cases, (False, True))), interpret=True)
  for g, (_, want, read), t in zip(got, cases, (False, True)):
    _assert_written(g, want, read, t)


def test_values_kernel_needs_whole_blocks():
  args, _, _ = _values_case(False, False, 384)
  with pytest.raises(ValueError, match="multiples of 128"):
    wide.values(wide.Request(args[0][:200], *args[1:], False),
                interpret=True)


def test_values_requests_must_share_k():
  (a, _, _), (b, _, _) = (_values_case(False, False, k) for k in (384, 256))
  with pytest.raises(ValueError, match="share K"):
    wide.values(wide.Request(*a, False), wide.Request(*b, False),
                interpret=True)


# ----------------------------------------------------------------------------
# On a Hopper GPU: the compiled kernel.


def _hopper() -> bool:
  return (jax.default_backend() == "gpu" and
          jax.devices()[0].compute_capability.startswith("9."))


@pytest.mark.gpu
@pytest.mark.skipif(not _hopper(), reason="the block GEMM kernel needs sm_90")
@pytest.mark.parametrize("m,k,n,share,rx,rw", CASES + [
    (1024, 1024, 512, 0.1, TWO_WAY, TWO_WAY)])
def test_kernel_equals_reference(m, k, n, share, rx, rw):
  x, w = _data(m, k, n, share)
  a, _ = _operand(jnp.asarray(x, jnp.bfloat16), rx)
  b, _ = _operand(jnp.asarray(w.T, jnp.bfloat16), rw)
  got = bg.block_gemm(a, b, out_dtype=jnp.float32)
  want = bg.block_gemm_reference(a, b, out_dtype=jnp.float32,
                                 precision=jax.lax.Precision.HIGHEST)
  assert got.shape == (m, n)
  assert _rel(got, want) <= 1e-3


@pytest.mark.gpu
@pytest.mark.skipif(not _hopper(), reason="the block GEMM kernel needs sm_90")
@pytest.mark.parametrize("m,k,n,transposed", [
    (1024, 1024, 1024, (False, False)),
    (300, 520, 500, (True, False)),     # ragged, X's values stored [K, M]
    (256, 1100, 768, (False, True)),    # K of 9 blocks
    (300, 520, 260, (False, False)),    # three column tiles: unpaired
])
def test_paired_kernel_follows_its_plan(m, k, n, transposed):
  """Paired tiles run the paired plan: nearer the paired twin by far than
  the unpaired one, whose FP8 pairs the plan moves to BF16."""
  a, b = _paired_operands(m, k, n)
  twin = functools.partial(bg.block_gemm_reference, a, b,
                           out_dtype=jnp.float32,
                           precision=jax.lax.Precision.HIGHEST)
  want, alone = twin(paired=True), twin(paired=False)
  got = bg.block_gemm(*_stored(a, b, transposed), out_dtype=jnp.float32,
                      config=PAIRED)
  assert _rel(got, want) <= 1e-3
  if _pairs_up(n):
    assert _rel(got, want) <= _rel(want, alone) / 20


def _bf16_operands(m, k, n, share_x, share_w):
  """Block operands of X and W^T, a share of each one's blocks BF16."""
  x, _ = _data(m, k, n, share_x)
  _, w = _data(m, k, n, share_w)
  a, _ = _operand(jnp.asarray(x, jnp.bfloat16), TWO_WAY)
  b, _ = _operand(jnp.asarray(w.T, jnp.bfloat16), TWO_WAY)
  return a, b


@pytest.mark.gpu
@pytest.mark.skipif(not _hopper(), reason="the block GEMM kernel needs sm_90")
@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("m,k,n,share_x,share_w,transposed", [
    # X rejected whole: no pair in FP8, gemm.py's tiles (in clusters, if
    # configured).
    (512, 1024, 512, 1.0, 0.0, (False, False)),
    (512, 1024, 512, 1.0, 0.0, (True, True)),
    # Both all BF16, ragged (padded to 512 x 512 x 1024).
    (500, 1000, 510, 1.0, 1.0, (False, True)),
    # W rejected whole, 384 rows: gemm.py's tiles, never in clusters.
    (384, 256, 256, 0.0, 1.0, (True, False)),
    # Half of the blocks BF16: the block loops (launched in clusters, if
    # configured).
    (512, 1024, 512, 0.5, 0.5, (False, False)),
])
def test_kernel_all_bf16_path_equals_block_loops(m, k, n, share_x, share_w,
                                                 transposed, config):
  a, b = _bf16_operands(m, k, n, share_x, share_w)
  want = bg.block_gemm_reference(a, b, out_dtype=jnp.float32,
                                 precision=jax.lax.Precision.HIGHEST,
                                 paired=config.paired)
  a, b = _stored(a, b, transposed)
  got = bg.block_gemm(a, b, out_dtype=jnp.float32, config=config)
  assert _rel(got, want) <= 1e-3
  loops = bg.block_gemm(a, b, out_dtype=jnp.float32,
                        config=dataclasses.replace(config, wide=None))
  # The same products in the same K order, on other tiles.
  assert _rel(got, loops) <= 1e-6


@pytest.mark.gpu
@pytest.mark.skipif(not _hopper(), reason="the block GEMM kernel needs sm_90")
@pytest.mark.parametrize("k", VALUES_K)
@pytest.mark.parametrize("per_row", [False, True], ids=["blocks", "rows"])
@pytest.mark.parametrize("transposed", [False, True])
def test_values_kernel_compiled_equals_numpy(transposed, per_row, k):
  _assert_values_equal(transposed, per_row, k, interpret=False)


@pytest.mark.gpu
@pytest.mark.skipif(not _hopper(), reason="the block GEMM kernel needs sm_90")
@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_kernel_all_bf16_path_dequantizes_both(config):
  """No pair in FP8, though both operands hold blocks in FP8 (X's in even K
  blocks, W's in odd ones): the 16-bit loop reads both operands' written
  values, the codes dequantized in their blocks."""
  rng = np.random.default_rng(5)
  m, k, n = 512, 1024, 512

  def op(rows, parity):
    x = rng.standard_normal((rows, k)).astype(np.float32)
    rep = np.where(np.arange(k // B) % 2 == parity, bg.REP_E4M3, bg.REP_BF16)
    rep = np.broadcast_to(rep, (rows // B, k // B)).astype(np.int32)
    recip = rng.uniform(0.01, 2, rep.shape).astype(np.float32)
    return bg.BlockOperand(jnp.asarray(x * 8, jnp.float8_e4m3fn),
                           jnp.asarray(recip), jnp.asarray(rep),
                           jnp.asarray(x, jnp.bfloat16))

  a, b = op(m, 0), op(n, 1)
  want = bg.block_gemm_reference(a, b, out_dtype=jnp.float32,
                                 precision=jax.lax.Precision.HIGHEST)
  got = bg.block_gemm(a, b, out_dtype=jnp.float32, config=config)
  assert _rel(got, want) <= 1e-3


@pytest.mark.gpu
@pytest.mark.skipif(not _hopper(), reason="the block GEMM kernel needs sm_90")
@pytest.mark.parametrize("transposed", TRANSPOSED[1:], ids=str)
@pytest.mark.parametrize("m,k,n,share", [(300, 520, 260, 0.5),
                                         (1024, 1024, 512, 0.1)])
def test_kernel_reads_wide_values_stored_transposed(m, k, n, share,
                                                    transposed):
  x, w = _data(m, k, n, share)
  a, _ = _operand(jnp.asarray(x, jnp.bfloat16), TWO_WAY)
  b, _ = _operand(jnp.asarray(w.T, jnp.bfloat16), TWO_WAY)
  want = bg.block_gemm_reference(a, b, out_dtype=jnp.float32,
                                 precision=jax.lax.Precision.HIGHEST)
  got = bg.block_gemm(*_stored(a, b, transposed), out_dtype=jnp.float32)
  assert _rel(got, want) <= 1e-3
  # The BF16 loop's products of either layout are the same products.
  np.testing.assert_array_equal(
      got, bg.block_gemm(a, b, out_dtype=jnp.float32))


@pytest.mark.gpu
@pytest.mark.skipif(not _hopper(), reason="the block GEMM kernel needs sm_90")
@pytest.mark.parametrize("config", [
    bg.BlockGemmConfig(stages=1, wide_stages=2),
    bg.BlockGemmConfig(stages=3, wide_stages=3, grid_tile_width=3),
], ids=str)
@pytest.mark.parametrize("share", [0.0, 0.5])
def test_kernel_configs_equal_reference(config, share):
  # Ragged, K of 9 blocks (deeper than any pipeline), half of X's blocks BF16.
  x, w = _data(300, 1100, 260, share)
  a, _ = _operand(jnp.asarray(x, jnp.bfloat16), TWO_WAY)
  b, _ = _operand(jnp.asarray(w.T, jnp.bfloat16), TWO_WAY)
  got = bg.block_gemm(a, b, out_dtype=jnp.float32, config=config)
  want = bg.block_gemm_reference(a, b, out_dtype=jnp.float32,
                                 precision=jax.lax.Precision.HIGHEST)
  assert _rel(got, want) <= 1e-3


@pytest.mark.gpu
@pytest.mark.skipif(not _hopper() or jax.device_count() < 2,
                    reason="the block GEMM kernel per shard needs 2 sm_90 "
                    "GPUs")
@pytest.mark.parametrize("spec_a,spec_b,spec_y", [
    (P("d", None), P(), P("d", None)),        # data parallel: M
    (P(), P("d", None), P(None, "d")),        # tensor parallel: N
    (P(None, "d"), P(None, "d"), P()),        # K, partial outputs summed
], ids=["m", "n", "k"])
def test_kernel_per_shard_equals_one_device(spec_a, spec_b, spec_y):
  x, w = _data(512, 1024, 512, 0.1)
  a, _ = _operand(jnp.asarray(x, jnp.bfloat16), TWO_WAY)
  b, _ = _operand(jnp.asarray(w.T, jnp.bfloat16), TWO_WAY)
  mesh = jax.make_mesh((2,), ("d",), devices=jax.devices()[:2],
                       axis_types=(jax.sharding.AxisType.Auto,))
  put = lambda op, spec: bg.BlockOperand(*(  # noqa: E731
      jax.device_put(v, NamedSharding(mesh, spec))
      for v in (op.codes, op.recip, op.rep, op.wide)))
  run = jax.jit(lambda a, b: bg.block_gemm(a, b, out_dtype=jnp.float32))
  want = run(a, b)
  got = run(put(a, spec_a), put(b, spec_b))
  assert got.sharding.is_equivalent_to(NamedSharding(mesh, spec_y), 2)
  # The same kernel per shard: equal up to the order of float32 additions.
  assert _rel(got, want) <= 1e-6
  twin = bg.block_gemm_reference(a, b, out_dtype=jnp.float32,
                                 precision=jax.lax.Precision.HIGHEST)
  assert _rel(got, twin) <= 1e-3


@pytest.mark.parametrize("kwargs,match", [
    (dict(stages=0), "stages must be a positive int"),
    (dict(stages=True), "stages must be a positive int"),
    (dict(grid_tile_width=2.0), "grid_tile_width must be a positive int"),
    (dict(wide_stages=1), "wide_stages must be at least 2"),
    (dict(wide=dict(tile_m=64)), "wide must be a GemmConfig or None"),
    (dict(paired=1), "paired must be a bool"),
    (dict(paired=True, wide=gemm.GemmConfig(cluster="m")), "along N"),
])
def test_config_rejects_bad_values(kwargs, match):
  with pytest.raises(ValueError, match=match):
    bg.BlockGemmConfig(**kwargs)
