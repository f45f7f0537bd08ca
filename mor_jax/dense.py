"""Flax linen layers whose matrix multiplies run through MoR (docs/numerics.md section 6).

Three ways to put MoR into a linen model, all with the parameters (names,
shapes, initial values) of Flax's own layers, so checkpoints move freely:

- the layers: ``MoRDense``, ``MoRDenseGeneral`` and ``MoREinsum`` take the
  arguments of ``nn.Dense``, ``nn.DenseGeneral`` and ``nn.Einsum`` plus a
  ``policy``;
- ``MoRDotGeneral``, for a model that exposes ``dot_general_cls``:
  ``nn.Dense(..., dot_general_cls=functools.partial(MoRDotGeneral,
  policy=p))``;
- ``convert(model, policy)`` (or the ``intercept(policy)`` context), for a
  model written without mor_jax: every ``nn.Dense``, ``nn.DenseGeneral`` and
  ``nn.Einsum`` inside it runs as its MoR counterpart, its code unchanged.

``policy`` is a ``mor_jax.Policy`` or a ``mor_jax.PolicyRules`` (a Policy
chosen by the layer's module path, the same path on every route, and size;
``None`` leaves a layer unquantized).

Statistics of all six quantizations of every layer, from a jit-compiled step
and without host callbacks:

- collection ``"mor_stats"``: forward statistics, written only where the
  collection is mutable; per layer ``{"fprop": {"activation": s,
  "weight": s}}``;
- collection ``"mor_grads"``: zero-valued probes made by ``init``; their
  gradient is the backward statistics, per layer ``{"dgrad": {"gradient": s,
  "weight": s}, "wgrad": {"activation": s, "gradient": s}}``. Left out of
  ``apply``, the layers use constant zeros and nothing else changes.

Each ``s`` is a ``mor_jax.NamedMoRStats`` (float32 leaves). A layer applied
more than once per step keeps the last application's forward statistics
and the sum of all applications' backward ones (the cotangent of a shared
input sums), e.g. ``fraction_e4m3`` of 2.0 for two applications in E4M3
(``mor_jax.summarize`` and ``report.layer_table`` count their mean).
Under ``nn.scan``, list both collections in ``variable_axes`` so each layer
gets its own statistics (a layer that cannot create them warns at init).
``flatten_stats`` turns them into a flat dict.

Examples:
  >>> import jax, jax.numpy as jnp, optax, mor_jax
  >>> from mor_jax.dense import MoRDense, flatten_stats
  >>> model = MoRDense(4)
  >>> x = jax.random.normal(jax.random.key(0), (8, 16))
  >>> variables = model.init(jax.random.key(1), x)
  >>> sorted(variables)
  ['mor_grads', 'mor_stats', 'params']
  >>> def loss_fn(params, probes, batch):
  ...   out, state = model.apply({"params": params, "mor_grads": probes},
  ...                            batch, mutable=["mor_stats"])
  ...   return jnp.mean(out ** 2), state["mor_stats"]
  >>> @jax.jit
  ... def step(params, probes, batch):
  ...   (loss, fwd), (g_params, g_probes) = jax.value_and_grad(
  ...       loss_fn, argnums=(0, 1), has_aux=True)(params, probes, batch)
  ...   return loss, g_params, flatten_stats(fwd, g_probes)
  >>> loss, g_params, metrics = step(variables["params"],
  ...                                variables["mor_grads"], x)
  >>> float(metrics["fprop/activation/fraction_e4m3"])
  1.0
  >>> sorted(k for k in metrics if k.startswith("wgrad/gradient/"))
  ['wgrad/gradient/amax', 'wgrad/gradient/chosen_error', 'wgrad/gradient/dynamic_range', 'wgrad/gradient/elements_bf16', 'wgrad/gradient/elements_e4m3', 'wgrad/gradient/error_e4m3', 'wgrad/gradient/fraction_bf16', 'wgrad/gradient/fraction_e4m3', 'wgrad/gradient/nonfinite']
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mor_jax import _convert
from mor_jax import _dot
from mor_jax import _einsum
from mor_jax import _policy
from mor_jax import _stats

__all__ = [
    "GRADS",
    "STATS",
    "MoRDense",
    "MoRDenseGeneral",
    "MoRDotGeneral",
    "MoREinsum",
    "NamedMoRStats",
    "convert",
    "flatten_stats",
    "intercept",
    "mor_dot_general",
]

STATS, GRADS = _stats.STATS, _stats.GRADS

Policy = _policy.Policy
PolicyRules = _policy.PolicyRules
PolicyLike = Policy | PolicyRules | None
NamedMoRStats = _stats.NamedMoRStats
flatten_stats = _stats.flatten_stats

_NO_PROBES = (
    f"MoR layers write '{STATS}' but got no '{GRADS}' probes, so no backward "
    f"statistics: pass {{'params': params, '{GRADS}': probes}} to apply, with "
    "params, probes = mor_jax.split_variables(model.init(...)), and "
    "differentiate with respect to the probes too.")
_default_kernel_init = nn.initializers.lecun_normal()
_default_bias_init = nn.initializers.zeros_init()


def mor_dot_general(module: nn.Module, policy: PolicyLike, lhs: jax.Array,
                    rhs: jax.Array, dimension_numbers, precision=None,
                    preferred_element_type=None, *,
                    path: str | None = None,
                    name: str | None = None) -> jax.Array:
  """``mor_jax.dot_general`` inside a bound linen module, statistics in its scope.

  The building block of every layer here, for writing new ones: the policy
  is resolved from the layer's path and GEMM size; the probes are the
  module's ``"mor_grads"`` variables where present or creatable, else
  constant zeros; the forward statistics go to ``"mor_stats"`` where that
  is mutable. A module with several GEMMs names each (``name``): its
  variables then nest under the name.

  Args:
    module: the bound module that owns the statistics (call this from its
      compact method).
    policy: a ``Policy``, a ``PolicyRules`` or None (plain
      ``lax.dot_general``, no statistics).
    lhs: the activations.
    rhs: the weights.
    dimension_numbers: as for ``jax.lax.dot_general``.
    precision: as for ``jax.lax.dot_general``.
    preferred_element_type: as for ``jax.lax.dot_general``.
    path: the path ``PolicyRules`` match (default: ``module.path``, then
      ``name``).
    name: this GEMM's name in the module, needed where the module calls
      ``mor_dot_general`` more than once: its statistics are then
      ``"<module path>/<name>/<gemm>/<role>"``.

  Returns:
    The product, as ``jax.lax.dot_general`` shapes it.

  Raises:
    ValueError: a second GEMM in one call of the module with the same
      ``name`` (or none); a module called again (a layer applied twice)
      reuses its variables.

  Examples:
    >>> import jax, jax.numpy as jnp, flax.linen as nn, mor_jax
    >>> from mor_jax.dense import mor_dot_general, flatten_stats
    >>> class TwoGemms(nn.Module):
    ...   @nn.compact
    ...   def __call__(self, x):
    ...     w = self.param("w", nn.initializers.lecun_normal(), (16, 16))
    ...     dims = (((1,), (0,)), ((), ()))
    ...     h = mor_dot_general(self, mor_jax.Policy(), x, w, dims, name="in")
    ...     return mor_dot_general(self, mor_jax.Policy(), h, w.T, dims,
    ...                            name="out")
    >>> x = jnp.ones((4, 16))
    >>> v = jax.jit(TwoGemms().init)(jax.random.key(0), x)
    >>> sorted(v["mor_grads"]), sorted(v["mor_grads"]["in"])
    (['in', 'out'], ['dgrad', 'wgrad'])
    >>> _, s = jax.jit(lambda v: TwoGemms().apply(v, x, mutable="mor_stats"))(v)
    >>> sorted({k.rsplit("/", 3)[0] for k in flatten_stats(s["mor_stats"])})
    ['in', 'out']
  """
  if path is None:
    path = "/".join(module.path + (() if name is None else (name,)))
  gemm = _policy.gemm_size(jnp.shape(rhs), dimension_numbers)
  policy = _policy.policy_at(policy, path, gemm)
  _policy.record(path, type(module).__name__, jnp.shape(rhs), gemm, policy)
  if policy is None:
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type)
  if (module.is_initializing() and module.is_mutable_collection("params") and
      not module.is_mutable_collection(GRADS)):
    # A lifted transform (nn.scan, nn.vmap) passes only the collections
    # named in variable_axes: the statistics would vanish without a word.
    warnings.warn(
        f"mor_jax: layer {path!r} cannot create its {STATS!r} and {GRADS!r} "
        "variables here (a transform such as nn.scan or nn.vmap does not "
        "pass them), so its statistics are dropped. List both in the "
        f"transform, e.g. variable_axes={{'params': 0, {STATS!r}: 0, "
        f"{GRADS!r}: 0}}.", UserWarning, stacklevel=2)
  probes = _dot.zero_probes(policy)
  try:
    if name is None:
      missing = False
      for gemm, zeros in probes.items():
        if (module.has_variable(GRADS, gemm) or
            module.is_mutable_collection(GRADS)):
          probes[gemm] = module.variable(GRADS, gemm,
                                         lambda z=zeros: z).value
        else:
          missing = True
    else:
      missing = not (module.has_variable(GRADS, name) or
                     module.is_mutable_collection(GRADS))
      if not missing:
        probes = dict(module.variable(GRADS, name, lambda: probes).value)
  except flax.errors.NameInUseError:
    # Flax reserves a variable's name once per call of the module: a second
    # GEMM in one call, not a second call (a layer applied twice).
    raise ValueError(
        f"mor_dot_general: a second GEMM in one call of module {path!r} "
        f"{'with no name' if name is None else f'named {name!r}'}: its "
        "statistics would take the first's variables. Give each GEMM of a "
        "module its own name= (or its own submodule).") from None
  if missing and module.is_mutable_collection(STATS):
    # Collecting statistics without the probes: a train step that forgot
    # them gets the forward statistics only. The message names no layer, so
    # Python shows it once, not once per layer.
    warnings.warn(_NO_PROBES, stacklevel=2)
  out, stats = _dot.dot_general_with_stats(
      lhs, rhs, dimension_numbers, probes, policy=policy, precision=precision,
      preferred_element_type=preferred_element_type)
  if module.is_mutable_collection(STATS):
    if name is None:
      module.put_variable(STATS, "fprop", stats["fprop"])
    else:
      module.put_variable(STATS, name, {"fprop": stats["fprop"]})
  return out


class _PolicyChecked(nn.Module):
  """Checks the ``policy`` field where the layer is built."""

  def __post_init__(self):
    _policy.check(self.policy)
    super().__post_init__()


class MoRDotGeneral(_PolicyChecked):
  """A ``dot_general`` with MoR, as a linen Module for ``dot_general_cls``.

  Flax's ``nn.Dense`` and ``nn.DenseGeneral`` build ``dot_general_cls()``
  inside their call, so this module is their child: its statistics live at
  ``<layer path>/MoRDotGeneral_0``; ``PolicyRules`` match ``<layer path>``,
  as on every other route.

  Attributes:
    policy: a ``mor_jax.Policy``, a ``mor_jax.PolicyRules`` or None.

  Examples:
    >>> import functools, jax, jax.numpy as jnp, flax.linen as nn, mor_jax
    >>> from mor_jax.dense import MoRDotGeneral
    >>> layer = nn.Dense(3, dot_general_cls=functools.partial(
    ...     MoRDotGeneral, policy=mor_jax.Policy()))
    >>> v = layer.init(jax.random.key(0), jnp.ones((2, 5)))
    >>> jax.tree.map(jnp.shape, v["params"])
    {'bias': (3,), 'kernel': (5, 3)}
    >>> sorted(v["mor_stats"]["MoRDotGeneral_0"]["fprop"])
    ['activation', 'weight']
  """

  policy: PolicyLike = Policy()

  @nn.compact
  def __call__(self, lhs: jax.Array, rhs: jax.Array, dimension_numbers,
               precision=None, preferred_element_type=None) -> jax.Array:
    """Computes ``lax.dot_general(lhs, rhs, ...)`` with MoR."""
    return mor_dot_general(self, self.policy, lhs, rhs, dimension_numbers,
                           precision, preferred_element_type,
                           path="/".join(self.path[:-1]))


class MoRDense(_PolicyChecked):
  """``flax.linen.Dense`` with MoR: the same parameters, ``policy`` added.

  Attributes:
    features: the number of output features.
    policy: a ``mor_jax.Policy`` (default: tensor-level MoR, per-channel, for
      all six quantizations), a ``mor_jax.PolicyRules`` or None.
    use_bias: whether to add a bias to the output.
    dtype: the dtype of the computation (default: inferred from the input
      and the parameters).
    param_dtype: the dtype of the parameters.
    precision: as for ``jax.lax.dot_general``.
    kernel_init: initializer of the kernel, shape (in features, features).
    bias_init: initializer of the bias.
    promote_dtype: as for ``nn.Dense``.

  Examples:
    >>> import jax, jax.numpy as jnp, flax.linen as nn
    >>> from mor_jax.dense import MoRDense
    >>> x = jnp.ones((2, 5))
    >>> v = MoRDense(3).init(jax.random.key(0), x)
    >>> ref = nn.Dense(3).init(jax.random.key(0), x)
    >>> bool((v["params"]["kernel"] == ref["params"]["kernel"]).all())
    True
  """

  features: int
  _: dataclasses.KW_ONLY
  policy: PolicyLike = Policy()
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  precision: Any = None
  kernel_init: Callable = _default_kernel_init
  bias_init: Callable = _default_bias_init
  promote_dtype: Callable = nn.dtypes.promote_dtype

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    """Applies the layer along the last dimension of ``inputs``."""
    return _dense(self, self.policy, inputs)


def _dense(module, policy: PolicyLike, inputs: jax.Array) -> jax.Array:
  """The body of ``nn.Dense`` with MoR, for any module with Dense's fields."""
  kernel = module.param("kernel", module.kernel_init,
                        (jnp.shape(inputs)[-1], module.features),
                        module.param_dtype)
  bias = (module.param("bias", module.bias_init, (module.features,),
                       module.param_dtype) if module.use_bias else None)
  inputs, kernel, bias = module.promote_dtype(inputs, kernel, bias,
                                              dtype=module.dtype)
  y = mor_dot_general(module, policy, inputs, kernel,
                      (((inputs.ndim - 1,), (0,)), ((), ())), module.precision)
  if bias is not None:
    y += jnp.reshape(bias, (1,) * (y.ndim - 1) + (-1,))
  return y


