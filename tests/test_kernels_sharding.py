"""The Pallas kernels under jit with sharded operands, per shard.

On 8 virtual CPU devices (interpret mode) and on a multi-GPU host alike:
codes, scales, MoR decisions and statistics of a sharded tensor equal those
of the whole tensor with the XLA reference, and the compiled program moves
no more than per-block grids between devices wherever shard edges fall on
block edges (kernels/sharding.py says what happens elsewhere). The block
GEMM per shard (its kernel on a Hopper host, its jnp twin under the same rule
elsewhere) equals it on one device, and moves no operand where shards hold
whole 128-blocks. The per-channel GEMM per shard (likewise kernel or twin)
sums a sharded K's partial outputs in float32 and rounds them once.
"""

from __future__ import annotations

import functools
import math
import re

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
from mor_jax.kernels import sharding
from mor_jax.kernels import transpose
from tests import data
from tests import blocks

N_DEV = 8 if jax.default_backend() == "cpu" else 2
pytestmark = pytest.mark.skipif(
    jax.device_count() < N_DEV,
    reason=f"needs {N_DEV} devices: the root conftest.py sets "
    "XLA_FLAGS=--xla_force_host_platform_device_count=8 for CPU runs")

HOPPER = (jax.default_backend() == "gpu" and
          jax.devices()[0].compute_capability.startswith("9."))

