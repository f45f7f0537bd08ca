"""The MoR dot_general: three GEMMs, six quantizations (docs/numerics.md section 6).

For Y = X W (``lhs`` X, ``rhs`` W):

- fprop  Y  = Q(X) Q(W)
- dgrad  dX = Q(dY) Q(W)^T
- wgrad  dW = Q(X)^T Q(dY)

Each operand is quantized with MoR on its 2-D view in the GEMM it enters:
[rows, K] with rows = the batch dimensions (in ``dimension_numbers`` order)
then the operand's other non-contracted dimensions (in axis order), and K =
the dimensions contracted in that GEMM (in the order they pair with the
other operand's). dX and dW are the transposes of ``lax.dot_general`` taken at
the backward's quantized operands, so every layout ``lax.dot_general``
accepts works and, with ``NoQuant``, every result is bit for bit
``lax.dot_general``'s.

A tensor whose recipe cuts its view's transpose as the transposed view
(square blocks or the whole tensor: ``symmetric``) and whose two views are
exact transposes (``shared``) is quantized once: the same blocks of the
same elements give the same scales, codes and decisions, so the backward
pass reads the forward's quantization of X and W, and wgrad reads dgrad's of
dY. The statistics keep all six entries (a shared one under both GEMMs).

Execution (docs/numerics.md 6.1): per-row and per-tensor recipes take the
matrix path of ``mor_jax._fp8`` (both orientations from one read); under
"fp8", 128x128-block recipes run these views' quantizations through the
block GEMM (``mor_jax._block``); everything else multiplies the emulated
values with ``lax.dot_general``.

Statistics leave without host callbacks: the forward ones as an output, the
backward ones as the cotangent of ``probes``, a zero-valued input that the
forward pass ignores.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import operator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mor_jax import _axes
from mor_jax import _block
from mor_jax import _dispatch
from mor_jax import _fp8
from mor_jax import _mor
from mor_jax import _policy
from mor_jax import _quantize
from mor_jax import _stats
from mor_jax import _variables

# (GEMM, roles of its two operands), in the order of the docstring above.
GEMMS = (("fprop", ("activation", "weight")),
         ("dgrad", ("gradient", "weight")),
         ("wgrad", ("activation", "gradient")))

NamedMoRStats = _stats.NamedMoRStats
Stats = dict[str, dict[str, NamedMoRStats]]


def zero_probes(policy: _policy.Policy) -> Stats:
  """The zero-valued probes whose cotangent carries the backward statistics.

  Args:
    policy: the layer's ``mor_jax.Policy``.

  Returns:
    ``{"dgrad": {"gradient": s, "weight": s}, "wgrad": {"activation": s,
    "gradient": s}}`` with every ``s`` a ``NamedMoRStats`` of zeros.

  Examples:
    >>> import mor_jax
    >>> probes = mor_jax.zero_probes(mor_jax.Policy())
    >>> probes["wgrad"]["gradient"].names, probes["wgrad"]["gradient"].error
    (('E4M3', 'BF16'), Array([0., 0.], dtype=float32))
  """
  policy = _check_policy(policy)
  return {gemm: {role: NamedMoRStats.zeros(getattr(policy, role))
                 for role in roles}
          for gemm, roles in GEMMS[1:]}


def _check_policy(policy) -> _policy.Policy:
  if not isinstance(policy, _policy.Policy):
    raise TypeError(f"policy must be a mor_jax.Policy, got {policy!r}.")
  return policy


def _check_operand(x, name: str) -> jax.Array:
  x = jnp.asarray(x)
  _quantize.check_input(x, name)
  return x


def _out_shape(dims, lhs_shape, rhs_shape) -> tuple[int, ...]:
  """``lax.dot_general``'s output shape: batch, lhs free, rhs free."""
  (lc, rc), (lb, rb) = dims
  return tuple([lhs_shape[d] for d in lb] +
               [n for d, n in enumerate(lhs_shape) if d not in lc + lb] +
               [n for d, n in enumerate(rhs_shape) if d not in rc + rb])


