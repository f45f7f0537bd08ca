"""The three GEMMs of a dot_general from FP8 codes (docs/numerics.md 6.1).

A dot_general without batch dimensions is a matrix product X W of
X [M, K] (lhs: free dimensions, then contracted ones) and W [K, N] (rhs:
contracted dimensions in pairing order, then free ones), whose backward pass
is dX = dY W^T and dW = X^T dY. Each of X, W and dY enters two GEMMs, once
with each of its dimensions contracted, and with per-row or per-tensor
scales both quantizations come from one read of the matrix
(``mor_jax._passes.DualPasses``): X's in the forward pass (the wgrad one is
kept for the backward pass, one byte per element), W's likewise, dY's in the
backward pass.

Each GEMM then runs with its two operands' decisions:

- "emulate": on the operands as the emulated path has them, each accepted
  operand dequantized (f32(code) / scale, in the compute dtype), each
  rejected one as it came, with XLA's dot and float32 accumulation;
- "fp8": when both operands are accepted, on their FP8 codes, with the
  per-row scales applied to the float32 accumulator; otherwise on the
  emulated operands, in the compute dtype. The choice is made on the device
  (kernels/gemm.py) or, where that kernel does not run, by ``lax.cond``.

Both modes share every quantization, so their decisions and statistics are
the same bits; outputs differ by accumulation and by the rounding of the
dequantized operands to the compute dtype.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from mor_jax import _dispatch
from mor_jax import _formats
from mor_jax import _mor
from mor_jax import _numerics
from mor_jax import _passes
from mor_jax import _policy
from mor_jax import _quantize
from mor_jax import _recipes
from mor_jax import _scaling
from mor_jax import _stats
from mor_jax import kernels

Execution = _policy.Execution
# A x B^T: both operands contract their minor (K) dimension.
TN = (((1,), (1,)), ((), ()))


def dual_capable(recipe: _recipes.Recipe) -> bool:
  """Whether both orientations of a matrix come from one read (and a GEMM).

  One FP8 candidate, one decision for the whole tensor, and scales outside
  the K loop: per-tensor, or one per row of the GEMM view, in one gam group.
  """
  fmts = recipe.formats
  return (len(fmts) == 2 and fmts[0].is_fp8 and recipe.group_shape is None
          and recipe.block_shape in ((1, None), (None, None))
          and (recipe.granularity == "tensor"
               or recipe.block_shape == (None, None)))


def bf16_only(recipe: _recipes.Recipe) -> bool:
  """One candidate, BF16: nothing to quantize."""
  return len(recipe.candidates) == 1


def resolve(execution: Execution, dims, policy) -> Execution | None:
  """"fp8" or "emulate" for this dot_general, or None for the view path.

  Dot_generals with batch dimensions, policies with a recipe that is
  neither ``dual_capable`` nor BF16 only (128x128 blocks, sub-tensor MoR:
  under "fp8" their GEMMs run in ``mor_jax._block``), and BF16-only
  policies take the path of ``mor_jax._dot`` that quantizes each view apart
  (with BF16 only, bit for bit ``lax.dot_general``).
  """
  (_, _), (lb, _) = dims
  recipes = (policy.activation, policy.weight, policy.gradient)
  if lb or not all(dual_capable(r) or bf16_only(r) for r in recipes):
    return None
  if all(bf16_only(r) for r in recipes):
    return None  # Nothing to quantize: the view path is lax.dot_general.
  if execution == "auto":
    return "fp8" if _dispatch.fp8_tensor_cores() else "emulate"
  return execution


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Side:
  """One operand of one GEMM: a matrix in its orientation [rows, K].

  Attributes:
    x: the matrix as it came, [rows, K], or [K, rows] if ``transposed``.
    codes: its FP8 codes [rows, K] (None for BF16-only recipes).
    recip: [rows] float32 reciprocals of the per-row scales.
    accepted: bool scalar: MoR chose the FP8 candidate.
    stats: the statistics of this quantization.
    transposed: whether ``x`` is the transpose of the view.
  """

  x: jax.Array
  codes: jax.Array | None
  recip: jax.Array | None
  accepted: jax.Array
  stats: _stats.NamedMoRStats
  transposed: bool = dataclasses.field(metadata=dict(static=True))

  def view(self) -> jax.Array:
    return self.x.T if self.transposed else self.x

  def emulated(self, dtype) -> jax.Array:
    """The operand of the emulated GEMM: dequantized if accepted, else x."""
    x = self.view().astype(dtype)
    if self.codes is None:
      return x
    deq = _numerics.dequantize_values(self.codes.astype(jnp.float32),
                                      self.recip[:, None], dtype)
    # Straight-through, as mor_quantize's values: a second-order gradient
    # differentiates the backward pass, whose operands these are.
    return _quantize.straight_through(x, jnp.where(self.accepted, deq, x))


@dataclasses.dataclass(frozen=True)
class _Known:
  """Passes whose results for one format are known from the dual passes.

  A predicate may measure another format, a yardstick (``ErrorNotAbove``),
  which writes nothing but error sums: ``other`` quantizes x to it with the
  same per-row scales.
  """

  stats: _passes.BlockStats
  fmt: _formats.Representation
  result: tuple  # (codes, error sum)
  other: _passes.Passes

  def block_stats(self, x):
    del x
    return self.stats

  def quantize_with_scales(self, x, scale, nonfinite, fmt, output):
    if fmt == self.fmt:
      return self.result
    # Only the candidate's codes are written (``dual_capable``: one FP8
    # candidate), so no output needs per-row flags; the whole tensor's
    # flag stands in for them.
    return self.other.quantize_with_scales(
        x, scale, jnp.broadcast_to(nonfinite, scale.shape), fmt, output)


def quantize(t: jax.Array, recipe: _recipes.Recipe,
             impl: _dispatch.Implementation) -> tuple[Side, Side]:
  """MoR of a matrix t [R, C] in both orientations: (rows of t, rows of t^T)."""
  views = (t, t.T)
  if bf16_only(recipe):
    sides = []
    for i, view in enumerate(views):
      part = _mor.partition(view.shape, recipe)
      _, choice, st = _mor.select(view, _dispatch.passes(part, impl), recipe,
                                  "none", part)
      del choice  # 0: BF16, the only candidate
      sides.append(Side(t, None, None, jnp.bool_(False),
                        _stats.NamedMoRStats.of(st, recipe.names), i == 1))
    return tuple(sides)

  dual = _dispatch.dual(impl, t.shape)
  per_tensor = recipe.block_shape == (None, None)
  stats = dual.stats(t)
  # The whole tensor's statistics, the same bits for both orientations
  # (``_mor.whole``: one reduction); the decision reads no other count,
  # minimum or flag.
  w = _mor.whole(stats.cols)
  amaxes = ([w.amax[None]] * 2 if per_tensor else
            [stats.row_amax[:, 0], stats.cols.amax[:, 0]])
  fmt = recipe.formats[0]
  # The scales of both orientations from one computation: it is elementwise,
  # and the two whole amaxes are the matrix's, the same bits.
  scales = jnp.split(
      _scaling.scales_from_amax(jnp.concatenate(amaxes), fmt, recipe.scaling,
                                None, w.amax),
      [amaxes[0].shape[0]])
  rows = [jnp.broadcast_to(s, (v.shape[0],)) for s, v in zip(scales, views)]
  # One division for the reciprocals of both orientations (div_rn is large).
  recips = jnp.split(_scaling.reciprocal(jnp.concatenate(rows)),
                     [rows[0].shape[0]])
  codes, codes_t, *errs = dual.codes(t, *rows, fmt)
  # Per-tensor scaling decides on a grid of one block; per-row scaling on
  # the tensor, whose 0-d statistics broadcast against the rows' amaxes.
  unit = (1, 1) if per_tensor else ()
  sides = []
  for i, (view, amax, recip, q, err) in enumerate(
      zip(views, amaxes, recips, (codes, codes_t), errs)):
    st = _passes.BlockStats(amax[:, None], *(a.reshape(unit) for a in w[1:]))
    part = _mor.partition(view.shape, recipe)
    passes = _Known(st, fmt, (q, jnp.sum(err, keepdims=True)),
                    _dispatch.passes(part, impl))
    _, choice, s = _mor.select(view, passes, recipe, "codes", part, w)
    # One decision unit: the tensor (a 0-d choice, or a grid of one block).
    accepted = jnp.reshape(choice == 0, ())
    sides.append(Side(t, q, recip, accepted,
                      _stats.NamedMoRStats.of(s, recipe.names), i == 1))
  return tuple(sides)


def gemm(a: Side, b: Side, execution: Execution, out_dtype, precision,
         impl: _dispatch.Implementation) -> jax.Array:
  """A (rows_a x K) times B (rows_b x K)^T with the operands' decisions."""
  dtype = jnp.result_type(a.x.dtype, b.x.dtype)

  def emulated():
    # float32 accumulation, float64 for float64 operands (as the view path).
    return jax.lax.dot_general(a.emulated(dtype), b.emulated(dtype), TN,
                               precision=precision,
                               preferred_element_type=(
                                   kernels.gemm.accumulator_dtype(dtype))
                               ).astype(out_dtype)

  if execution == "emulate" or a.codes is None or b.codes is None:
    return emulated()
  shapes = (a.x.shape, b.x.shape, (a.codes.shape[0], b.codes.shape[0]))
  if _dispatch.gemm_backend(impl, dtype, (a.codes.dtype, b.codes.dtype),
                           shapes) == "pallas":
    # One kernel reads both decisions and runs FP8, or BF16 on each
    # operand's dequantized codes (written before it, only where read) or
    # its x as it came (16-bit, one dtype).
    out = kernels.gemm.gemm(
        *(kernels.gemm.Operand(s.x, s.codes, s.recip, s.accepted,
                               s.transposed) for s in (a, b)),
        out_dtype=out_dtype, config=impl.config.gemm)
  else:
    out = jax.lax.cond(
        a.accepted & b.accepted,
        lambda: kernels.gemm.fp8_dot(a.codes, b.codes, a.recip, b.recip,
                                     out_dtype=out_dtype, precision=precision),
        emulated)
  # Differentiated (a second-order gradient, through the backward pass),
  # the GEMM is the emulated one: the codes carry no gradient. Otherwise
  # nothing reads the emulated product and XLA removes it.
  return _quantize.straight_through(emulated(), out)


