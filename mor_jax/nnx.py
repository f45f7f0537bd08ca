"""Flax NNX layers whose matrix multiplies run through MoR (docs/numerics.md section 6).

``MoRLinear`` is ``flax.nnx.Linear`` with a ``policy``: the same parameters,
and two kinds of statistics variables. ``convert(model, policy)`` gives a
model's own ``nnx.Linear``, ``nnx.LinearGeneral`` and ``nnx.Einsum`` the
same, in place, through their ``dot_general`` / ``einsum_op`` hooks
(``MoRDotGeneral``, ``MoREinsumOp``). The variables:

- ``ForwardStats`` (attribute ``fprop``, an ``nnx.Dict`` with one per
  role): the forward statistics, updated by every call,
  ``{"activation": s, "weight": s}``;
- ``GradProbes`` (attributes ``dgrad`` and ``wgrad``, likewise): zero-valued
  probes whose gradient is the backward statistics,
  ``{"gradient": s, "weight": s}`` and ``{"activation": s, "gradient": s}``.

Each ``s`` is a ``mor_jax.NamedMoRStats``. ``nnx.grad`` differentiates
``nnx.Param`` only by default; add ``GradProbes`` to its filter to get the
backward statistics, then keep the parameter gradients for the optimizer:

Examples:
  >>> import jax, jax.numpy as jnp, optax
  >>> from flax import nnx
  >>> from mor_jax.nnx import MoRLinear, GradProbes, flatten_stats
  >>> model = MoRLinear(16, 4, rngs=nnx.Rngs(0))
  >>> optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
  >>> @nnx.jit
  ... def step(model, optimizer, x):
  ...   loss_fn = lambda m: jnp.mean(m(x) ** 2)
  ...   grad_fn = nnx.value_and_grad(
  ...       loss_fn, argnums=nnx.DiffState(0, nnx.Any(nnx.Param, GradProbes)))
  ...   loss, grads = grad_fn(model)
  ...   optimizer.update(model, nnx.filter_state(grads, nnx.Param))
  ...   return loss, flatten_stats(model, grads)
  >>> x = jax.random.normal(jax.random.key(0), (8, 16))
  >>> loss, metrics = step(model, optimizer, x)
  >>> float(metrics["fprop/weight/fraction_e4m3"]), float(metrics["dgrad/gradient/fraction_e4m3"])
  (1.0, 1.0)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from mor_jax import _dot
from mor_jax import _einsum
from mor_jax import _policy
from mor_jax import _stats
from mor_jax import _summary


__all__ = [
    "ForwardStats",
    "GradProbes",
    "MoRDotGeneral",
    "MoREinsumOp",
    "MoRLinear",
    "convert",
    "flatten_stats",
    "summarize",
]


PolicyLike = _policy.Policy | _policy.PolicyRules | None


class ForwardStats(nnx.Variable):
  """The forward statistics of a MoR layer (a dict of ``NamedMoRStats``)."""


class GradProbes(nnx.Variable):
  """Zero-valued probes whose gradient carries a layer's backward statistics."""


class _MoRGemm(nnx.Module):
  """Holds one GEMM's policy and statistics variables; runs the GEMM."""

  def _init_stats(self, policy: _policy.Policy | None) -> None:
    self.policy = policy
    if policy is None:
      return
    # One Variable per role, in nnx.Dicts: a Variable holding a dict would
    # flatten into nnx.to_pure_dict's tree under paths that
    # nnx.replace_by_pure_dict cannot find in a fresh state.
    self.fprop = nnx.Dict({
        role: ForwardStats(_stats.NamedMoRStats.zeros(getattr(policy, role)))
        for role in ("activation", "weight")})
    probes = _dot.zero_probes(policy)
    self.dgrad, self.wgrad = (
        nnx.Dict({role: GradProbes(v) for role, v in probes[g].items()})
        for g in ("dgrad", "wgrad"))

  def _dot(self, lhs, rhs, dimension_numbers, precision=None,
           preferred_element_type=None, out_sharding=None) -> jax.Array:
    if self.policy is None:
      return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision,
                                 preferred_element_type,
                                 out_sharding=out_sharding)
    y, stats = _dot.dot_general_with_stats(
        lhs, rhs, dimension_numbers,
        {g: {role: v.get_value() for role, v in getattr(self, g).items()}
         for g in ("dgrad", "wgrad")},
        policy=self.policy, precision=precision,
        preferred_element_type=preferred_element_type,
        out_sharding=out_sharding)
    for role, value in stats["fprop"].items():
      self.fprop[role].set_value(value)
    return y