def _check_blocks(dims, lhs_shape, rhs_shape, policy) -> None:
  """Every block of the six quantizations can be counted
  (``_mor.partition``), checked before the forward pass: the backward's
  gradient is the output's shape."""
  shapes = {"activation": lhs_shape, "weight": rhs_shape,
            "gradient": _out_shape(dims, lhs_shape, rhs_shape)}
  for (gemm, role), (rows, k) in _views(dims, len(lhs_shape),
                                        len(rhs_shape)).items():
    shape = shapes[role]
    view = (math.prod(shape[d] for d in rows), math.prod(shape[d] for d in k))
    _mor.partition(view, getattr(policy, role),
                   f"the {role} in {gemm} (its [rows, K] view)")


def _canonical(dimension_numbers, lhs_shape, rhs_shape) -> tuple:
  """``dimension_numbers`` as tuples of ints, checked against the shapes."""
  try:
    (lc, rc), (lb, rb) = dimension_numbers
    lc, rc, lb, rb = (tuple(operator.index(d) for d in dims)
                      for dims in (lc, rc, lb, rb))
  except (TypeError, ValueError):
    raise ValueError(
        "dimension_numbers must be ((lhs_contracting, rhs_contracting), "
        "(lhs_batch, rhs_batch)), each a sequence of ints; got "
        f"{dimension_numbers!r}.") from None
  for name, shape, dims in (("lhs", lhs_shape, lc + lb),
                            ("rhs", rhs_shape, rc + rb)):
    bad = [d for d in dims if not 0 <= d < len(shape)]
    if bad:
      raise ValueError(
          f"dimension_numbers {dimension_numbers} names dimension(s) {bad} of "
          f"{name}, which has rank {len(shape)} (shape {tuple(shape)}).")
    if len(set(dims)) != len(dims):
      raise ValueError(
          f"dimension_numbers {dimension_numbers} uses a dimension of {name} "
          "twice.")
  for kind, ls, rs in (("contracting", lc, rc), ("batch", lb, rb)):
    if len(ls) != len(rs):
      raise ValueError(
          f"dimension_numbers pairs {len(ls)} {kind} dimension(s) of lhs with "
          f"{len(rs)} of rhs.")
    for a, b in zip(ls, rs):
      if lhs_shape[a] != rhs_shape[b]:
        raise ValueError(
            f"{kind} dimension {a} of lhs (shape {tuple(lhs_shape)}) does not "
            f"match dimension {b} of rhs (shape {tuple(rhs_shape)}).")
  return (lc, rc), (lb, rb)


def _views(dims, lhs_ndim: int, rhs_ndim: int) -> dict:
  """(rows, K) dimension indices of each operand's 2-D view, per GEMM."""
  (lc, rc), (lb, rb) = dims
  lf = tuple(d for d in range(lhs_ndim) if d not in lc + lb)
  rf = tuple(d for d in range(rhs_ndim) if d not in rc + rb)
  # Output dimensions of lax.dot_general: batch, lhs free, rhs free.
  ob = tuple(range(len(lb)))
  olf = tuple(range(len(lb), len(lb) + len(lf)))
  orf = tuple(range(len(lb) + len(lf), len(lb) + len(lf) + len(rf)))
  return {
      ("fprop", "activation"): (lb + lf, lc),
      ("fprop", "weight"): (rb + rf, rc),
      ("dgrad", "gradient"): (ob + olf, orf),
      ("dgrad", "weight"): (rb + tuple(sorted(rc)), rf),
      ("wgrad", "activation"): (lb + tuple(sorted(lc)), lf),
      ("wgrad", "gradient"): (ob + orf, olf),
  }


# Each role's two GEMMs: the forward's (or dgrad's) view first.
_PAIRS = {"activation": (("fprop", "activation"), ("wgrad", "activation")),
          "weight": (("fprop", "weight"), ("dgrad", "weight")),
          "gradient": (("dgrad", "gradient"), ("wgrad", "gradient"))}


def symmetric(recipe: _mor.Recipe) -> bool:
  """Whether the recipe cuts a view's transpose as the transposed view.

  Square 2-D blocks or the whole tensor, in square gam groups or one group
  (or BF16 only, one block): the partition of [K, rows] is that of [rows, K]
  transposed, block for block, edge blocks included.
  """
  block, group = recipe.block_shape, recipe.group_shape
  if block is None:  # BF16 only: one block, nothing quantized.
    return True
  return (len(block) == 2 and block[0] == block[1] and
          (group is None or group[0] == group[1]))


