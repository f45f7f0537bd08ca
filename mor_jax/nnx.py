"""Flax NNX layers whose matrix multiplies run through MoR (docs/numerics.md section 6).

``MoRLinear`` is ``flax.nnx.Linear`` with a ``policy``: the same parameters,
and two kinds of statistics variables:

- ``ForwardStats`` (attribute ``fprop``): the forward statistics, updated by
  every call, ``{"activation": s, "weight": s}``;
- ``GradProbes`` (attributes ``dgrad`` and ``wgrad``): zero-valued probes
  whose gradient is the backward statistics, ``{"gradient": s, "weight": s}``
  and ``{"activation": s, "gradient": s}``.

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

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from mor_jax import _dot
from mor_jax import _policy
from mor_jax import _stats


__all__ = ["ForwardStats", "GradProbes", "MoRLinear", "flatten_stats"]


class ForwardStats(nnx.Variable):
  """The forward statistics of a MoR layer (a dict of ``NamedMoRStats``)."""


class GradProbes(nnx.Variable):
  """Zero-valued probes whose gradient carries a layer's backward statistics."""


class MoRLinear(nnx.Module):
  """``flax.nnx.Linear`` with MoR: the same parameters, ``policy`` added.

  Args:
    in_features: the number of input features.
    out_features: the number of output features.
    policy: a ``mor_jax.Policy`` (default: tensor-level MoR, per-channel).
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
      policy: _policy.Policy = _policy.Policy(),
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
    if not isinstance(policy, _policy.Policy):
      raise TypeError(f"policy must be a mor_jax.Policy, got {policy!r}.")
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
    self.policy = policy
    self.fprop = ForwardStats({
        role: _stats.NamedMoRStats.zeros(getattr(policy, role))
        for role in ("activation", "weight")})
    probes = _dot.zero_probes(policy)
    self.dgrad = GradProbes(probes["dgrad"])
    self.wgrad = GradProbes(probes["wgrad"])

  def __call__(self, inputs: jax.Array) -> jax.Array:
    """Applies the layer along the last dimension of ``inputs``."""
    kernel = self.kernel[...]
    bias = self.bias[...] if self.bias is not None else None
    inputs, kernel, bias = self.promote_dtype((inputs, kernel, bias),
                                              dtype=self.dtype)
    y, stats = _dot.dot_general_with_stats(
        inputs, kernel, (((inputs.ndim - 1,), (0,)), ((), ())),
        {"dgrad": self.dgrad.get_value(), "wgrad": self.wgrad.get_value()},
        policy=self.policy, precision=self.precision,
        preferred_element_type=self.preferred_element_type)
    self.fprop.set_value(stats["fprop"])
    if bias is not None:
      y += jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))
    return y


def flatten_stats(model: nnx.Module,
                  grads: nnx.State | None = None) -> dict[str, jax.Array]:
  """The statistics of every MoR layer in ``model`` as a flat dict.

  The keys and metrics of ``mor_jax.dense.flatten_stats``, with module paths
  from the NNX attribute names (e.g. "blocks/0/mlp/fprop/weight/amax").

  Args:
    model: the model after a call (its ``ForwardStats``).
    grads: gradients that include ``GradProbes`` (see the module docstring);
      None for the forward statistics only.

  Returns:
    A dict of 0-d float32 arrays.
  """
  fwd = nnx.to_pure_dict(nnx.state(model, ForwardStats))
  bwd = (None if grads is None else
         nnx.to_pure_dict(nnx.filter_state(grads, GradProbes)))
  return _stats.flatten_stats(fwd, bwd)