_STATIC = dict(static=True)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Matrices:
  """How a dot_general without batch dimensions is X [M, K] @ W [K, N].

  A pytree without leaves, so that the backward pass gets it as a residual.
  """

  lhs_perm: tuple[int, ...] = dataclasses.field(metadata=_STATIC)
  rhs_perm: tuple[int, ...] = dataclasses.field(metadata=_STATIC)
  lhs_shape: tuple[int, ...] = dataclasses.field(metadata=_STATIC)
  rhs_shape: tuple[int, ...] = dataclasses.field(metadata=_STATIC)
  n_lf: int = dataclasses.field(metadata=_STATIC)  # free dims of lhs
  n_rc: int = dataclasses.field(metadata=_STATIC)  # contracted dims of rhs
  lhs_dtype: np.dtype = dataclasses.field(metadata=_STATIC)
  rhs_dtype: np.dtype = dataclasses.field(metadata=_STATIC)
  execution: Execution = dataclasses.field(metadata=_STATIC)

  @classmethod
  def of(cls, dims, lhs, rhs, execution: Execution) -> Matrices:
    (lc, rc), _ = dims
    lf = tuple(d for d in range(lhs.ndim) if d not in lc)
    rf = tuple(d for d in range(rhs.ndim) if d not in rc)
    return cls(lf + lc, rc + rf, tuple(lhs.shape), tuple(rhs.shape), len(lf),
               len(rc), np.dtype(lhs.dtype), np.dtype(rhs.dtype), execution)

  @property
  def m_n(self) -> tuple[int, int]:
    return (self._split(self.lhs_shape, self.lhs_perm, self.n_lf)[0],
            self._split(self.rhs_shape, self.rhs_perm, self.n_rc)[1])

  def _split(self, shape, perm, n):
    dims = [shape[d] for d in perm]
    return math.prod(dims[:n]), math.prod(dims[n:])

  def x(self, lhs):
    return jnp.transpose(lhs, self.lhs_perm).reshape(
        self._split(self.lhs_shape, self.lhs_perm, self.n_lf))

  def w(self, rhs):
    return jnp.transpose(rhs, self.rhs_perm).reshape(
        self._split(self.rhs_shape, self.rhs_perm, self.n_rc))

  def out_shape(self) -> tuple[int, ...]:
    lf = [self.lhs_shape[d] for d in self.lhs_perm[:self.n_lf]]
    rf = [self.rhs_shape[d] for d in self.rhs_perm[self.n_rc:]]
    return tuple(lf + rf)

  def lhs_of(self, x2):
    dims = tuple(self.lhs_shape[d] for d in self.lhs_perm)
    return jnp.transpose(x2.reshape(dims), np.argsort(self.lhs_perm))

  def rhs_of(self, w2):
    dims = tuple(self.rhs_shape[d] for d in self.rhs_perm)
    return jnp.transpose(w2.reshape(dims), np.argsort(self.rhs_perm))
