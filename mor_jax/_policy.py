"""Which MoR recipe each GEMM operand gets: per layer, or by module path."""

from __future__ import annotations

import dataclasses
import re
import typing
from typing import Literal

from mor_jax import _recipes

ROLES = ("activation", "weight", "gradient")
Execution = Literal["auto", "fp8", "emulate"]
EXECUTIONS: tuple[Execution, ...] = typing.get_args(Execution)

# docs/numerics.md section 6: tensor-level MoR with one scale per contraction vector of
# the operand's 2-D GEMM view, the partition a real FP8 GEMM can execute.
DEFAULT_RECIPE = _recipes.TensorLevelMoR(block_shape=(1, None))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Policy:
  """One MoR recipe per GEMM role of a linear layer (docs/numerics.md section 6).

  For Y = X W, ``activation`` quantizes X (in fprop and in wgrad), ``weight``
  quantizes W (in fprop and in dgrad) and ``gradient`` quantizes dY (in dgrad
  and in wgrad). Each recipe acts on the operand's 2-D GEMM view
  [rows, K]: rows are the batch and non-contracting dimensions flattened, K
  the dimensions contracted in that GEMM, so ``block_shape=(1, None)`` is one
  scale per contraction vector and ``(128, 128)`` tiles
  [non-contracting, contracting].

  ``execution`` says how the GEMMs run (docs/numerics.md section 6.1):

  - "emulate": BF16 GEMMs on the quantized-and-dequantized operands, the
    reference, which runs everywhere;
  - "fp8": each GEMM whose two operands MoR accepted in FP8 runs on FP8
    tensor cores from the codes (the others in BF16 on the operands
    "emulate" uses), with the choice made on the device: the same decisions
    and statistics as "emulate", bit for bit. It needs per-tensor or
    per-row scales (``block_shape`` (None, None) or (1, None)) and one
    decision per tensor, and no batch dimensions; other dot_generals, and
    policies with 128x128 blocks or sub-tensor MoR, run as "emulate". On a
    CPU it runs XLA's FP8 dot;
  - "auto" (the default): "fp8" on GPUs with FP8 tensor cores (sm_89 and
    newer), "emulate" elsewhere.

  Attributes:
    activation: recipe for the left operand (X).
    weight: recipe for the right operand (W).
    gradient: recipe for the output gradient (dY).
    execution: "auto", "fp8" or "emulate".

  Examples:
    >>> import mor_jax
    >>> p = mor_jax.Policy(gradient=mor_jax.SubTensorMoR())
    >>> p.activation
    TensorLevelMoR(block_shape=(1, None), scaling='gam', group_shape=None, threshold=0.045)
    >>> mor_jax.Policy.uniform(mor_jax.NoQuant()).weight
    NoQuant(scaling='gam', group_shape=None)
  """

  activation: _recipes.Recipe = DEFAULT_RECIPE
  weight: _recipes.Recipe = DEFAULT_RECIPE
  gradient: _recipes.Recipe = DEFAULT_RECIPE
  execution: Execution = "auto"

  def __post_init__(self):
    if self.execution not in EXECUTIONS:
      raise ValueError(f"Policy.execution must be one of {EXECUTIONS}, got "
                       f"{self.execution!r}.")
    for role in ROLES:
      recipe = getattr(self, role)
      if not isinstance(recipe, _recipes.Recipe):
        raise TypeError(
            f"Policy.{role} must be a mor_jax.Recipe (e.g. "
            f"mor_jax.TensorLevelMoR()), got {recipe!r}.")
      if recipe.block_shape is not None and len(recipe.block_shape) != 2:
        raise ValueError(
            f"Policy.{role}.block_shape must have 2 entries, one for the rows "
            "and one for the contracting dimension of the operand's 2-D GEMM "
            f"view; got {recipe.block_shape}.")

  @classmethod
  def uniform(cls, recipe: _recipes.Recipe,
              execution: Execution = "auto") -> Policy:
    """The same recipe for activations, weights and gradients."""
    return cls(activation=recipe, weight=recipe, gradient=recipe,
               execution=execution)


@dataclasses.dataclass(frozen=True, kw_only=True)
class PolicyRules:
  """A model-wide choice of Policy by module path, first matching rule wins.

  A layer's path is its module names joined by "/" (e.g.
  "Block_0/attn/qkv"); a rule applies where its regex matches the whole path
  (``re.fullmatch``). ``None`` in place of a Policy keeps the layer a plain
  ``lax.dot_general``: unquantized and without statistics.

  Attributes:
    rules: ((regex, Policy or None), ...), tried in order.
    default: the Policy (or None) of a path no rule matches.

  Examples:
    >>> import mor_jax
    >>> rules = mor_jax.PolicyRules(
    ...     rules=((r".*/lm_head", None),
    ...            (r".*/mlp/.*", mor_jax.Policy(gradient=mor_jax.NoQuant()))))
    >>> rules.policy_for("Model/lm_head") is None
    True
    >>> rules.policy_for("Model/Block_0/mlp/fc1").gradient
    NoQuant(scaling='gam', group_shape=None)
    >>> rules.policy_for("Model/Block_0/attn/qkv") == mor_jax.Policy()
    True
  """

  rules: tuple[tuple[str, Policy | None], ...] = ()
  default: Policy | None = Policy()

  def __post_init__(self):
    try:
      rules = tuple((pattern, policy) for pattern, policy in self.rules)
    except (TypeError, ValueError):
      raise ValueError(
          "PolicyRules.rules must be a sequence of (regex, Policy or None) "
          f"pairs, got {self.rules!r}.") from None
    for i, (pattern, policy) in enumerate(rules):
      try:
        re.compile(pattern)
      except (TypeError, re.error) as e:
        raise ValueError(
            f"PolicyRules.rules[{i}][0] must be a regular expression, got "
            f"{pattern!r} ({e}).") from None
      _check_policy(policy, f"PolicyRules.rules[{i}][1]")
    _check_policy(self.default, "PolicyRules.default")
    object.__setattr__(self, "rules", rules)

  def policy_for(self, path: str) -> Policy | None:
    """The Policy of the layer at ``path`` ("/"-joined module names)."""
    for pattern, policy in self.rules:
      if re.fullmatch(pattern, path):
        return policy
    return self.default


def _check_policy(policy, name: str) -> None:
  if policy is not None and not isinstance(policy, Policy):
    raise TypeError(f"{name} must be a mor_jax.Policy or None, got {policy!r}.")


def policy_at(policy: Policy | PolicyRules | None, path: str) -> Policy | None:
  """The Policy that applies at ``path``; checks the argument's type."""
  if isinstance(policy, PolicyRules):
    return policy.policy_for(path)
  if policy is not None and not isinstance(policy, Policy):
    raise TypeError("policy must be a mor_jax.Policy, a mor_jax.PolicyRules "
                    f"or None, got {policy!r}.")
  return policy