class MoRDenseGeneral(_PolicyChecked):
  """``flax.linen.DenseGeneral`` with MoR: the same parameters, ``policy`` added.

  Attributes:
    features: int or tuple of output features.
    axis: int or tuple of input axes to contract.
    batch_dims: leading input axes that the kernel also has (one kernel per
      batch entry): batch dimensions of the GEMM.
    policy: a ``mor_jax.Policy``, a ``mor_jax.PolicyRules`` or None.
    use_bias: whether to add a bias to the output.
    dtype: the dtype of the computation.
    param_dtype: the dtype of the parameters.
    kernel_init: initializer of the kernel (called on its 2-D shape, as
      Flax does).
    bias_init: initializer of the bias.
    precision: as for ``jax.lax.dot_general``.
    promote_dtype: as for ``nn.DenseGeneral``.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from mor_jax.dense import MoRDenseGeneral
    >>> layer = MoRDenseGeneral((4, 5), axis=(1, -1))
    >>> v = layer.init(jax.random.key(0), jnp.ones((2, 3, 6, 7)))
    >>> jax.tree.map(jnp.shape, v["params"])
    {'bias': (4, 5), 'kernel': (3, 7, 4, 5)}
  """

  features: int | Sequence[int]
  _: dataclasses.KW_ONLY
  axis: int | Sequence[int] = -1
  batch_dims: Sequence[int] = ()
  policy: PolicyLike = Policy()
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Callable = _default_kernel_init
  bias_init: Callable = _default_bias_init
  precision: Any = None
  promote_dtype: Callable = nn.dtypes.promote_dtype

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    """Applies the layer along ``axis`` of ``inputs``."""
    return _dense_general(self, self.policy, inputs)