class MoRDotGeneral(_MoRGemm):
  """A ``dot_general`` with MoR and statistics, for NNX's ``dot_general``.

  Hand it to ``nnx.Linear(..., dot_general=MoRDotGeneral(policy))`` or
  ``nnx.LinearGeneral``: it becomes the layer's child, with the variables
  of ``MoRLinear`` (``flatten_stats`` names them by the layer's path).
  ``convert`` puts one into every layer it converts. One per layer: its
  variables hold one layer's statistics, and ``flatten_stats`` refuses one
  shared by several layers.

  Args:
    policy: a ``mor_jax.Policy``, or None (plain ``lax.dot_general``).

  Examples:
    >>> import jax.numpy as jnp, mor_jax
    >>> from flax import nnx
    >>> from mor_jax.nnx import MoRDotGeneral, flatten_stats
    >>> layer = nnx.Linear(16, 4, rngs=nnx.Rngs(0),
    ...                    dot_general=MoRDotGeneral(mor_jax.Policy()))
    >>> layer(jnp.ones((2, 16))).shape
    (2, 4)
    >>> float(flatten_stats(layer)["fprop/weight/fraction_e4m3"])
    1.0
  """

  def __init__(self, policy: _policy.Policy | None = _policy.Policy()):
    if policy is not None and not isinstance(policy, _policy.Policy):
      raise TypeError(f"policy must be a mor_jax.Policy or None, got "
                      f"{policy!r} (resolve PolicyRules with convert).")
    self._init_stats(policy)

  def __call__(self, lhs: jax.Array, rhs: jax.Array, dimension_numbers,
               precision=None, preferred_element_type=None,
               out_sharding=None) -> jax.Array:
    """``jax.lax.dot_general(lhs, rhs, ...)`` with MoR."""
    return self._dot(lhs, rhs, dimension_numbers, precision,
                     preferred_element_type, out_sharding)


class MoREinsumOp(MoRDotGeneral):
  """A two-operand einsum with MoR, for ``nnx.Einsum(..., einsum_op=...)``.

  The equation is mapped to ``dot_general`` as ``mor_jax.dense.MoREinsum``
  maps it (input first, kernel second).

  Args:
    policy: a ``mor_jax.Policy``, or None (plain ``lax.dot_general``).
  """

  def __call__(self, einsum_str: str, lhs: jax.Array, rhs: jax.Array,
               precision=None, preferred_element_type=None,
               out_sharding=None) -> jax.Array:
    """``jnp.einsum(einsum_str, lhs, rhs)`` with MoR."""
    dims, perm, _, _ = _einsum.dimension_numbers(
        einsum_str.replace(" ", ""), lhs.shape, rhs.shape)
    y = self._dot(lhs, rhs, dims, precision, preferred_element_type)
    if perm != tuple(range(len(perm))):
      y = jax.lax.transpose(y, perm)
    return y if out_sharding is None else jax.sharding.reshard(y, out_sharding)


