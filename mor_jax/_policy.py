"""Which MoR recipe each GEMM operand gets: per layer, or by module path."""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
import numbers
import re
import typing
import warnings
from collections.abc import Callable, Iterator
from typing import Literal

import numpy as np

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
    decision per tensor, and no batch dimensions. Policies with 128x128
    blocks or sub-tensor MoR run through the block GEMM
    (``kernels/block_gemm.py``: scales every 128 of K, each block pair in
    FP8 or BF16); other dot_generals run as "emulate". On a CPU it runs
    XLA's FP8 dot, or the block GEMM's jnp twin;
  - "auto" (the default): "fp8" on GPUs with FP8 tensor cores (sm_89 and
    newer), "emulate" elsewhere; 128x128-block and sub-tensor policies take
    "fp8" where the block GEMM's kernel runs (Hopper, 16-bit values: there
    it trained the ~1B preset 1.14x faster than emulation,
    docs/benchmarks.md) and "emulate" elsewhere.

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
    NoQuant()
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
  "Block_0/attn/qkv"), the same on every route: for ``MoRDotGeneral``
  (Flax's ``dot_general_cls``) it is the path of the layer that holds it. A
  rule applies where its regex matches (``re.fullmatch``) the path with a
  leading "/" ("/Block_0/attn/qkv") or a tail of the path that starts at a
  module name ("Block_0/attn/qkv", "attn/qkv", "qkv"). So ``lm_head`` and
  ``.*/lm_head`` both match a top-level "lm_head" and "Decoder/lm_head";
  ``/lm_head`` matches only the top-level one; ``mlp/.*`` matches every
  layer under any module named "mlp". ``None`` in place of a Policy keeps
  the layer a plain ``lax.dot_general``: unquantized, without statistics.

  Layers too small for FP8 to pay stay plain whatever the rules say, as do
  layers ``filter`` rejects; both look at the layer's GEMM size (k, n): k
  the elements its kernel contracts, n its output features (the kernel's
  other, non-batch dimensions, multiplied).

  Attributes:
    rules: ((regex, Policy or None), ...), tried in order.
    default: the Policy (or None) of a path no rule matches.
    min_size: a layer with k or n below this stays plain (0: none does).
    multiple_of: a layer whose k or n is not a multiple of this stays plain
      (FP8 tensor cores want multiples of 16).
    filter: ``filter(path, (k, n)) -> bool``; False keeps the layer plain
      (torchao's ``module_filter_fn``). None: every layer passes.

  Examples:
    >>> import mor_jax
    >>> rules = mor_jax.PolicyRules(
    ...     rules=((r"lm_head", None),
    ...            (r"mlp/.*", mor_jax.Policy(gradient=mor_jax.NoQuant()))),
    ...     min_size=64, multiple_of=16)
    >>> rules.policy_for("lm_head") is None
    True
    >>> rules.policy_for("Block_0/mlp/fc1").gradient
    NoQuant()
    >>> rules.policy_for("Block_0/attn/qkv", (768, 2304)) == mor_jax.Policy()
    True
    >>> rules.policy_for("Block_0/attn/qkv", (768, 10)) is None   # too small
    True
  """

  rules: tuple[tuple[str, Policy | None], ...] = ()
  default: Policy | None = Policy()
  min_size: int = 0
  multiple_of: int = 1
  filter: Callable[[str, tuple[int, int]], bool] | None = None

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
    for name, low in (("min_size", 0), ("multiple_of", 1)):
      value = getattr(self, name)
      # Any integer (np.int64 too, as block_shape takes), stored as an int.
      if not isinstance(value, numbers.Integral) or isinstance(
          value, (bool, np.bool_)) or value < low:
        raise ValueError(f"PolicyRules.{name} must be an int >= {low}, got "
                         f"{value!r}.")
      object.__setattr__(self, name, int(value))
    if self.filter is not None and not callable(self.filter):
      raise TypeError("PolicyRules.filter must be callable(path, (k, n)) "
                      f"or None, got {self.filter!r}.")
    object.__setattr__(self, "rules", rules)

  def policy_for(self, path: str,
                 gemm: tuple[int, int] | None = None) -> Policy | None:
    """The Policy of the layer at ``path``.

    Args:
      path: the layer's module names joined by "/".
      gemm: the layer's (k, n), or None where unknown (then ``min_size``,
        ``multiple_of`` and ``filter`` are not applied).

    Returns:
      A ``Policy``, or None for a plain ``lax.dot_general``.
    """
    policy = self.default
    candidates = _candidates(path)
    for i, (pattern, rule_policy) in enumerate(self.rules):
      if any(re.fullmatch(pattern, c) for c in candidates):
        seen = _MATCHED.get()
        if seen is not None:
          seen.add((id(self), i))
        policy = rule_policy
        break
    if policy is None or gemm is None:
      return policy
    k, n = (int(d) for d in gemm)
    if (min(k, n) < self.min_size or k % self.multiple_of or
        n % self.multiple_of):
      return None
    if self.filter is not None and not self.filter(path, (k, n)):
      return None
    return policy


def _candidates(path: str) -> list[str]:
  """The strings a rule is matched against: "/path" and each tail of path."""
  names = path.split("/") if path else []
  return ["/" + path] + ["/".join(names[i:]) for i in range(len(names))]


# While a conversion traces the model: the (id(rules), index) pairs matched.
_MATCHED: contextvars.ContextVar[set | None] = contextvars.ContextVar(
    "mor_jax_matched_rules", default=None)


@contextlib.contextmanager
def tracking(policy: Policy | PolicyRules | None) -> Iterator[None]:
  """Warns, once per rule, about each rule that matched no layer inside.

  Only the outermost context tracks (a converted model calling its own
  methods traces one model), and only if the body returns normally.
  """
  if not isinstance(policy, PolicyRules) or _MATCHED.get() is not None:
    yield
    return
  seen: set = set()
  token = _MATCHED.set(seen)
  try:
    yield
  finally:
    _MATCHED.reset(token)
  warn_unmatched(policy, seen)


def warn_unmatched(rules: PolicyRules, seen: set) -> None:
  """Warns about each rule of ``rules`` whose (id, index) is not in seen."""
  for i, (pattern, _) in enumerate(rules.rules):
    if (id(rules), i) not in seen:
      # The same text from this line is shown once (Python's default filter).
      warnings.warn(
          f"mor_jax.PolicyRules: rule {i} ({pattern!r}) matched no layer "
          "in this call. "
          "A rule matches the layer path with a leading '/' or any tail of "
          "it, e.g. 'lm_head' or '.*/lm_head' for 'lm_head' and "
          "'Decoder/lm_head'.", UserWarning, stacklevel=2)


def gemm_size(rhs_shape, dimension_numbers) -> tuple[int, int]:
  """A layer's (k, n): its kernel's contracted and output sizes."""
  (_, contract), (_, batch) = dimension_numbers
  ndim = len(rhs_shape)
  contract = {d % ndim for d in contract}
  kept = set(range(ndim)) - contract - {d % ndim for d in batch}
  return (math.prod(rhs_shape[d] for d in contract),
          math.prod(rhs_shape[d] for d in kept))


# While mor_jax.describe traces a model: the list each layer reports to.
_RECORD: contextvars.ContextVar[list | None] = contextvars.ContextVar(
    "mor_jax_record", default=None)


def record(path: str, kind: str, kernel_shape, gemm: tuple[int, int],
           policy: Policy | None) -> None:
  """Reports a layer's policy to ``mor_jax.describe``, where it listens."""
  sink = _RECORD.get()
  if sink is not None:
    sink.append((path, kind, tuple(kernel_shape), gemm, policy))


@contextlib.contextmanager
def recording() -> Iterator[list]:
  """Collects ``record`` calls made inside (see ``mor_jax.describe``)."""
  sink: list = []
  token = _RECORD.set(sink)
  try:
    yield sink
  finally:
    _RECORD.reset(token)


def _check_policy(policy, name: str) -> None:
  if policy is not None and not isinstance(policy, Policy):
    raise TypeError(f"{name} must be a mor_jax.Policy or None, got {policy!r}.")


def check(policy) -> None:
  """Fails unless ``policy`` is a Policy, a PolicyRules or None."""
  if policy is not None and not isinstance(policy, (Policy, PolicyRules)):
    raise TypeError("policy must be a mor_jax.Policy, a mor_jax.PolicyRules "
                    f"or None, got {policy!r}.")


def policy_at(policy: Policy | PolicyRules | None, path: str,
              gemm: tuple[int, int] | None = None) -> Policy | None:
  """The Policy that applies at ``path`` (GEMM size ``gemm``); checks types."""
  check(policy)
  if isinstance(policy, PolicyRules):
    return policy.policy_for(path, gemm)
  return policy