SHAPE = (1024, 1024)
# name: (mesh shape, mesh axes, spec). Shards hold 128 rows or columns (or
# more), so 128x128 blocks never straddle a shard edge.
LAYOUTS = {
    "rows": ((N_DEV,), ("d",), P("d", None)),
    "cols": ((N_DEV,), ("d",), P(None, "d")),
    "rows_cols": ((2, N_DEV // 2), ("a", "b"), P("a", "b")),
    "rows_two_axes": ((2, N_DEV // 2), ("a", "b"), P(("a", "b"), None)),
}
PARTITIONS = {
    "tensor": ((None, None), None),
    "channel": ((1, None), None),
    "block_gam": ((128, 128), None),
    "block_groups": ((128, 128), (256, None)),
    "1x32": ((1, 32), None),
}


def _mesh(shape, axes):
  return jax.make_mesh(shape, axes, devices=jax.devices()[:N_DEV],
                       axis_types=(jax.sharding.AxisType.Auto,) * len(axes))


def _run(fn, x):
  """fn(x) under jit, and the compiled program's text."""
  # A new function each time: JAX reuses the trace of a function it has seen,
  # which would keep the implementation setting of that trace.
  compiled = jax.jit(lambda v: fn(v)).lower(x).compile()
  return compiled(x), compiled.as_text()


def _reference_and_sharded(fn, x, where):
  """(fn(x) with XLA on one device, fn(x) with Pallas on ``where``'s shards,
  the sharded program's text)."""
  with mor_jax.use_implementation("xla"):
    want, _ = _run(fn, x)
  with mor_jax.use_implementation("pallas"):
    got, text = _run(fn, jax.device_put(x, where))
  return want, got, text


def _collective_sizes(compiled_text: str) -> list[int]:
  """Element counts of every cross-device transfer in compiled HLO.

  A synchronous collective's result is its one array; an asynchronous
  one's start (a GPU's) returns a tuple of operand and result, of which the
  largest counts.
  """
  sizes = []
  pattern = re.compile(r"= (\([^=]*?\)|\S+) "
                       r"(all-gather|all-to-all|collective-permute|"
                       r"all-reduce|reduce-scatter)(-start)?\(")
  for m in pattern.finditer(compiled_text):
    counts = [int(np.prod([int(d) for d in dims.split(",") if d]))
              for dims in re.findall(r"[a-z0-9]+\[([0-9,]*)\]", m.group(1))]
    sizes.append(max(counts))
  return sizes


def _quantize_all(kw):
  def fn(v):
    qa = mor_jax.quantize(v, mor_jax.E4M3, **kw)
    return qa.data, qa.scale, mor_jax.fake_quantize(v, mor_jax.E5M2, **kw)
  return fn


@pytest.mark.parametrize("partition", list(PARTITIONS))
@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_sharded_kernels_equal_whole_tensor_reference(layout, partition):
  block_shape, group_shape = PARTITIONS[partition]
  kw = dict(block_shape=block_shape, group_shape=group_shape)
  x = data.make("outlier_cols", SHAPE, data.DTYPES["bfloat16"], seed=3)
  mesh_shape, axes, spec = LAYOUTS[layout]
  where = NamedSharding(_mesh(mesh_shape, axes), spec)
  fn = _quantize_all(kw)
  want, got, text = _reference_and_sharded(fn, x, where)
  data.assert_codes_equal(got[0], want[0])
  data.assert_bits_equal(got[1], want[1])
  data.assert_within_ulp(np.asarray(got[2]), np.asarray(want[2]))
  # The codes stay sharded as the input was; only per-block grids (one
  # number per block) cross devices, never the tensor.
  assert got[0].sharding.is_equivalent_to(where, 2)
  biggest = max(_collective_sizes(text), default=0)
  assert biggest <= got[1].size, (
      f"a {biggest}-element transfer for {got[1].size} blocks: the tensor "
      "was gathered")


@pytest.mark.parametrize("recipe", [
    mor_jax.TensorLevelMoR(block_shape=(1, None)),
    mor_jax.TensorLevelMoR(block_shape=(128, 128)),
    mor_jax.SubTensorMoR(mode="three_way"),
], ids=["tensor_channel", "tensor_block", "sub_three_way"])
@pytest.mark.parametrize("layout", ["rows", "rows_cols"])
def test_sharded_decisions_equal_whole_tensor(recipe, layout):
  # Outlier columns on one side only: one shard alone would decide otherwise.
  x = data.make("normal", SHAPE, np.float32, seed=8)
  x[:, :96] *= np.geomspace(1.0, 1e6, 96, dtype=np.float32)
  mesh_shape, axes, spec = LAYOUTS[layout]
  where = NamedSharding(_mesh(mesh_shape, axes), spec)

  def fn(v):
    r = mor_jax.mor_quantize(v, recipe)
    return r.value, r.choice, r.stats

  want, got, _ = _reference_and_sharded(fn, x, where)
  np.testing.assert_array_equal(np.asarray(got[1]), np.asarray(want[1]))
  data.assert_within_ulp(np.asarray(got[0]), np.asarray(want[0]))
  for g, w in zip(jax.tree.leaves(got[2]), jax.tree.leaves(want[2])):
    np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=1e-5,
                               atol=1e-7)


def test_leading_dimensions_fold_into_sharded_rows():
  """[batch, seq, features] sharded on batch, per-token scaling."""
  x = data.make("normal", (N_DEV * 2, 64, 256), data.DTYPES["bfloat16"], seed=4)
  where = NamedSharding(_mesh((N_DEV,), ("d",)), P("d"))
  fn = _quantize_all(dict(block_shape=(1, 1, None)))
  want, got, _ = _reference_and_sharded(fn, x, where)
  data.assert_codes_equal(got[0], want[0])
  data.assert_bits_equal(got[1], want[1])


def test_blocks_cut_by_shard_edges_are_gathered_and_still_exact():
  """Shards of 128 columns, blocks of 256: the documented gather."""
  x = data.make("normal", SHAPE, np.float32, seed=5)
  where = NamedSharding(_mesh((N_DEV,), ("d",)), P(None, "d"))
  fn = _quantize_all(dict(block_shape=(1, 256) if N_DEV == 8 else (1, 768)))
  want, got, text = _reference_and_sharded(fn, x, where)
  data.assert_codes_equal(got[0], want[0])
  data.assert_bits_equal(got[1], want[1])
  assert max(_collective_sizes(text)) >= x.size // N_DEV


def test_split_per_dimension():
  mesh = _mesh((2, N_DEV // 2), ("a", "b"))
  # An axis of one device splits nothing (the "b" axis of a 2-GPU host).
  b = ("b",) if N_DEV > 2 else ()
  whole = sharding.split(mesh, P("a", "b"), (1024, 1024), (1024, 1024))
  assert [(d.axes, d.spans) for d in whole] == [(("a",), True), (b, bool(b))]
  blocks = sharding.split(mesh, P("a", "b"), (1024, 1024), (128, 128))
  assert [(d.axes, d.spans) for d in blocks] == [(("a",), False), (b, False)]
  # 100 rows do not split in 2 shards of whole 128-row blocks; 13 columns do
  # not divide among 2 or 4 devices.
  cut = sharding.split(mesh, P("a", "b"), (256 + 100, 13), (128, 1))
  assert [(d.axes, d.spans) for d in cut] == [((), False), ((), False)]


# ----------------------------------------------------------------------------
# The block GEMM (kernels/block_gemm.py): the kernel per shard on a Hopper
# host, its jnp twin per shard elsewhere, against the twin on one device.

# name: ((M, K, N), mesh shape, mesh axes, A's spec, B's spec, A in 1x128
# tiles, the output's spec).
BLOCK_LAYOUTS = {
    "data": ((1024, 512, 256), (N_DEV,), ("d",), P("d", None), P(), False,
             P("d", None)),
    "tensor": ((256, 512, 1024), (N_DEV,), ("d",), P(), P("d", None), False,
               P(None, "d")),
    "k": ((256, 1024, 256), (N_DEV,), ("d",), P(None, "d"), P(None, "d"),
          False, P()),
    "data_k": ((256, 256 * N_DEV // 2, 256), (2, N_DEV // 2), ("a", "b"),
               P("a", "b"), P(None, "b"), False, P("a", None)),
    # 1x128 tiles: shards of any number of rows (25 on 8 devices).
    "tiles_data": ((25 * N_DEV, 384, 256), (N_DEV,), ("d",), P("d", None),
                   P(), True, P("d", None)),
    # 192-row shards would cut 128-row blocks: M is gathered.
    "cut": ((384, 256, 256), (2, N_DEV // 2), ("a", "b"), P("a", None), P(),
            False, None),
}


def _block_operands(m, k, n, tiles):
  x, w = blocks.data(m, k, n, 0.1)
  rx = (mor_jax.SubTensorMoR(block_shape=(1, 128)) if tiles
        else blocks.TWO_WAY)
  a, _ = blocks.operand(jnp.asarray(x, jnp.bfloat16), rx)
  b, _ = blocks.operand(jnp.asarray(w.T, jnp.bfloat16), blocks.TWO_WAY)
  return a, b


def _put_operand(op, mesh, spec):
  """op with its codes and wide values on ``spec`` (wide values stored
  [K, rows] on its transpose), and its grids too where the mesh divides
  them."""
  def put(v, spec):
    entries = tuple(spec) + (None,) * (2 - len(spec))
    ok = all(v.shape[i] % math.prod(mesh.shape[ax] for ax in
                                    sharding.axes_of(e)) == 0
             for i, e in enumerate(entries))
    return jax.device_put(v, NamedSharding(mesh, spec if ok else P()))
  entries = tuple(spec) + (None,) * (2 - len(spec))
  wide_spec = P(*entries[::-1]) if op.transposed else spec
  return type(op)(*(put(v, spec) for v in (op.codes, op.recip, op.rep)),
                  put(op.wide, wide_spec), op.transposed)


def _block_gemm_sharded(layout, out_dtype, fn, transposed=False):
  """(fn on one device, fn on the layout's shards, the sharded program's
  text, A's codes on their shards, the mesh); ``transposed``: both
  operands' wide values stored [K, rows]."""
  (m, k, n), mesh_shape, axes, sa, sb, tiles, _ = BLOCK_LAYOUTS[layout]
  a, b = _block_operands(m, k, n, tiles)
  if transposed:
    a, b = blocks.stored_transposed(a), blocks.stored_transposed(b)
  mesh = _mesh(mesh_shape, axes)
  want = jax.jit(lambda a, b: fn(a, b, out_dtype=out_dtype))(a, b)
  a_s, b_s = _put_operand(a, mesh, sa), _put_operand(b, mesh, sb)
  compiled = jax.jit(lambda a, b: fn(a, b, out_dtype=out_dtype)).lower(
      a_s, b_s).compile()
  return want, compiled(a_s, b_s), compiled.as_text(), a_s.codes, mesh


def _block_gemm_fn():
  """The kernel per shard on a Hopper host, the twin per shard elsewhere."""
  return bg.block_gemm if HOPPER else bg.block_gemm_reference_per_shard


def _rel64(a, b) -> float:
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("layout,transposed", [
    *((layout, False) for layout in BLOCK_LAYOUTS),
    # Wide values stored [K, rows] (a transposed view's) shard along the
    # codes' axes, transposed.
    ("data_k", True), ("tensor", True)])
def test_sharded_block_gemm_equals_one_device(layout, transposed):
  want, got, text, a_codes, mesh = _block_gemm_sharded(
      layout, jnp.float32, _block_gemm_fn(), transposed)
  # Equal up to the order of float32 additions (K's partials are summed
  # across devices).
  assert _rel64(got, want) <= 1e-6
  if layout == "cut":  # gathered (the result's sharding is jit's choice)
    assert max(_collective_sizes(text)) >= a_codes.size // 2
  else:
    # Shards of whole blocks: the output is sharded as its rows are, and
    # only the partial outputs of a sharded K cross devices, never the
    # operands.
    assert got.sharding.is_equivalent_to(
        NamedSharding(mesh, BLOCK_LAYOUTS[layout][-1]), 2)
    partial = got.addressable_shards[0].data.size
    moved = [s for s in _collective_sizes(text) if s != partial]
    assert not moved, f"transfers of {moved} elements: operands gathered"
    assert "all-gather" not in text


@pytest.mark.parametrize("spec,want", [(P("d", None), P(None, "d")),
                                       (P(None, "d"), P("d", None))],
                         ids=["rows", "cols"])
def test_sharded_transpose_codes_stays_on_its_shards(spec, want):
  """kernels/transpose.py per shard: each device transposes its own codes."""
  mesh = _mesh((N_DEV,), ("d",))
  bits = np.random.default_rng(3).integers(0, 256, (64 * N_DEV, 384),
                                           np.uint8)
  x = jax.device_put(jnp.asarray(bits).view(jnp.float8_e4m3fn),
                     NamedSharding(mesh, spec))
  fn = jax.jit(lambda x: transpose.transpose_codes(
      x, interpret=jax.default_backend() != "gpu"))
  got = fn(x)
  np.testing.assert_array_equal(np.asarray(got).view(np.uint8), bits.T)
  assert got.sharding.is_equivalent_to(NamedSharding(mesh, want), 2)
  assert not _collective_sizes(fn.lower(x).compile().as_text())


def test_sharded_block_gemm_sums_bf16_outputs_in_float32():
  """A bfloat16 output: K's partials are summed in float32 and rounded once,
  as on one device; only the order of float32 additions differs. (Partials
  rounded to bfloat16 first change about a third of the elements.)"""
  want, got, _, _, _ = _block_gemm_sharded("k", jnp.bfloat16,
                                           _block_gemm_fn())
  assert got.dtype == jnp.bfloat16
  assert np.mean(np.asarray(got) != np.asarray(want)) <= 0.01
  assert _rel64(got, want) <= 1e-3


# ----------------------------------------------------------------------------
# The per-channel GEMM (kernels/gemm.py): the kernel per shard on a Hopper
# host, its jnp twin per shard elsewhere, against NumPy.

# name: (mesh shape, mesh axes, A's spec, B's spec); K is split over "d" or
# "b", on 8 or 2 devices alike.
GEMM_K_LAYOUTS = {
    "k": ((N_DEV,), ("d",), P(None, "d"), P(None, "d")),
    "data_k": ((N_DEV // 2, 2), ("a", "b"), P("a", "b"), P(None, "b")),
}


def _reduced_dtypes(compiled_text: str) -> set[str]:
  """Element types of every all-reduce in compiled HLO."""
  pattern = re.compile(r"= (\([^=]*?\)|\S+) all-reduce(-start)?\(")
  return {t for m in pattern.finditer(compiled_text)
          for t in re.findall(r"([a-z][a-z0-9]*)\[", m.group(1))}


@pytest.mark.parametrize("fp8", [True, False], ids=["fp8", "wide"])
@pytest.mark.parametrize("layout", list(GEMM_K_LAYOUTS))
def test_sharded_gemm_sums_k_partials_in_float32(layout, fp8):
  """A bfloat16 output with K sharded: the partial outputs are summed in
  float32 and rounded once, as one device rounds its accumulator; partials
  rounded to bfloat16 first change about two fifths of the elements."""
  mesh_shape, axes, sa, sb = GEMM_K_LAYOUTS[layout]
  mesh = _mesh(mesh_shape, axes)
  shards = mesh.shape[sa[1]]
  m, k, n = 64, 128 * shards, 64
  rng = np.random.default_rng(7)
  a, b = (rng.standard_normal(s).astype(ml_dtypes.bfloat16)
          for s in ((m, k), (n, k)))
  a8, b8 = ((v.astype(np.float32) * 8).astype(ml_dtypes.float8_e4m3fn)
            for v in (a, b))
  ra, rb = (rng.uniform(0.5, 2, r).astype(np.float32) for r in (m, n))
  put = lambda v, s: jax.device_put(v, NamedSharding(mesh, s))  # noqa: E731
  # The BF16 path reads B as it came, here stored [K, N].
  args = (gemm.Operand(put(a, sa), put(a8, sa), put(ra, P()),
                       jnp.bool_(fp8), False),
          gemm.Operand(put(b.T, P(*sb[::-1])), put(b8, sb), put(rb, P()),
                       jnp.bool_(fp8), True))
  fn = (functools.partial(gemm.gemm, config=gemm.GemmConfig()) if HOPPER
        else gemm.gemm_reference_per_shard)
  compiled = jax.jit(lambda *v: fn(*v, out_dtype=jnp.bfloat16)).lower(
      *args).compile()
  got = np.asarray(compiled(*args), np.float64)

  # The products of K's shards in float64, scaled as the GEMM scales them.
  x, y = (np.asarray(v, np.float64) for v in ((a8, b8) if fp8 else (a, b)))
  scale = np.outer(ra.astype(np.float64), rb) if fp8 else 1.0
  parts = [x[:, c] @ y[:, c].T * scale
           for c in np.split(np.arange(k), shards)]
  bf16 = lambda v: v.astype(ml_dtypes.bfloat16).astype(np.float64)  # noqa: E731
  want = bf16(sum(parts))
  rounded_parts = bf16(sum(bf16(p) for p in parts))
  # The data tell the two apart (so the test can fail).
  assert np.mean(rounded_parts != want) >= 0.2
  # Equal up to float32 rounding, which tips an element rarely; the kernel's
  # FP8 loop accumulates in the tensor cores' own precision, which tips more.
  assert np.mean(got != want) <= (0.1 if HOPPER and fp8 else 0.01)
  assert _rel64(got, want) <= 1e-3
  # Only float32 partials cross devices.
  assert _reduced_dtypes(compiled.as_text()) == {"f32"}
