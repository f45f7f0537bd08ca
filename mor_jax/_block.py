"""FP8 execution of 128x128-block recipes: the block GEMM (docs/numerics.md 6.1).

Under execution "fp8" (and "auto" where the kernel runs: ``applies``), a
dot_general without batch dimensions whose roles' recipes are each
``block_capable`` or BF16 only (at least one of them quantized) runs each
of its three GEMMs through ``kernels/block_gemm.py``:
every pair of 128x128 blocks in FP8 from the codes, with the blocks' scales
applied every 128 of K, or in the compute dtype on the emulated values.

The operands are the quantizations of the view path (``mor_jax._dot``),
on the same [rows, K] views with the same passes: ``mor_jax._mor.select``
with codes as output instead of values; where the view path quantizes a
tensor once for both its GEMMs (``mor_jax._dot.shared``), the second GEMM's
operand is the first's, transposed (``transpose``). Decisions and statistics
are the bits of "emulate". The operand's 16-bit values are x as it came
(with the values of blocks in a second FP8 format, three-way MoR's E5M2):
the GEMM dequantizes the codes itself, and only in the blocks its BF16
loop reads (kernels/wide.py), so an operand whose pairs all run in FP8
costs no pass writing them.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from mor_jax import _dispatch
from mor_jax import _formats
from mor_jax import _fp8
from mor_jax import _mor
from mor_jax import _quantize
from mor_jax import _recipes
from mor_jax import _scaling
from mor_jax import _stats
from mor_jax import _xla
from mor_jax import kernels

bg = kernels.block_gemm


def block_capable(recipe: _recipes.Recipe) -> bool:
  """128x128 blocks on the [rows, K] view, FP8 candidates E4M3 or E5M2.

  The operand's codes are those of the first candidate (E4M3 in
  ``TensorLevelMoR`` and ``SubTensorMoR``); blocks in another FP8 format
  (three-way MoR's E5M2) multiply in the compute dtype, exactly.
  """
  fp8 = recipe.formats[:-1]
  return (recipe.block_shape == (bg.BLOCK, bg.BLOCK) and bool(fp8) and
          all(f in (_formats.E4M3, _formats.E5M2) for f in fp8))


def applies(execution: _fp8.Execution, dims, policy, dtype,
            shapes) -> bool:
  """Whether this dot_general's GEMMs run through the block GEMM.

  "fp8" asks for it by name (the kernel where it runs, its jnp twin
  elsewhere); "auto" takes it where the kernel itself runs (Hopper, a
  16-bit compute ``dtype``, the codes' pairs this jax's Mosaic GPU takes,
  arrays of ``shapes`` it indexes: ``_dispatch.gemm_backend``), as on an
  H200 it trained the ~1B preset 1.14x faster than emulation
  (docs/benchmarks.md); the twin would not.
  """
  (_, _), (lb, _) = dims
  recipes = (policy.activation, policy.weight, policy.gradient)
  if (lb or not all(block_capable(r) or _fp8.bf16_only(r) for r in recipes)
      or not any(block_capable(r) for r in recipes)):
    return False
  if execution == "auto":
    codes = [r.formats[0].dtype for r in recipes if block_capable(r)]
    # The kernel runs on Hopper only, so FP8 tensor cores come with it.
    return _dispatch.gemm_backend(_dispatch.current(), dtype, codes,
                                  shapes) == "pallas"
  return execution == "fp8"


# jit: called eagerly, op by op, its error sums would be added in another
# order than ``mor_quantize``'s (jitted) and the statistics differ in the
# last bits from "emulate"'s.
@functools.partial(jax.jit, static_argnums=(1, 2))
def quantize(x: jax.Array, recipe: _recipes.Recipe,
             impl: _dispatch.Implementation
             ) -> tuple[bg.BlockOperand | jax.Array, _stats.NamedMoRStats]:
  """MoR of a view x [rows, K] as ``mor_quantize`` makes it.

  Returns:
    (the operand: a ``BlockOperand``, or x itself for BF16-only recipes;
    the statistics).
  """
  part = _mor.partition(x.shape, recipe)
  m, choice, st = _mor.select(x, _dispatch.passes(part, impl), recipe,
                              "codes", part)
  stats = _stats.NamedMoRStats.of(st, recipe.names)
  if _fp8.bf16_only(recipe):
    return x, stats
  own = recipe.formats[0]
  codes, _, scale = m.quantized(own)

  def other_values(fmt):  # As "values" output has it; the codes' own: x.
    if fmt == own:
      return x
    q, _, s = m.quantized(fmt)
    return part.from_blocks(_xla.dequantize_blocks(
        part.to_blocks(q.astype(jnp.float32)), part.expand(s), x.dtype))

  # The GEMM dequantizes the codes where it reads their blocks
  # (``BlockOperand.wide``); blocks in another FP8 format need their values.
  wide = (_mor.chosen_value(x, choice, recipe, part, other_values)
          if recipe.formats[1:-1] else x)
  # tensor-level: a 0-d choice, one code for every block
  rep = bg.representation_codes(jnp.broadcast_to(choice, scale.shape),
                                recipe.names)
  return bg.BlockOperand(codes, _scaling.reciprocal(scale), rep, wide), stats


def transpose(op: bg.BlockOperand | jax.Array,
              impl: _dispatch.Implementation) -> bg.BlockOperand | jax.Array:
  """``quantize``'s operand for the transposed view, from one quantization.

  Exact for square blocks (``mor_jax._dot.symmetric`` recipes): the blocks
  of x^T are those of x transposed, with the same scales, codes and choices.
  Only the one-byte codes (and the per-block grids) are transposed, by
  ``kernels/transpose.py`` where the kernels run: the block GEMM reads the
  wide values in either layout, so they stay where they are
  (``BlockOperand.transposed`` says which).
  """
  if not isinstance(op, bg.BlockOperand):
    return op.T
  codes = (kernels.transpose.transpose_codes(op.codes,
                                             interpret=impl.interpret)
           if impl.uses_pallas(op.codes.shape) else op.codes.T)
  return bg.BlockOperand(codes, op.recip.T, op.rep.T, op.wide,
                         not op.transposed)


def gemm(a, b, out_dtype, precision,
         impl: _dispatch.Implementation) -> jax.Array:
  """A [rows_a, K] times B [rows_b, K]^T, each operand from ``quantize``.

  The compiled kernel on Hopper GPUs for 16-bit compute dtypes (as
  ``_dispatch.gemm_backend`` picks the per-channel GEMM), its jnp twin
  elsewhere; with a BF16-only operand, XLA's dot.
  """
  blocked = [isinstance(op, bg.BlockOperand) for op in (a, b)]
  dtype = jnp.result_type(*(op.wide if bo else op
                            for op, bo in zip((a, b), blocked)))
  # The emulated path's operands, straight-through: a second-order gradient
  # differentiates the backward pass, and the codes carry no gradient.
  ste = [_quantize.straight_through(op.wide.T if op.transposed else op.wide,
                                    op.values) if bo else op
         for op, bo in zip((a, b), blocked)]
  emulated = jax.lax.dot_general(
      ste[0].astype(dtype), ste[1].astype(dtype), _fp8.TN,
      precision=precision,
      preferred_element_type=kernels.gemm.accumulator_dtype(dtype)
  ).astype(out_dtype)
  if not all(blocked):
    return emulated
  # The kernel takes one 16-bit dtype (``dtype`` then is it); the twin casts
  # the values it computes.
  shapes = (a.codes.shape, b.codes.shape, emulated.shape)
  if _dispatch.gemm_backend(impl, dtype, (a.codes.dtype, b.codes.dtype),
                           shapes) == "pallas":
    out = bg.block_gemm(a, b, out_dtype=out_dtype)
  else:
    out = bg.block_gemm_reference(a, b, out_dtype=out_dtype,
                                  precision=precision)
  # Differentiated, the GEMM is the emulated one; otherwise nothing reads
  # that product and XLA removes it.
  return _quantize.straight_through(emulated, out)