def _as_tuple(x) -> tuple[int, ...]:
  return tuple(x) if isinstance(x, Sequence) else (x,)


def _normalize(axes: tuple[int, ...], ndim: int) -> tuple[int, ...]:
  return tuple(sorted(a if a >= 0 else ndim + a for a in axes))


def _dense_general(module, policy: PolicyLike, inputs: jax.Array) -> jax.Array:
  """The body of ``nn.DenseGeneral`` with MoR (Flax's parameters and init)."""
  features = _as_tuple(module.features)
  ndim = inputs.ndim
  axis = _normalize(_as_tuple(module.axis), ndim)
  batch_dims = _normalize(_as_tuple(module.batch_dims), ndim)
  if batch_dims and batch_dims != tuple(range(len(batch_dims))):
    raise ValueError(f"batch_dims {module.batch_dims} must be consecutive "
                     "leading dimensions starting from 0.")
  nb, na, nf = len(batch_dims), len(axis), len(features)
  batch_shape = tuple(inputs.shape[b] for b in batch_dims)

  def reshaped_init(init, flat_shape):
    # Flax initializes the 2-D (fan-in, fan-out) matrix, then reshapes it.
    def wrapped(rng, shape, dtype=jnp.float32):
      value = init(rng, tuple(int(d) for d in flat_shape(shape)), dtype)
      if isinstance(value, nn.meta.AxisMetadata):
        return nn.meta.replace_boxed(value,
                                     jnp.reshape(value.unbox(), shape))
      return jnp.reshape(value, shape)
    return wrapped

  kernel = module.param(
      "kernel",
      reshaped_init(module.kernel_init, lambda s: (
          np.prod(s[:nb]) * np.prod(s[nb:nb + na]), np.prod(s[-nf:]))),
      batch_shape + tuple(inputs.shape[a] for a in axis) + features,
      module.param_dtype)
  bias = None
  if module.use_bias:
    bias = module.param(
        "bias",
        reshaped_init(module.bias_init,
                      lambda s: (np.prod(s[:nb]) * np.prod(s[-nf:]),)),
        batch_shape + features, module.param_dtype)
  inputs, kernel, bias = module.promote_dtype(inputs, kernel, bias,
                                              dtype=module.dtype)
  out = mor_dot_general(
      module, policy, inputs, kernel,
      ((axis, tuple(range(nb, nb + na))), (batch_dims, tuple(range(nb)))),
      module.precision)
  if bias is not None:
    # Broadcast over the input's non-batch, non-contracted dimensions.
    kept = tuple(inputs.shape[d] if d in batch_dims else 1
                 for d in range(ndim) if d not in axis)
    out += jnp.reshape(bias, kept + features)
  return out