class MoRLinear(_MoRGemm):
  """``flax.nnx.Linear`` with MoR: the same parameters, ``policy`` added.

  Args:
    in_features: the number of input features.
    out_features: the number of output features.
    policy: a ``mor_jax.Policy`` (default: tensor-level MoR, per-channel),
      a ``mor_jax.PolicyRules`` (resolved here, at ``path`` and the size
      (in_features, out_features)) or None (a plain ``lax.dot_general``
      without statistics).
    path: the layer's path for ``PolicyRules`` (an NNX module does not know
      its own; ``convert`` finds it), e.g. "blocks/0/mlp/fc1"; rules given
      without it warn.
    use_bias: whether to add a bias to the output.
    dtype: the dtype of the computation (default: inferred).
    param_dtype: the dtype of the parameters.
    precision: as for ``jax.lax.dot_general``.
    kernel_init: initializer of the kernel, shape (in, out).
    bias_init: initializer of the bias.
    promote_dtype: as for ``nnx.Linear``.
    preferred_element_type: as for ``jax.lax.dot_general``.
    rngs: the random number generators (``rngs.params()`` is drawn for the
      kernel, then the bias, as ``nnx.Linear`` does).
    kernel_metadata: metadata of the kernel ``nnx.Param``.
    bias_metadata: metadata of the bias ``nnx.Param``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from mor_jax.nnx import MoRLinear
    >>> layer = MoRLinear(3, 4, rngs=nnx.Rngs(0))
    >>> ref = nnx.Linear(3, 4, rngs=nnx.Rngs(0))
    >>> bool((layer.kernel[...] == ref.kernel[...]).all())
    True
    >>> layer(jnp.ones((2, 3))).shape
    (2, 4)
  """

  def __init__(
      self,
      in_features: int,
      out_features: int,
      *,
      policy: PolicyLike = _policy.Policy(),
      path: str = "",
      use_bias: bool = True,
      dtype: Any = None,
      param_dtype: Any = jnp.float32,
      precision: Any = None,
      kernel_init: Callable = nnx.initializers.lecun_normal(),
      bias_init: Callable = nnx.initializers.zeros_init(),
      promote_dtype: Callable = nnx.nn.dtypes.promote_dtype,
      preferred_element_type: Any = None,
      rngs: nnx.Rngs,
      kernel_metadata: Mapping[str, Any] = MappingProxyType({}),
      bias_metadata: Mapping[str, Any] = MappingProxyType({}),
  ):
    if isinstance(policy, _policy.PolicyRules) and policy.rules and not path:
      # Rules match module paths, and an NNX module does not know its own.
      warnings.warn(
          "MoRLinear got PolicyRules but no path=, so its rules are matched "
          "against the empty path; pass path= (e.g. 'blocks/0/mlp/fc1') or "
          "build nnx.Linear layers and mor_jax.nnx.convert the model.",
          stacklevel=2)
    policy = _policy.policy_at(policy, path, (in_features, out_features))
    self.kernel = nnx.Param(
        kernel_init(rngs.params(), (in_features, out_features), param_dtype),
        **kernel_metadata)
    self.bias = (nnx.Param(bias_init(rngs.params(), (out_features,),
                                     param_dtype), **bias_metadata)
                 if use_bias else nnx.data(None))
    self.in_features, self.out_features = in_features, out_features
    self.use_bias = use_bias
    self.dtype, self.param_dtype = dtype, param_dtype
    self.precision = precision
    self.promote_dtype = promote_dtype
    self.preferred_element_type = preferred_element_type
    self._init_stats(policy)

  def __call__(self, inputs: jax.Array, out_sharding=None) -> jax.Array:
    """Applies the layer along the last dimension of ``inputs``;
    ``out_sharding`` as for ``nnx.Linear``."""
    kernel = self.kernel[...]
    bias = self.bias[...] if self.bias is not None else None
    inputs, kernel, bias = self.promote_dtype((inputs, kernel, bias),
                                              dtype=self.dtype)
    y = self._dot(inputs, kernel, (((inputs.ndim - 1,), (0,)), ((), ())),
                  self.precision, self.preferred_element_type, out_sharding)
    if bias is not None:
      y += jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))
    return y


def convert(model: nnx.Module,
            policy: PolicyLike = _policy.Policy()) -> nnx.Module:
  """Converts ``model``'s Flax NNX Linear, LinearGeneral and Einsum in place.

  Each ``nnx.Linear``, ``nnx.LinearGeneral`` and ``nnx.Einsum`` (exactly
  these classes, with Flax's default ``dot_general`` / ``einsum_op``) whose
  policy is not None gets a ``MoRDotGeneral`` (``MoREinsumOp``) in that
  attribute: the same parameters and the same call, with MoR and the
  statistics variables of ``MoRLinear``. The policy is chosen as on the
  linen route: ``PolicyRules`` match the layer's path (its attribute
  names, e.g. "blocks/0/mlp/fc1") and size; a rule that matches no layer
  warns, naming it. Converting twice changes nothing. Layers stacked by
  ``nnx.vmap`` (scan over layers) are a ValueError: convert each inside
  the vmapped constructor.

  Args:
    model: the NNX model, changed in place.
    policy: a ``mor_jax.Policy``, a ``mor_jax.PolicyRules`` or None.

  Returns:
    ``model``.

  Examples:
    >>> import jax.numpy as jnp, mor_jax
    >>> from flax import nnx
    >>> from mor_jax.nnx import convert, flatten_stats
    >>> class MLP(nnx.Module):
    ...   def __init__(self, rngs):
    ...     self.fc1 = nnx.Linear(16, 32, rngs=rngs)
    ...     self.head = nnx.Linear(32, 4, rngs=rngs)
    ...   def __call__(self, x):
    ...     return self.head(nnx.relu(self.fc1(x)))
    >>> model = convert(MLP(nnx.Rngs(0)), mor_jax.PolicyRules(
    ...     rules=(("head", None),)))
    >>> model(jnp.ones((2, 16))).shape
    (2, 4)
    >>> sorted({k.split("/")[0] for k in flatten_stats(model)})
    ['fc1']
  """
  _check_model(model, "convert")
  _policy.check(policy)
  with _policy.tracking(policy):
    for path, layer, hook, gemm in list(_layers(model)):
      mor = isinstance(getattr(layer, hook), (MoRDotGeneral, MoREinsumOp))
      if not (mor or _is_default_hook(layer, hook)):
        continue
      _check_unstacked(path, layer)
      # A layer converted before is matched again (so its rule is not
      # reported unused) and left as it is.
      chosen = _policy.policy_at(policy, path, gemm)
      if chosen is not None and not mor:
        op = MoREinsumOp if hook == "einsum_op" else MoRDotGeneral
        setattr(layer, hook, nnx.data(op(chosen)))
  return model


