"""A NumPy reference of docs/numerics.md section 6: three GEMMs, six MoR quantizations.

Written from the spec: each operand's 2-D view [rows, K] (rows: the batch
dimensions, then the operand's other non-contracted dimensions in axis order;
K: the dimensions contracted in that GEMM, in the order they pair with the
other operand's), ``tests.reference.mor`` on the view, then float64 einsums
of the quantized operands. The only mor_jax it touches is the recipe objects,
read for their fields.
"""

from __future__ import annotations

import string

import numpy as np

import mor_jax
from tests import reference as ref

GEMM_ROLES = (("fprop", "activation"), ("fprop", "weight"),
              ("dgrad", "gradient"), ("dgrad", "weight"),
              ("wgrad", "activation"), ("wgrad", "gradient"))


def describe(recipe):
  """The ``ref.mor`` arguments of a recipe (candidates, granularity, ...)."""
  if isinstance(recipe, mor_jax.NoQuant):
    return [], "tensor", None, "gam", None
  if isinstance(recipe, mor_jax.TensorLevelMoR):
    cands = [("E4M3", ("error_below", recipe.threshold))]
  elif isinstance(recipe, mor_jax.SubTensorMoR):
    cands = [("E4M3", ("error_not_above", "E5M2"))]
    if recipe.mode == "three_way":
      cands.append(("E5M2", ("dynamic_range",)))
  elif isinstance(recipe, mor_jax.Static):
    cands = [(recipe.fmt.name, ("always",))]
  else:
    raise NotImplementedError(recipe)
  return (cands, recipe.granularity, recipe.block_shape, recipe.scaling,
          recipe.group_shape)


def labels(dims, lhs_ndim, rhs_ndim):
  """Einsum labels of lhs, rhs and the output of a dot_general."""
  (lc, rc), (lb, rb) = dims
  letters = iter(string.ascii_letters)
  lhs, rhs = [None] * lhs_ndim, [None] * rhs_ndim
  for a, b in zip(tuple(lc) + tuple(lb), tuple(rc) + tuple(rb)):
    lhs[a] = rhs[b] = next(letters)
  lhs = [c or next(letters) for c in lhs]
  rhs = [c or next(letters) for c in rhs]
  used_l, used_r = set(lc) | set(lb), set(rc) | set(rb)
  out = ([lhs[d] for d in lb] +
         [lhs[d] for d in range(lhs_ndim) if d not in used_l] +
         [rhs[d] for d in range(rhs_ndim) if d not in used_r])
  return "".join(lhs), "".join(rhs), "".join(out)


def quantize_view(x, recipe, rows, k):
  """(value in x's layout, choice, tensor-level errors) of MoR on a 2-D view."""
  perm = tuple(rows) + tuple(k)
  xt = np.transpose(x, perm)
  view = xt.reshape(int(np.prod(xt.shape[:len(rows)])), -1)
  value, choice, errs = ref.mor(view, *describe(recipe))
  return np.transpose(value.reshape(xt.shape), np.argsort(perm)), choice, errs


def views(dims, lhs_ndim, rhs_ndim):
  """{(gemm, role): (operand name, rows, K)}: docs/numerics.md section 6's six views."""
  (lc, rc), (lb, rb) = dims
  lc, rc, lb, rb = list(lc), list(rc), list(lb), list(rb)
  lf = [d for d in range(lhs_ndim) if d not in lc + lb]
  rf = [d for d in range(rhs_ndim) if d not in rc + rb]
  nb, nlf = len(lb), len(lf)
  ob, olf = list(range(nb)), list(range(nb, nb + nlf))
  orf = list(range(nb + nlf, nb + nlf + len(rf)))
  return {
      ("fprop", "activation"): ("x", lb + lf, lc),
      ("fprop", "weight"): ("w", rb + rf, rc),
      ("dgrad", "gradient"): ("g", ob + olf, orf),
      ("dgrad", "weight"): ("w", rb + sorted(rc), rf),
      ("wgrad", "activation"): ("x", lb + sorted(lc), lf),
      ("wgrad", "gradient"): ("g", ob + orf, olf),
  }


def dot_general(x, w, g, dims, policy):
  """Y, dX, dW (float64) for dL/dY = g, their error bounds, and the decisions.

  Returns:
    ``((y, dx, dw), bounds, decisions)``: ``bounds`` are the same products
    of the absolute values (an accumulation-order error of a float32 GEMM is
    below about K * eps * bound); ``decisions[gemm, role]`` is ``(choice,
    errors)`` of that quantization.
  """
  lhs, rhs, out = labels(dims, x.ndim, w.ndim)
  operands = {"x": np.asarray(x), "w": np.asarray(w), "g": np.asarray(g)}
  q = {}
  for (gemm, role), (name, rows, k) in views(dims, x.ndim, w.ndim).items():
    q[gemm, role] = quantize_view(operands[name], getattr(policy, role), rows,
                                  k)
  v = {key: val[0].astype(np.float64) for key, val in q.items()}
  eqs = {"fprop": (f"{lhs},{rhs}->{out}", "activation", "weight"),
         "dgrad": (f"{out},{rhs}->{lhs}", "gradient", "weight"),
         "wgrad": (f"{lhs},{out}->{rhs}", "activation", "gradient")}
  results, bounds = [], []
  for gemm, (eq, a, b) in eqs.items():
    results.append(np.einsum(eq, v[gemm, a], v[gemm, b]))
    bounds.append(np.einsum(eq, np.abs(v[gemm, a]), np.abs(v[gemm, b])))
  return tuple(results), tuple(bounds), {key: val[1:] for key, val in q.items()}


def assert_close(got, want, bound, name=""):
  """|got - want| within float32 accumulation error of the GEMM."""
  got = np.asarray(got, np.float64)
  assert got.shape == want.shape, (name, got.shape, want.shape)
  err = np.abs(got - want)
  ok = err <= 1e-5 * bound + 1e-30
  assert ok.all(), (name, float(err.max()), float((err / (bound + 1e-30)).max()))


def assert_decision(stats, choice, errs, recipe, name=""):
  """A NamedMoRStats agrees with the reference's choice and errors."""
  k = len(recipe.candidates)
  want = (np.bincount(np.ravel(choice), minlength=k) /
          np.size(choice)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(stats.fraction_blocks), want,
                             rtol=1e-6, err_msg=str(name))
  if recipe.granularity == "tensor":
    np.testing.assert_array_equal(np.asarray(stats.fraction_blocks), want,
                                  err_msg=str(name))
  np.testing.assert_allclose(np.asarray(stats.error), errs, rtol=1e-5,
                             atol=2e-7, err_msg=str(name))
  assert stats.names == recipe.names, (name, stats.names)