class MoREinsum(_PolicyChecked):
  """``flax.linen.Einsum`` with MoR: the same parameters, ``policy`` added.

  The einsum string is mapped to ``dot_general`` dimension numbers: labels
  in the input, the kernel and the output are batch dimensions, labels in
  both operands but not the output are contracted. Each label may appear
  once per operand, and a label of one operand only must be in the output.

  Attributes:
    shape: the shape of the kernel.
    einsum_str: e.g. "btd,dhk->bthk" (input first, kernel second); or pass
      it to the call.
    policy: a ``mor_jax.Policy``, a ``mor_jax.PolicyRules`` or None.
    use_bias: whether to add a bias (over the kernel's output labels).
    dtype: the dtype of the computation.
    param_dtype: the dtype of the parameters.
    precision: as for ``jax.lax.dot_general``.
    kernel_init: initializer of the kernel.
    bias_init: initializer of the bias.
    promote_dtype: as for ``nn.Einsum``.
    preferred_element_type: as for ``jax.lax.dot_general``.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from mor_jax.dense import MoREinsum
    >>> layer = MoREinsum((5, 6, 7), "abc,cde->abde")
    >>> v = layer.init(jax.random.key(0), jnp.ones((3, 4, 5)))
    >>> jax.tree.map(jnp.shape, v["params"])
    {'bias': (6, 7), 'kernel': (5, 6, 7)}
  """

  shape: Sequence[int]
  einsum_str: str | None = None
  _: dataclasses.KW_ONLY
  policy: PolicyLike = Policy()
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  precision: Any = None
  kernel_init: Callable = _default_kernel_init
  bias_init: Callable = _default_bias_init
  promote_dtype: Callable = nn.dtypes.promote_dtype
  preferred_element_type: Any = None

  @nn.compact
  def __call__(self, inputs: jax.Array,
               einsum_str: str | None = None) -> jax.Array:
    """Applies the einsum of ``inputs`` with the kernel (plus the bias)."""
    return _einsum_layer(self, self.policy, inputs, einsum_str)