def shared(dims, ndims: tuple[int, int], policy: _policy.Policy
           ) -> dict[str, bool]:
  """Per role, whether its two quantizations are one (docs/numerics.md 6).

  They are when the role's recipe is ``symmetric`` and its two views are
  exact transposes (one's rows are the other's K, as ordered tuples): then
  both cover the same blocks of the same elements, so amax, scales, codes
  (transposed) and decisions are the same; only the error sums run in
  another order. Batch dimensions are rows of both views of every operand;
  contracting dimensions listed out of axis order are K of X's (W's) fprop
  view in that order and rows of its wgrad (dgrad) view in axis order:
  neither is a transpose, so that operand does not share.
  """
  views = _views(dims, *ndims)
  out = {}
  for role, (a, b) in _PAIRS.items():
    (rows_a, k_a), (rows_b, k_b) = views[a], views[b]
    out[role] = (symmetric(getattr(policy, role)) and rows_a == k_b and
                 k_a == rows_b)
  return out


def _matrix(x: jax.Array, view) -> jax.Array:
  """The [rows, K] view of ``x``."""
  rows, k = view
  xt = jnp.transpose(x, rows + k)
  return xt.reshape(math.prod(xt.shape[:len(rows)]),
                    math.prod(xt.shape[len(rows):]))


def _unview(y: jax.Array, shape, perm) -> jax.Array:
  """The array of ``shape`` whose axes ``perm``, flattened, are y."""
  return jnp.transpose(y.reshape([shape[d] for d in perm]), np.argsort(perm))


def _quantize_view(x: jax.Array, recipe: _mor.Recipe, view
                   ) -> tuple[jax.Array, NamedMoRStats]:
  """MoR on the [rows, K] view of ``x``; the value comes back in x's layout."""
  r = _mor.mor_quantize(_matrix(x, view), recipe)
  stats = NamedMoRStats.from_result(r)
  if len(recipe.candidates) == 1:  # BF16 only: the value is x itself.
    return x, stats
  return _unview(r.value, x.shape, view[0] + view[1]), stats


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["lhs", "rhs", "stats"],
                   meta_fields=["lhs_struct", "rhs_struct"])
@dataclasses.dataclass(frozen=True)
class _Saved:
  """The view path's residuals.

  Attributes:
    lhs, rhs: each operand, or, where its two quantizations are one
      (``shared``), the forward's quantization in its place: the value in
      the operand's layout (emulation) or the block GEMM's operand on the
      fprop view; the backward then does not read that operand.
    stats: the shared quantizations' statistics, by role.
    lhs_struct, rhs_struct: the operands' shapes and dtypes.
  """

  lhs: Any
  rhs: Any
  stats: dict[str, NamedMoRStats]
  lhs_struct: jax.ShapeDtypeStruct
  rhs_struct: jax.ShapeDtypeStruct


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5, 6))
def _mor_dot_general(lhs, rhs, probes, dims, policy, precision, pet):
  return _forward(lhs, rhs, probes, dims, policy, precision, pet)[0]


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class _Varying:
  """Per leaf of the primal inputs (lhs, rhs, probes), the manual axes of
  ``jax.shard_map`` it varies over."""

  axes: tuple[frozenset[str], ...]


def _varying(x) -> frozenset[str]:
  return frozenset(jax.typeof(x).manual_axis_type.varying)


def _forward(lhs, rhs, probes, dims, policy, precision, pet):
  # Only probes' cotangent matters, and its type.
  varying = _Varying(tuple(map(_varying, jax.tree.leaves((lhs, rhs,
                                                           probes)))))
  with _dispatch.exportable(lhs.shape, rhs.shape):
    out, saved = _forward_gemms(lhs, rhs, dims, policy, precision, pet)
  return out, (varying, saved)


