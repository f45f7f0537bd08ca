"""``mor_jax.describe``: which policy each GEMM layer of a model gets, dry."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
from flax import nnx

from mor_jax import _dot
from mor_jax import _policy
from mor_jax import dense
from mor_jax import nnx as mor_nnx

# Flax layers that hold a GEMM but that no route converts: listed as plain.
_LINEN_OTHER = (nn.Conv, nn.ConvTranspose, nn.ConvLocal)
_NNX_OTHER = (nnx.Conv, nnx.ConvTranspose)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Layer:
  """One GEMM-bearing layer of a model and the policy it gets.

  Attributes:
    path: the module path ``PolicyRules`` match ("Block_0/attn/qkv").
    kind: the layer's class name ("Dense", "Linear", "MoRDense", ...).
    kernel_shape: the shape of its kernel.
    gemm: (k, n): the elements the kernel contracts and its output
      features; None where unknown.
    policy: the ``mor_jax.Policy`` it runs with, or None (plain).
  """

  path: str
  kind: str
  kernel_shape: tuple[int, ...]
  gemm: tuple[int, int] | None
  policy: _policy.Policy | None


@dataclasses.dataclass(frozen=True)
class Description:
  """The layers of a model, in call (linen) or graph (NNX) order.

  ``str()`` is a table: path, layer, kernel shape, k x n and the policy
  ("plain" for a layer left to ``lax.dot_general``).

  Attributes:
    layers: one ``Layer`` each.
  """

  layers: tuple[Layer, ...]

  def __str__(self) -> str:
    rows = [("path", "layer", "kernel", "k x n", "policy")]
    for layer in self.layers:
      gemm = "?" if layer.gemm is None else "{} x {}".format(*layer.gemm)
      rows.append((layer.path or "(top)", layer.kind,
                   "x".join(map(str, layer.kernel_shape)), gemm,
                   policy_summary(layer.policy)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
             for r in rows]
    return "\n".join(lines[:1] + ["  ".join("-" * w for w in widths)] +
                     lines[1:])


def policy_summary(policy: _policy.Policy | None) -> str:
  """A short text for a policy: "plain", or its recipe and the exceptions.

  E.g. "TensorLevelMoR(1xK), gradient: NoQuant": every role but the
  gradient gets tensor-level MoR with one scale per row of K elements.
  """
  if policy is None:
    return "plain"
  names = [_recipe_summary(getattr(policy, r)) for r in _policy.ROLES]
  common = max(names, key=names.count)  # The first of the most frequent.
  text = common + "".join(f", {role}: {name}"
                          for role, name in zip(_policy.ROLES, names)
                          if name != common)
  return text if policy.execution == "auto" else (
      f"{text} [{policy.execution}]")


def _recipe_summary(recipe) -> str:
  block = getattr(recipe, "block_shape", None)
  if block is None:
    return type(recipe).__name__
  dims = "x".join("K" if b is None else str(b) for b in block)
  return f"{type(recipe).__name__}({dims})"


def describe(model: nn.Module | nnx.Module, *example_args: Any,
             policy: _policy.Policy | _policy.PolicyRules | None = None,
             method: str | None = None, **example_kwargs: Any) -> Description:
  """Lists every GEMM layer of a model and its policy, computing nothing.

  For a linen model, ``model.init`` is traced with ``jax.eval_shape`` on the
  example arguments (arrays or ``jax.ShapeDtypeStruct``), converted by
  ``mor_jax.dense.convert(model, policy)`` first where ``policy`` is given.
  For an NNX model the module graph is read; with ``policy``, the policy
  ``mor_jax.nnx.convert`` would give each layer (the model is not changed).
  ``PolicyRules`` that match no layer warn, as the conversions do.

  Args:
    model: a linen Module (unbound) or an NNX Module.
    *example_args: the linen model's call arguments (unused for NNX).
    policy: what to convert with; None: describe the model as it is.
    method: the linen method to trace (default ``__call__``).
    **example_kwargs: the linen model's keyword call arguments.

  Returns:
    A ``Description``; ``print`` it for a table.

  Examples:
    >>> import jax, jax.numpy as jnp, flax.linen as nn, mor_jax
    >>> class MLP(nn.Module):
    ...   @nn.compact
    ...   def __call__(self, x):
    ...     return nn.Dense(4, name="lm_head")(nn.Dense(64, name="fc1")(x))
    >>> x = jax.ShapeDtypeStruct((8, 32), jnp.bfloat16)
    >>> d = mor_jax.describe(MLP(), x, policy=mor_jax.PolicyRules(
    ...     rules=(("lm_head", None),)))
    >>> print(d)
    path     layer  kernel  k x n    policy
    -------  -----  ------  -------  -------------------
    fc1      Dense  32x64   32 x 64  TensorLevelMoR(1xK)
    lm_head  Dense  64x4    64 x 4   plain
    >>> d.layers[0].policy == mor_jax.Policy()
    True
  """
  if isinstance(model, nnx.Module):
    return Description(tuple(_describe_nnx(model, policy)))
  if not isinstance(model, nn.Module):
    raise TypeError(f"model must be a Flax linen or NNX Module, got {model!r}.")
  if policy is not None:
    model = dense.convert(model, policy)
  seen: dict[str, nn.Module] = {}

  def interceptor(next_fun, args, kwargs, context):
    if context.method_name == "__call__" and isinstance(
        context.module, (nn.Dense, nn.DenseGeneral, nn.Einsum) + _LINEN_OTHER):
      seen.setdefault("/".join(context.module.path), context.module)
    return next_fun(*args, **kwargs)

  # Arrays and ShapeDtypeStructs are traced; other arguments stay static.
  leaves, treedef = jax.tree.flatten((example_args, example_kwargs))
  traced = [hasattr(x, "shape") and hasattr(x, "dtype") for x in leaves]

  def init(*arrays):
    it = iter(arrays)
    args, kwargs = jax.tree.unflatten(
        treedef, [next(it) if t else x for x, t in zip(leaves, traced)])
    return model.init(jax.random.key(0), *args, method=method, **kwargs)

  with _policy.recording() as records, nn.intercept_methods(interceptor):
    variables = nn.meta.unbox(jax.eval_shape(
        init, *(x for x, t in zip(leaves, traced) if t)))
  layers: dict[str, Layer] = {}
  for path, kind, shape, gemm, chosen in records:
    if path in seen:  # Flax's layer, not the MoRDotGeneral inside it.
      kind = type(seen[path]).__name__
    layers.setdefault(path, Layer(path=path, kind=kind, kernel_shape=shape,
                                  gemm=gemm, policy=chosen))
  for path, module in seen.items():
    if path not in layers:  # A layer no MoR route reached.
      kernel = _lookup(variables.get("params", {}), path)
      layers[path] = Layer(
          path=path, kind=type(module).__name__,
          kernel_shape=() if kernel is None else tuple(kernel.shape),
          gemm=None, policy=_injected(getattr(module, "dot_general", None)))
  return Description(tuple(layers.values()))


def _lookup(params, path: str):
  node = params
  for name in path.split("/") if path else []:
    if not isinstance(node, dict) or name not in node:
      return None
    node = node[name]
  return node.get("kernel") if isinstance(node, dict) else None


def _injected(op) -> _policy.Policy | None:
  """The policy of ``functools.partial(mor_jax.dot_general, policy=p)``."""
  if isinstance(op, functools.partial) and op.func is _dot.dot_general:
    return op.keywords.get("policy")
  return None


def _describe_nnx(model: nnx.Module, policy):
  # pylint: disable=protected-access
  _policy.check(policy)
  layers = []
  with _policy.tracking(policy):
    for path, node in nnx.iter_graph(model):
      path = mor_nnx._path(path)
      found = mor_nnx._gemm_hook(node)
      if found is not None:
        hook, gemm = found
        op = getattr(node, hook)
        if isinstance(op, mor_nnx.MoRDotGeneral):
          chosen = op.policy
        elif mor_nnx._is_default_hook(node, hook):
          chosen = _policy.policy_at(policy, path, gemm)
        else:
          chosen = _injected(op)
      elif isinstance(node, mor_nnx.MoRLinear):
        gemm, chosen = (node.in_features, node.out_features), node.policy
      elif isinstance(node, _NNX_OTHER):
        gemm, chosen = None, None
      else:
        continue
      layers.append(Layer(path=path, kind=type(node).__name__,
                          kernel_shape=tuple(node.kernel.shape), gemm=gemm,
                          policy=chosen))
  return layers