def _einsum_layer(module, policy: PolicyLike, inputs: jax.Array,
                  einsum_str: str | None = None) -> jax.Array:
  """The body of ``nn.Einsum`` with MoR."""
  einsum_str = nn.merge_param("einsum_str", module.einsum_str, einsum_str)
  einsum_str = einsum_str.replace(" ", "")
  kernel = module.param("kernel", module.kernel_init, module.shape,
                        module.param_dtype)
  dims, perm, rhs_labels, out_labels = _einsum.dimension_numbers(
      einsum_str, inputs.shape, tuple(module.shape))
  bias = None
  if module.use_bias:
    bias_shape = tuple(module.shape[rhs_labels.index(c)]
                       for c in out_labels if c in rhs_labels)
    bias = module.param("bias", module.bias_init, bias_shape,
                        module.param_dtype)
  inputs, kernel, bias = module.promote_dtype(inputs, kernel, bias,
                                              dtype=module.dtype)
  y = mor_dot_general(module, policy, inputs, kernel, dims, module.precision,
                      module.preferred_element_type)
  if perm != tuple(range(len(perm))):
    y = jax.lax.transpose(y, perm)
  if bias is not None:
    y += jnp.reshape(bias, tuple(module.shape[rhs_labels.index(c)]
                                 if c in rhs_labels else 1
                                 for c in out_labels))
  return y