def _check_model(model, fn: str) -> None:
  if not isinstance(model, nnx.Module):
    got = (f"the class {model.__name__} (pass an instance)"
           if isinstance(model, type) else type(model).__name__)
    linen = "mor_jax.summarize" if fn == "summarize" else f"mor_jax.dense.{fn}"
    raise TypeError(
        f"model must be a flax.nnx Module (for linen, {linen}), got {got}.")


def _check_unstacked(path: str, layer: nnx.Module) -> None:
  """A layer built under ``nnx.vmap`` holds a kernel with a leading stack
  axis; MoR's statistics variables would be unstacked beside it and break
  ``nnx.scan`` deep inside."""
  if isinstance(layer, nnx.Linear):
    rank = 2
  elif isinstance(layer, nnx.LinearGeneral):
    rank = (len(layer.batch_axis) + len(layer.in_features) +
            len(layer.out_features))
  else:
    rank = len(layer.kernel_shape)
  shape = layer.kernel.shape
  if len(shape) != rank:
    raise ValueError(
        f"{path or 'the model'}: kernel of shape {shape} has "
        f"{len(shape) - rank} stacked "
        "axes (built under nnx.vmap): call mor_jax.nnx.convert on each "
        "layer inside the vmapped constructor instead.")


def _layers(model: nnx.Module):
  """(path, layer, hook attribute, (k, n) or None) of Flax's GEMM layers."""
  for path, node in nnx.iter_graph(model):
    found = _gemm_hook(node)
    if found is not None:
      yield (_path(path), node) + found


def _gemm_hook(node) -> tuple[str, tuple[int, int] | None] | None:
  """(hook attribute, (k, n)) of a Flax Linear, LinearGeneral or Einsum."""
  # Exact classes: a subclass may compute something else with its kernel.
  if type(node) is nnx.Linear:  # pylint: disable=unidiomatic-typecheck
    return "dot_general", (node.in_features, node.out_features)
  if type(node) is nnx.LinearGeneral:  # pylint: disable=unidiomatic-typecheck
    return "dot_general", (math.prod(node.in_features),
                           math.prod(node.out_features))
  if type(node) is nnx.Einsum:  # pylint: disable=unidiomatic-typecheck
    return "einsum_op", _einsum_gemm(node.einsum_str, node.kernel_shape)
  return None


def _path(path: tuple) -> str:
  return "/".join(str(p) for p in path)


def _is_default_hook(layer: nnx.Module, hook: str) -> bool:
  if hook == "einsum_op":
    return layer.einsum_op is jnp.einsum
  if isinstance(layer, nnx.LinearGeneral):
    return layer.dot_general is None and layer.dot_general_cls is None
  return layer.dot_general is jax.lax.dot_general


def _einsum_gemm(einsum_str: str, kernel_shape) -> tuple[int, int] | None:
  """(k, n) of an Einsum layer's kernel, from its labels."""
  inputs, out = einsum_str.split("->")
  lhs, rhs = inputs.split(",")
  if "." in rhs:
    return None  # An ellipsis in the kernel: sizes known only at the call.
  sizes = dict(zip(rhs, kernel_shape))
  return (math.prod(sizes[c] for c in rhs if c not in out),
          math.prod(sizes[c] for c in rhs if c in out and c not in lhs))