def _forward_gemms(lhs, rhs, dims, policy, precision, pet):
  execution = _fp8.resolve(policy.execution, dims, policy)
  # Empty operands take the per-view path, which handles zero-size views
  # (empty in, empty or zero out, statistics of nothing quantized).
  if execution is not None and lhs.size and rhs.size:
    return _forward_matrices(lhs, rhs, dims, policy, precision, pet,
                             execution)
  views = _views(dims, lhs.ndim, rhs.ndim)
  if _uses_blocks(dims, policy, lhs, rhs):
    out, stats, (x, w) = _forward_blocks(lhs, rhs, dims, views, policy,
                                         precision, pet)
  else:
    x, x_stats = _quantize_view(lhs, policy.activation,
                                views["fprop", "activation"])
    w, w_stats = _quantize_view(rhs, policy.weight, views["fprop", "weight"])
    out = jax.lax.dot_general(x, w, dims, precision=precision,
                              preferred_element_type=pet)
    stats = {"fprop": {"activation": x_stats, "weight": w_stats}}
  share = shared(dims, (lhs.ndim, rhs.ndim), policy)
  kept = {role: stats["fprop"][role] for role in ("activation", "weight")
          if share[role]}
  saved = _Saved(x if share["activation"] else lhs,
                 w if share["weight"] else rhs, kept, _struct(lhs),
                 _struct(rhs))
  return (out, stats), saved


def _backward_quantizations(dims, views, policy, saved, g, quantize,
                            transpose) -> dict:
  """The backward's four quantizations: (operand, stats) by (GEMM, role).

  ``quantize(x, recipe, view)`` quantizes a view of x, ``transpose(op)``
  turns one view's operand into its transposed view's; a shared role takes
  its second GEMM's operand from its first's.
  """
  share = shared(dims, (saved.lhs_struct.ndim, saved.rhs_struct.ndim), policy)
  q = {}
  for role, (first, second) in _PAIRS.items():
    recipe = getattr(policy, role)
    if role == "gradient":
      q[first] = quantize(g, recipe, views[first])
      x, stats = g, q[first][1]
      op = q[first][0]
    else:
      x = saved.lhs if role == "activation" else saved.rhs
      op, stats = x, saved.stats.get(role)
    q[second] = ((transpose(op), stats) if share[role] else
                 quantize(x, recipe, views[second]))
  return q


def _forward_matrices(lhs, rhs, dims, policy, precision, pet, execution):
  """The forward pass as X [M, K] @ W [K, N] (``mor_jax._fp8``)."""
  impl = _dispatch.current()
  mats = _fp8.Matrices.of(dims, lhs, rhs, execution)
  out_dtype = jax.eval_shape(
      functools.partial(jax.lax.dot_general, dimension_numbers=dims,
                        precision=precision, preferred_element_type=pet),
      lhs, rhs).dtype
  x_fprop, x_wgrad = _fp8.quantize(mats.x(lhs), policy.activation, impl)
  w_dgrad, w_fprop = _fp8.quantize(mats.w(rhs), policy.weight, impl)
  y = _fp8.gemm(x_fprop, w_fprop, execution, out_dtype, precision, impl)
  stats = {"fprop": {"activation": x_fprop.stats, "weight": w_fprop.stats}}
  return ((y.reshape(mats.out_shape()), stats),
          (mats, x_wgrad, w_dgrad))


def _backward_matrices(policy, precision, residuals, g):
  mats, x_wgrad, w_dgrad = residuals
  impl = _dispatch.current()
  g_dgrad, g_wgrad = _fp8.quantize(g.reshape(mats.m_n), policy.gradient,
                                   impl)
  dx = _fp8.gemm(g_dgrad, w_dgrad, mats.execution, mats.lhs_dtype, precision,
                 impl)
  dw = _fp8.gemm(x_wgrad, g_wgrad, mats.execution, mats.rhs_dtype, precision,
                 impl)
  stats = {"dgrad": {"gradient": g_dgrad.stats, "weight": w_dgrad.stats},
           "wgrad": {"activation": x_wgrad.stats, "gradient": g_wgrad.stats}}
  return mats.lhs_of(dx), mats.rhs_of(dw), stats


def _uses_blocks(dims, policy, lhs, rhs) -> bool:
  """Whether the GEMMs run through the block GEMM (``mor_jax._block``)."""
  return bool(lhs.size and rhs.size and
              _block.applies(policy.execution, dims, policy,
                             jnp.result_type(lhs.dtype, rhs.dtype),
                             (lhs.shape, rhs.shape,
                              _out_shape(dims, lhs.shape, rhs.shape))))


