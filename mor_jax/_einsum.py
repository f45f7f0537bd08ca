"""Two-operand einsums as ``lax.dot_general`` (the GEMM of an Einsum layer)."""

from __future__ import annotations

import numpy as np
import opt_einsum


def dimension_numbers(einsum_str: str, lhs_shape, rhs_shape):
  """``dot_general`` dimension numbers of a two-operand einsum.

  Contracted labels are taken in sorted order and batch labels in output
  order, as ``jnp.einsum`` does, so the GEMM is the same.

  Args:
    einsum_str: an explicit two-operand equation ("...->...").
    lhs_shape: the first operand's shape.
    rhs_shape: the second operand's shape.

  Returns:
    ``(dimension_numbers, perm, rhs_labels, out_labels)``:
    ``lax.transpose(lax.dot_general(lhs, rhs, dimension_numbers), perm)`` is
    the einsum; the labels have any ellipsis expanded.
  """
  if "->" not in einsum_str or einsum_str.count(",") != 1:
    raise ValueError(
        "einsum_str must be explicit (with '->') and have exactly two "
        f"operands, got {einsum_str!r}.")
  operands, out, _ = opt_einsum.parser.parse_einsum_input(
      (einsum_str, np.empty(lhs_shape, np.bool_),
       np.empty(rhs_shape, np.bool_)))
  lhs, rhs = operands.split(",")
  for labels, name in ((lhs, "the input"), (rhs, "the kernel")):
    if len(set(labels)) != len(labels):
      raise ValueError(
          f"einsum_str {einsum_str!r}: a label repeats within {name}; a "
          "diagonal is not a GEMM.")
  for c in lhs + rhs:
    if c not in out and (c not in lhs or c not in rhs):
      raise ValueError(
          f"einsum_str {einsum_str!r}: label {c!r} is summed within one "
          "operand; sum it before the layer.")
  batch = [c for c in out if c in lhs and c in rhs]
  contract = sorted(set(lhs) & set(rhs) - set(out))
  dims = ((tuple(lhs.index(c) for c in contract),
           tuple(rhs.index(c) for c in contract)),
          (tuple(lhs.index(c) for c in batch),
           tuple(rhs.index(c) for c in batch)))
  names = batch + [c for c in lhs + rhs if c not in batch + contract]
  return dims, tuple(names.index(c) for c in out), rhs, out