# Flax's layers whose __call__ the interceptor replaces by the MoR body.
_BODIES = {nn.Dense: _dense, nn.DenseGeneral: _dense_general,
           nn.Einsum: _einsum_layer}


@contextlib.contextmanager
def intercept(policy: PolicyLike = Policy()) -> Iterator[None]:
  """Runs every Flax Dense, DenseGeneral and Einsum called inside with MoR.

  Inside the context, the ``__call__`` of each ``nn.Dense``,
  ``nn.DenseGeneral`` and ``nn.Einsum`` (exactly these classes, without a
  custom ``dot_general`` or ``dot_general_cls``) runs the body of
  ``MoRDense``, ``MoRDenseGeneral`` or ``MoREinsum`` in the layer's own
  scope: the same parameters, statistics at the layer's path. It acts when
  the model is traced, so enter it inside the jitted function (or use
  ``convert``). A ``PolicyRules`` rule that matches no layer inside warns
  when the context exits, naming it.

  Args:
    policy: a ``mor_jax.Policy``, or a ``mor_jax.PolicyRules`` matched
      against each layer's path.

  Yields:
    Nothing.

  Examples:
    >>> import jax, jax.numpy as jnp, flax.linen as nn
    >>> from mor_jax.dense import intercept
    >>> model = nn.Dense(3)
    >>> with intercept():
    ...   v = model.init(jax.random.key(0), jnp.ones((2, 5)))
    >>> sorted(v)
    ['mor_grads', 'mor_stats', 'params']
  """
  _policy.check(policy)  # Fails here on a bad type, not at trace time.

  def interceptor(next_fun, args, kwargs, context):
    module = context.module
    cls = type(module)
    # A model that ``convert`` made from a bare Dense is a subclass of it.
    body = _BODIES.get(cls.__dict__.get("_mor_converted_from", cls))
    if (body is None or context.method_name != "__call__" or
        getattr(module, "dot_general", None) is not None or
        getattr(module, "dot_general_cls", None) is not None):
      return next_fun(*args, **kwargs)
    return body(module, policy, *args, **kwargs)

  with _policy.tracking(policy), nn.intercept_methods(interceptor):
    yield