def _forward_blocks(lhs, rhs, dims, views, policy, precision, pet):
  """The forward pass on the view path's views, through the block GEMM."""
  impl = _dispatch.current()
  out = jax.eval_shape(
      functools.partial(jax.lax.dot_general, dimension_numbers=dims,
                        precision=precision, preferred_element_type=pet),
      lhs, rhs)
  x, x_stats = _block.quantize(_matrix(lhs, views["fprop", "activation"]),
                               policy.activation, impl)
  w, w_stats = _block.quantize(_matrix(rhs, views["fprop", "weight"]),
                               policy.weight, impl)
  y = _block.gemm(x, w, out.dtype, precision, impl)
  return (y.reshape(out.shape),
          {"fprop": {"activation": x_stats, "weight": w_stats}}, (x, w))


def _backward_blocks(dims, views, policy, precision, saved, g):
  impl = _dispatch.current()
  lhs, rhs = saved.lhs_struct, saved.rhs_struct
  q = _backward_quantizations(
      dims, views, policy, saved, g,
      lambda x, recipe, view: _block.quantize(_matrix(x, view), recipe, impl),
      functools.partial(_block.transpose, impl=impl))
  dx = _block.gemm(q["dgrad", "gradient"][0], q["dgrad", "weight"][0],
                   lhs.dtype, precision, impl)
  dw = _block.gemm(q["wgrad", "activation"][0], q["wgrad", "gradient"][0],
                   rhs.dtype, precision, impl)
  # dX [lhs free, W's dgrad rows], dW [X's wgrad rows, rhs free]: those rows
  # are the contracting dimensions in axis order, each paired with the
  # other operand's.
  (lc, rc), _ = dims
  lf, rf = views["fprop", "activation"][0], views["fprop", "weight"][0]
  dlhs = _unview(dx, lhs.shape,
                 lf + tuple(lc[rc.index(d)] for d in sorted(rc)))
  drhs = _unview(dw, rhs.shape,
                 tuple(rc[lc.index(d)] for d in sorted(lc)) + rf)
  stats = {gemm: {role: q[gemm, role][1] for role in roles}
           for gemm, roles in GEMMS[1:]}
  return dlhs, drhs, stats


def _backward(dims, policy, precision, pet, residuals, cotangents):
  varying, residuals = residuals
  shapes = [getattr(a, "shape", ())
            for a in jax.tree.leaves((residuals, cotangents))]
  with _dispatch.exportable(*shapes):
    grads = _backward_gemms(dims, policy, precision, pet, residuals,
                            cotangents)
  leaves, tree = jax.tree.flatten(grads)
  return jax.tree.unflatten(tree, [
      _vary_as(g, axes)
      for g, axes in zip(leaves, varying.axes, strict=True)])


def _vary_as(g: jax.Array, axes: frozenset[str]) -> jax.Array:
  """A cotangent typed as its input varies over shard_map's manual axes.

  An input invariant over an axis (a replicated weight, the probes) that
  met a varying one gets the sum of every device's cotangent, as JAX's own
  transpose of that implicit broadcast does; one varying where its
  cotangent is not (probes made varying, a weight's statistics) is cast.
  """
  if extra := tuple(sorted(_varying(g) - axes)):
    g = jax.lax.psum(g, extra)
  if missing := tuple(sorted(axes - _varying(g))):
    g = jax.lax.pcast(g, missing, to="varying")
  return g


def _backward_gemms(dims, policy, precision, pet, residuals, cotangents):
  if not isinstance(residuals, _Saved):
    return _backward_matrices(policy, precision, residuals, cotangents[0])
  saved, g = residuals, cotangents[0]
  lhs, rhs = saved.lhs_struct, saved.rhs_struct
  views = _views(dims, lhs.ndim, rhs.ndim)
  if _uses_blocks(dims, policy, lhs, rhs):
    return _backward_blocks(dims, views, policy, precision, saved, g)
  # Emulated values come back in the operand's layout: a shared role's second
  # GEMM reads its first's value as it is.
  q = _backward_quantizations(dims, views, policy, saved, g, _quantize_view,
                              lambda value: value)

  def gemm(a, b):
    return jax.lax.dot_general(a, b, dims, precision=precision,
                               preferred_element_type=pet)

  w_dgrad, x_wgrad = q["dgrad", "weight"][0], q["wgrad", "activation"][0]
  (dlhs,) = jax.linear_transpose(lambda a: gemm(a, w_dgrad),
                                 lhs)(q["dgrad", "gradient"][0])
  (drhs,) = jax.linear_transpose(lambda b: gemm(x_wgrad, b),
                                 rhs)(q["wgrad", "gradient"][0])
  stats = {gemm_: {role: q[gemm_, role][1] for role in roles}
           for gemm_, roles in GEMMS[1:]}
  return dlhs, drhs, stats