def flatten_stats(model: nnx.Module,
                  grads: nnx.State | None = None) -> dict[str, jax.Array]:
  """The statistics of every MoR layer in ``model`` as a flat dict.

  The keys and metrics of ``mor_jax.dense.flatten_stats``, with module paths
  from the NNX attribute names (e.g. "blocks/0/mlp/fprop/weight/amax"); a
  layer converted by ``convert`` (or handed a ``MoRDotGeneral``) is named by
  its own path, as a ``MoRLinear`` there would be.

  Args:
    model: the model after a call (its ``ForwardStats``).
    grads: gradients that include ``GradProbes`` (see the module docstring);
      None for the forward statistics only.

  Returns:
    A dict of 0-d float32 arrays.

  Raises:
    ValueError: one ``MoRDotGeneral`` is injected into several layers (as
      ``functools.partial(nnx.Linear, dot_general=MoRDotGeneral(p))``
      does): it holds one set of statistics for all of them; or ``grads``
      holds no ``GradProbes`` of a model that has them (differentiated
      with respect to ``nnx.Param`` alone).
  """
  return _stats.flatten_stats(*_collections(model, grads, "flatten_stats"))


def summarize(model: nnx.Module,
              grads: nnx.State | None = None) -> _summary.Summary:
  """``mor_jax.summarize`` of an NNX model: the few scalars a dashboard plots.

  The statistics are named as by ``flatten_stats`` (a converted layer by its
  own path), and counted as ``mor_jax.summarize`` counts them.

  Args:
    model: the model after a call (its ``ForwardStats``).
    grads: gradients that include ``GradProbes``; None for the forward
      statistics only.

  Returns:
    A ``mor_jax.Summary``.

  Raises:
    ValueError: as ``flatten_stats``, or where the model holds no
      statistics.

  Examples:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from mor_jax.nnx import MoRLinear, summarize
    >>> layer = MoRLinear(16, 4, rngs=nnx.Rngs(0))
    >>> _ = layer(jnp.ones((2, 16)))
    >>> s = summarize(layer)
    >>> float(s["e4m3_share/activation"]), s.locations
    (1.0, ('fprop/activation', 'fprop/weight'))
  """
  return _summary.summarize(*_collections(model, grads, "summarize"))


def _collections(model: nnx.Module, grads: nnx.State | None, caller: str):
  """The forward statistics and the probes' gradient as linen's collections
  (nested dicts by layer path), for ``mor_jax``'s functions of them."""
  _check_model(model, caller)
  _check_unshared(model)
  fwd = _by_layer(nnx.to_pure_dict(nnx.state(model, ForwardStats)))
  bwd = None
  if grads is not None:
    bwd = _by_layer(nnx.to_pure_dict(nnx.filter_state(grads, GradProbes)))
    if not bwd and fwd:
      raise ValueError(
          f"{caller}: grads hold no GradProbes, so no backward "
          "statistics: differentiate with respect to them too, "
          "argnums=nnx.DiffState(0, nnx.Any(nnx.Param, "
          "mor_jax.nnx.GradProbes)) (or pass grads=None for the forward "
          "statistics only).")
  return fwd, bwd


# The attributes of Flax's layers that hold an injected MoRDotGeneral.
_HOOKS = ("dot_general", "einsum_op")


def _check_unshared(model: nnx.Module) -> None:
  paths = {}
  for path, node in nnx.iter_graph(model):
    for hook in _HOOKS:
      op = vars(node).get(hook) if isinstance(node, nnx.Module) else None
      if isinstance(op, _MoRGemm):
        paths.setdefault(id(op), []).append("/".join(map(str, path + (hook,))))
  for where in paths.values():
    if len(where) > 1:
      raise ValueError(
          f"one MoRDotGeneral is injected into {len(where)} layers "
          f"({', '.join(where)}): it keeps the last call's forward "
          "statistics and the sum of all their backward ones, under one "
          "name. Give each layer its own (build it inside the layer's "
          "constructor call, or use mor_jax.nnx.convert).")


def _by_layer(tree):
  """Moves the statistics of a layer's injected op up to the layer's path."""
  if not isinstance(tree, dict):
    return tree
  out = {}
  for key, value in tree.items():
    if key in _HOOKS and isinstance(value, dict):
      out.update(_by_layer(value))
    else:
      out[key] = _by_layer(value)
  return out