def convert(model: nn.Module, policy: PolicyLike = Policy(), *,
            methods: str | Sequence[str] | None = None) -> nn.Module:
  """A copy of ``model`` whose Flax Dense, DenseGeneral and Einsum run with MoR.

  The copy is an instance of a subclass of ``type(model)`` whose methods
  run inside ``intercept(policy)``: same fields, same parameters, so
  ``init``, ``apply`` (with any ``method=``, a name or a function: the
  class's own runs converted) and existing checkpoints work unchanged, and
  the statistics appear at each layer's path. A
  ``PolicyRules`` rule that matches no layer in a call warns, naming it.

  Args:
    model: an unbound linen Module (the top of the model).
    policy: a ``mor_jax.Policy`` or a ``mor_jax.PolicyRules``.
    methods: the methods that run with MoR, by name (one name may be given
      as a string); None (the default): ``__call__`` and every public method
      the model's classes define (Flax's own, such as ``init`` and
      ``apply``, excepted), so ``apply(..., method="encode")`` is quantized
      too.

  Returns:
    The converted model.

  Examples:
    >>> import jax, jax.numpy as jnp, flax.linen as nn
    >>> from mor_jax.dense import convert, flatten_stats
    >>> class MLP(nn.Module):
    ...   @nn.compact
    ...   def __call__(self, x):
    ...     return nn.Dense(2, name="out")(nn.relu(nn.Dense(8, name="hidden")(x)))
    >>> model = convert(MLP())
    >>> x = jnp.ones((4, 3))
    >>> v = model.init(jax.random.key(0), x)
    >>> jax.tree.map(jnp.shape, v["params"])
    {'hidden': {'bias': (8,), 'kernel': (3, 8)}, 'out': {'bias': (2,), 'kernel': (8, 2)}}
    >>> _, state = model.apply(v, x, mutable=["mor_stats"])
    >>> sorted(flatten_stats(state["mor_stats"]))[:2]
    ['hidden/fprop/activation/amax', 'hidden/fprop/activation/chosen_error']
  """
  if isinstance(model, type) and issubclass(model, nn.Module):
    raise TypeError(f"model must be a flax.linen Module instance, got the "
                    f"class {model.__name__}: convert({model.__name__}(...), "
                    f"policy).")
  if not isinstance(model, nn.Module):
    raise TypeError(f"model must be a flax.linen Module, got {model!r}.")
  _policy.check(policy)
  cls = type(model)
  if isinstance(methods, str):
    methods = (methods,)
  namespace = {}
  names = _convert.public_methods(cls) if methods is None else tuple(methods)
  for name in names:
    method = getattr(cls, name, None)
    if not callable(method):
      raise ValueError(f"methods: {cls.__name__} has no method {name!r}.")
    namespace[name] = _intercepted(method, policy)
  namespace.update(_entry_points(cls, names, policy, every=methods is None))
  namespace["_mor_converted_from"] = cls

  @nn.nowrap
  def reduce(self):
    # The class is made here, so pickle cannot find it by name: a converted
    # model pickles as its original and the conversion.
    return (functools.partial(convert, methods=methods),
            (cls(**_fields(self)), policy))

  namespace["__reduce__"] = reduce
  converted = type(cls.__name__, (cls,), namespace)
  return converted(**_fields(model))


def _fields(model: nn.Module) -> dict[str, Any]:
  """A module's own fields, as its constructor takes them (not its place
  in a parent)."""
  return {f.name: getattr(model, f.name) for f in dataclasses.fields(model)
          if f.init and f.name not in ("parent", "name")}


def _entry_points(cls: type[nn.Module], names: Sequence[str],
                  policy: PolicyLike, every: bool) -> dict[str, Callable]:
  """``init``, ``init_with_output`` and ``apply`` taking ``method=`` as a
  function too.

  Flax calls such a function as it is, so ``method=Model.encode`` would run
  the unconverted method, unquantized. A function of ``cls`` that is
  converted runs converted (by its name); any other function runs with MoR
  where every public method does (``methods=None``).
  """

  def resolve(converted, method):
    if method is None or isinstance(method, str):
      return method
    fn = getattr(method, "__func__", method)  # a bound method
    name = getattr(fn, "__name__", None)
    if name in names and any(getattr(c, name, None) is fn
                             for c in (cls, converted)):
      return name
    return _intercepted(fn, policy) if every and callable(fn) else method

  def entry(flax_method):
    @nn.nowrap
    @functools.wraps(flax_method)
    def call(self, *args, method=None, **kwargs):
      return flax_method(self, *args, method=resolve(type(self), method),
                         **kwargs)
    return call

  return {n: entry(getattr(cls, n))
          for n in ("init", "init_with_output", "apply")}


def _intercepted(method: Callable, policy: PolicyLike) -> Callable:
  def run(self, *args, **kwargs):
    try:
      with intercept(policy):
        return method(self, *args, **kwargs)
    except AssertionError as e:
      _convert.explain_scan_assertion(e)
      raise
  run.__name__ = run.__qualname__ = method.__name__
  run.__doc__ = method.__doc__
  return run