def _struct(x: jax.Array) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(x.shape, x.dtype)


_mor_dot_general.defvjp(_forward, _backward)


def dot_general_with_stats(
    lhs: jax.typing.ArrayLike, rhs: jax.typing.ArrayLike, dimension_numbers,
    probes: Stats | None = None, *, policy: _policy.Policy,
    precision: Any = None, preferred_element_type: Any = None,
    out_sharding: Any = None,
) -> tuple[jax.Array, Stats]:
  """``dot_general`` that also returns its statistics, for use outside Flax.

  The forward statistics are returned; the backward ones are the cotangent of
  ``probes``: differentiate with respect to ``probes`` to get them. Neither
  carries a gradient. Called more than once with the same probes, the
  cotangent is the sum over the calls.

  Args:
    lhs: the left operand (activations X), floating point.
    rhs: the right operand (weights W), floating point.
    dimension_numbers: as for ``jax.lax.dot_general``.
    probes: ``mor_jax.zero_probes(policy)``, or None (then the backward
      statistics are dropped).
    policy: a ``mor_jax.Policy``.
    precision: as for ``jax.lax.dot_general``.
    preferred_element_type: as for ``jax.lax.dot_general``.
    out_sharding: as for ``jax.lax.dot_general``: the output is resharded
      to it where it is not None. Under a mesh with Explicit axes the output
      takes the sharding ``jax.lax.dot_general`` would give it (and its
      errors, such as a contraction sharded on both sides without
      ``out_sharding``); the statistics are replicated.

  Returns:
    ``(out, {"fprop": {"activation": s, "weight": s}})`` with each ``s`` a
    ``NamedMoRStats``.

  Examples:
    >>> import jax, jax.numpy as jnp, mor_jax
    >>> x = jax.random.normal(jax.random.key(0), (8, 16))
    >>> w = jax.random.normal(jax.random.key(1), (16, 4))
    >>> policy = mor_jax.Policy()
    >>> def loss(w, probes):
    ...   y, fwd = mor_jax.dot_general_with_stats(
    ...       x, w, (((1,), (0,)), ((), ())), probes, policy=policy)
    ...   return jnp.sum(y ** 2), fwd
    >>> (_, fwd), (dw, bwd) = jax.value_and_grad(loss, (0, 1), has_aux=True)(
    ...     w, mor_jax.zero_probes(policy))
    >>> fwd["fprop"]["weight"].fraction_blocks   # W went to E4M3
    Array([1., 0.], dtype=float32)
    >>> sorted(bwd), sorted(bwd["dgrad"])
    (['dgrad', 'wgrad'], ['gradient', 'weight'])
  """
  policy = _check_policy(policy)
  lhs, rhs = _check_operand(lhs, "lhs"), _check_operand(rhs, "rhs")
  dims = _canonical(dimension_numbers, lhs.shape, rhs.shape)
  _check_blocks(dims, lhs.shape, rhs.shape, policy)
  expected = zero_probes(policy)
  if probes is None:
    probes = expected
  else:
    want = jax.tree.map(_struct, expected)
    got = jax.tree.map(lambda a: _struct(jnp.asarray(a)), probes)
    if _variables.restored_without_target(probes):
      raise ValueError(
          "probes hold plain dicts where mor_jax.NamedMoRStats belong: the "
          "checkpoint was restored without a target, which drops the "
          "statistics' candidate names. " + _variables.RESTORE_HINT)
    if jax.tree.structure(got) != jax.tree.structure(want) or got != want:
      raise ValueError(
          "probes must be mor_jax.zero_probes(policy) (the same structure, "
          f"shapes and float32 dtype); got {got}, want {want}.")
  if preferred_element_type is not None:
    preferred_element_type = np.dtype(preferred_element_type)
  specs = None
  # lax.dot_general's output sharding, statistics replicated; where neither
  # operand is on the mesh (arrays of one device) nothing is typed with its
  # axes, and _axes.run calls plainly.
  if _axes.explicit() and not _axes.off_mesh(lhs, rhs):
    specs = (jax.eval_shape(functools.partial(
        jax.lax.dot_general, dimension_numbers=dimension_numbers,
        precision=precision, preferred_element_type=preferred_element_type,
        out_sharding=out_sharding), lhs, rhs).sharding.spec,
             jax.sharding.PartitionSpec())
  out, stats = _axes.run(
      lambda lhs, rhs, probes: _mor_dot_general(
          lhs, rhs, probes, dims, policy, precision, preferred_element_type),
      lhs, rhs, probes, out_sharding=specs)
  if out_sharding is not None:
    out = jax.sharding.reshard(out, out_sharding)
  return out, stats


def dot_general(lhs: jax.typing.ArrayLike, rhs: jax.typing.ArrayLike,
                dimension_numbers, precision: Any = None,
                preferred_element_type: Any = None, out_sharding: Any = None,
                *, policy: _policy.Policy | None) -> jax.Array:
  """A drop-in for ``jax.lax.dot_general`` whose three GEMMs run through MoR.

  A ``jax.custom_vjp``: the forward pass quantizes ``lhs`` with
  ``policy.activation`` and ``rhs`` with ``policy.weight``; the backward
  pass quantizes the output gradient with ``policy.gradient`` for dgrad
  and for wgrad and each operand in the orientation of the GEMM it enters:
  six MoR quantizations, each on the operand's 2-D [rows, K] view (see the
  module docstring), of which a tensor with square blocks or one scale,
  whose two views are transposes, runs one and reads it twice.
  Reverse-mode only (no jvp); a second-order gradient (a gradient
  penalty) differentiates the backward pass with its quantized operands
  straight-through.
  To read the statistics, use ``dot_general_with_stats`` or the Flax layers
  of ``mor_jax.dense``.

  Args:
    lhs: the left operand (activations X), floating point.
    rhs: the right operand (weights W), floating point.
    dimension_numbers: ``((lhs_contracting, rhs_contracting), (lhs_batch,
      rhs_batch))`` as for ``jax.lax.dot_general``; any layout it accepts.
    precision: as for ``jax.lax.dot_general``.
    preferred_element_type: as for ``jax.lax.dot_general``.
    out_sharding: as for ``jax.lax.dot_general`` (Flax NNX's layers pass
      it); see ``dot_general_with_stats``.
    policy: a ``mor_jax.Policy``, or None for plain ``jax.lax.dot_general``
      (as ``MoRDense(policy=None)`` and ``PolicyRules.policy_for`` mean it).

  Returns:
    The output of ``jax.lax.dot_general`` on the quantized operands.

  Examples:
    >>> import functools, jax, jax.numpy as jnp, flax.linen as nn, mor_jax
    >>> x = jax.random.normal(jax.random.key(0), (4, 8))
    >>> y = mor_jax.dot_general(x, jnp.ones((8, 2)), (((1,), (0,)), ((), ())),
    ...                         policy=mor_jax.Policy())
    >>> y.shape
    (4, 2)
    >>> layer = nn.Dense(2, dot_general=functools.partial(
    ...     mor_jax.dot_general, policy=mor_jax.Policy()))
    >>> params = layer.init(jax.random.key(1), x)
    >>> layer.apply(params, x).shape
    (4, 2)
    >>> from flax import nnx
    >>> nnx.Linear(8, 2, rngs=nnx.Rngs(0), dot_general=functools.partial(
    ...     mor_jax.dot_general, policy=mor_jax.Policy()))(x).shape
    (4, 2)
  """
  if policy is None:
    return jax.lax.dot_general(
        lhs, rhs, dimension_numbers, precision, preferred_element_type,
        out_sharding=out_sharding)
  return dot_general_with_stats(
      lhs, rhs, dimension_numbers, policy=policy, precision=precision,
      preferred_element_type=preferred_element_type,
      out_sharding=out_sharding)[0]
