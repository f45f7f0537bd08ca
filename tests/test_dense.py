"""mor_jax.dense and mor_jax.nnx: Flax layers with the MoR dot_general.

- With ``NoQuant`` everywhere the layers are Flax's own, bit for bit
  (parameters, outputs, gradients), including through ``dot_general_cls`` and
  ``convert``.
- With MoR, a layer's output, input gradient and kernel gradient, and all six
  decisions, equal the NumPy reference of docs/numerics.md section 6
  (``tests/dot_reference.py``).
- The layers under jit, value_and_grad, vmap, nn.scan, nn.remat, optax, and
  NNX under nnx.jit; per-layer policies and PolicyRules; bad arguments.
"""

from __future__ import annotations

import functools
import re

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import mor_jax
from mor_jax import dense
from mor_jax import nnx as mor_nnx
from mor_jax.dense import (MoRDense, MoRDenseGeneral, MoRDotGeneral, MoREinsum,
                           flatten_stats, mor_dot_general)
from tests import cases
from tests import dot_reference

NOQUANT = mor_jax.Policy.uniform(mor_jax.NoQuant())
GEMM_ROLES = dot_reference.GEMM_ROLES


def _outliers(shape, seed, axis=-1, scale=1e4):
  """Gaussian with every 16th slice along ``axis`` scaled by ``scale``."""
  x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
  idx = [slice(None)] * len(shape)
  idx[axis] = slice(0, None, 16)
  x[tuple(idx)] *= np.float32(scale)
  return x


def _loss(y):
  return jnp.sum(jnp.sin(y.astype(jnp.float32)))


def _output_and_grads(model, variables, x, seed=1):
  """jit: the output and its VJP (params, input) for a fixed random cotangent.

  A VJP rather than the gradient of a scalar loss: XLA may order the loss's
  own reduction differently around different layers, which would say
  nothing about the layer.
  """

  def f(params, x):
    y, vjp = jax.vjp(
        lambda p, x: model.apply({**variables, "params": p}, x),
        params, x)
    g = jax.random.normal(jax.random.key(seed), y.shape, y.dtype)
    return y, vjp(g)

  return jax.jit(f)(variables["params"], x)


# ---------------------------------------------------------------------------
# NoQuant: Flax's layers bit for bit.

NOQUANT_PAIRS = {
    # name: (MoR layer, Flax layer, input shape, input dtype)
    "dense": (MoRDense(8, policy=NOQUANT), nn.Dense(8), (2, 3, 5), jnp.float32),
    "dense_bf16_no_bias": (
        MoRDense(8, policy=NOQUANT, dtype=jnp.bfloat16, use_bias=False),
        nn.Dense(8, dtype=jnp.bfloat16, use_bias=False), (4, 6), jnp.float32),
    "dense_general_batch": (
        MoRDenseGeneral((4, 3), axis=(1, -1), batch_dims=(0,), policy=NOQUANT),
        nn.DenseGeneral((4, 3), axis=(1, -1), batch_dims=(0,)), (2, 3, 6, 5),
        jnp.float32),
    "dense_general_axis": (
        MoRDenseGeneral(7, axis=-2, policy=NOQUANT, dtype=jnp.bfloat16),
        nn.DenseGeneral(7, axis=-2, dtype=jnp.bfloat16), (3, 5, 4),
        jnp.bfloat16),
    "einsum": (MoREinsum((5, 6, 7), "abc,cde->abde", policy=NOQUANT),
               nn.Einsum((5, 6, 7), "abc,cde->abde"), (3, 4, 5), jnp.float32),
    "einsum_transposed_out": (
        MoREinsum((6, 2, 3), "btd,dhk->bhtk", policy=NOQUANT),
        nn.Einsum((6, 2, 3), "btd,dhk->bhtk"), (2, 4, 6), jnp.float32),
    "einsum_batch_label": (
        MoREinsum((2, 5, 3), "hbd,hdk->bkh", policy=NOQUANT),
        nn.Einsum((2, 5, 3), "hbd,hdk->bkh"), (2, 4, 5), jnp.float32),
    "dot_general_cls": (
        nn.DenseGeneral(4, axis=(-2, -1), dot_general_cls=functools.partial(
            MoRDotGeneral, policy=NOQUANT)),
        nn.DenseGeneral(4, axis=(-2, -1)), (3, 2, 5), jnp.float32),
    "convert": (dense.convert(nn.Dense(8), NOQUANT), nn.Dense(8), (3, 5),
                jnp.float32),
}


# jnp.einsum hands XLA operands in another layout for an output whose labels
# are not in operand order, and XLA's CPU GEMM then sums in another order on
# some machines: equal to float32 rounding there, bit for bit elsewhere.
LAYOUT_DEPENDENT = {"einsum_transposed_out"}


@pytest.mark.parametrize("name", list(NOQUANT_PAIRS))
def test_noquant_layers_equal_flax_bit_for_bit(name):
  mine, theirs, shape, dtype = NOQUANT_PAIRS[name]
  x = jnp.asarray(np.random.default_rng(0).standard_normal(shape), dtype)
  v_mine = mine.init(jax.random.key(0), x)
  v_theirs = theirs.init(jax.random.key(0), x)
  # Same parameter names, shapes and initial values.
  chex.assert_trees_all_equal(v_mine["params"], v_theirs["params"])
  assert set(v_mine) == {"params", "mor_stats", "mor_grads"}
  got = _output_and_grads(mine, v_mine, x)
  want = _output_and_grads(theirs, v_theirs, x)
  equal = (functools.partial(chex.assert_trees_all_close, rtol=1e-6, atol=1e-7)
           if name in LAYOUT_DEPENDENT else chex.assert_trees_all_equal)
  equal(got, want)
  # Forward too, without jit and without the statistics collections.
  y = mine.apply({"params": v_mine["params"]}, x)
  equal(y, theirs.apply(v_theirs, x))


def test_noquant_nnx_linear_equals_flax_bit_for_bit():
  mine = mor_nnx.MoRLinear(5, 3, policy=NOQUANT, rngs=nnx.Rngs(0))
  theirs = nnx.Linear(5, 3, rngs=nnx.Rngs(0))
  chex.assert_trees_all_equal(nnx.to_pure_dict(nnx.state(mine, nnx.Param)),
                              nnx.to_pure_dict(nnx.state(theirs, nnx.Param)))
  x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 4, 5)),
                  jnp.float32)

  g = jax.random.normal(jax.random.key(2), (2, 4, 3))

  @nnx.jit
  def step(model, x):
    return nnx.value_and_grad(lambda m, x: jnp.vdot(m(x), g), argnums=(0, 1))(
        model, x)

  (l1, (g1, gx1)), (l2, (g2, gx2)) = step(mine, x), step(theirs, x)
  chex.assert_trees_all_equal(gx1, gx2)
  np.testing.assert_allclose(l1, l2, rtol=1e-6)
  chex.assert_trees_all_equal(nnx.jit(lambda m: m(x))(mine),
                              nnx.jit(lambda m: m(x))(theirs))
  chex.assert_trees_all_equal(nnx.to_pure_dict(nnx.filter_state(g1, nnx.Param)),
                              nnx.to_pure_dict(g2))


def test_nnx_state_restores_from_a_pure_dict():
  """nnx.to_pure_dict of a trained model's whole state, statistics and
  probes included, restores into a fresh one (Orbax's NNX recipe), for a
  MoRLinear and for an nnx.Linear handed a MoRDotGeneral."""

  class Model(nnx.Module):
    def __init__(self, seed):
      rngs = nnx.Rngs(seed)
      self.fc1 = mor_nnx.MoRLinear(8, 16, rngs=rngs)
      self.fc2 = nnx.Linear(16, 4, dot_general=mor_nnx.MoRDotGeneral(),
                            rngs=rngs)

    def __call__(self, x):
      return self.fc2(jax.nn.relu(self.fc1(x)))

  trained = Model(0)
  x = jax.random.normal(jax.random.key(1), (4, 8))
  trained(x)
  saved = nnx.to_pure_dict(nnx.state(trained))
  fresh = Model(1)
  state = nnx.state(fresh)
  nnx.replace_by_pure_dict(state, saved)
  nnx.update(fresh, state)
  chex.assert_trees_all_equal(nnx.to_pure_dict(nnx.state(fresh)), saved)
  chex.assert_trees_all_equal(mor_nnx.flatten_stats(fresh),
                              mor_nnx.flatten_stats(trained))
  chex.assert_trees_all_equal(fresh(x), trained(x))


# ---------------------------------------------------------------------------
# MoR: the layers against the NumPy reference of the three GEMMs.

POLICIES = {
    "default": mor_jax.Policy(),
    "static_e4m3_tiles": mor_jax.Policy.uniform(
        mor_jax.Static(mor_jax.E4M3, block_shape=(128, 128))),
    "sub_tensor": mor_jax.Policy.uniform(
        mor_jax.SubTensorMoR(block_shape=(16, 16))),
}
LAYERS = {
    # name: (layer given a policy, input shape, contracting input axis,
    #        dimension numbers, permutation from dot_general's output)
    "dense": (lambda p: MoRDense(24, policy=p), (4, 8, 64), 2,
              (((2,), (0,)), ((), ())), None),
    "dense_general": (
        lambda p: MoRDenseGeneral((3, 4), axis=(1, 3), batch_dims=(0,),
                                  policy=p),
        (2, 16, 5, 8), 1, (((1, 3), (1, 2)), ((0,), (0,))), None),
    "einsum": (lambda p: MoREinsum((48, 2, 8), "btd,dhk->bhtk", policy=p),
               (3, 16, 48), 2, (((2,), (0,)), ((), ())), (0, 2, 1, 3)),
}
CASES = [("dense", "default"), ("dense", "static_e4m3_tiles"),
         ("dense", "sub_tensor"), ("dense_general", "default"),
         ("einsum", "default"), ("einsum", "static_e4m3_tiles")]


def _layer_grads(model, variables, x, g):
  """y, dL/dx, dL/dkernel and the six statistics for dL/dy = g (jitted)."""

  def loss(params, x, probes):
    y, state = model.apply({"params": params, "mor_grads": probes}, x,
                           mutable=["mor_stats"])
    return jnp.sum(y * g), (y, state["mor_stats"])

  (dparams, dx, dprobes), (y, fwd) = jax.jit(
      jax.grad(loss, (0, 1, 2), has_aux=True))(
          variables["params"], x, variables["mor_grads"])
  stats = {**fwd, **dprobes}
  return y, dx, dparams["kernel"], {
      (gemm, role): stats[gemm][role] for gemm, role in GEMM_ROLES}


@pytest.mark.parametrize("layer,policy", CASES)
def test_mor_layers_match_reference(layer, policy):
  build, shape, axis, dims, perm = LAYERS[layer]
  policy = POLICIES[policy]
  model = build(policy)
  x = _outliers(shape, 0, axis=axis)
  variables = model.init(jax.random.key(0), x)
  kernel = np.asarray(variables["params"]["kernel"]).copy()
  kernel[..., :2] *= np.float32(1e-3)  # a few small output channels
  variables["params"]["kernel"] = jnp.asarray(kernel)
  y_shape = jax.eval_shape(model.apply, variables, x).shape
  g = _outliers(y_shape, 1, axis=0, scale=1e3)
  y, dx, dw, stats = _layer_grads(model, variables, x, g)
  g_dot = g if perm is None else np.transpose(g, np.argsort(perm))
  (y_ref, dx_ref, dw_ref), bounds, decisions = dot_reference.dot_general(
      x, kernel, g_dot, dims, policy)
  if perm is not None:
    y_ref, bounds = np.transpose(y_ref, perm), (np.transpose(bounds[0], perm),
                                                *bounds[1:])
  # The bias is zero-initialized: y is the GEMM.
  dot_reference.assert_close(y, y_ref, bounds[0], "Y")
  dot_reference.assert_close(dx, dx_ref, bounds[1], "dX")
  dot_reference.assert_close(dw, dw_ref, bounds[2], "dW")
  for key, (choice, errs) in decisions.items():
    dot_reference.assert_decision(stats[key], choice, errs,
                                  getattr(policy, key[1]), key)
  if policy == POLICIES["default"]:
    # Outlier input features: per-token scales fail, per-feature ones hold.
    assert int(decisions["fprop", "activation"][0]) == 1
    assert int(decisions["wgrad", "activation"][0]) == 0


# ---------------------------------------------------------------------------
# Transformations.


class _Unrolled(nn.Module):
  n: int = 3
  remat: bool = False

  @nn.compact
  def __call__(self, x):
    cls = nn.remat(MoRDense) if self.remat else MoRDense
    for i in range(self.n):
      x = cls(16, name=f"layer_{i}")(x)
    return x


def _unstack(tree, n):
  return {f"layer_{i}": jax.tree.map(lambda a, i=i: a[i], tree)
          for i in range(n)}


def _train_step(model, tx):
  """A jitted optax step returning the loss and the flat statistics."""

  def loss_fn(params, probes, x):
    y, state = model.apply({"params": params, "mor_grads": probes}, x,
                           mutable=["mor_stats"])
    return jnp.mean(y ** 2), state["mor_stats"]

  @jax.jit
  def step(params, opt_state, probes, x):
    (loss, fwd), (grads, g_probes) = jax.value_and_grad(
        loss_fn, (0, 1), has_aux=True)(params, probes, x)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state, loss, grads,
            flatten_stats(fwd, g_probes))

  return step


@pytest.fixture(scope="module")
def stack():
  """nn.scan'd layers, their unrolled and remat'd twins, one optax step each.

  Layer 1's kernel gets outlier input rows, so its fprop weight (one scale
  per output column) goes to BF16 while the others stay in E4M3.
  """
  x = jnp.asarray(np.random.default_rng(0).standard_normal((8, 16)),
                  jnp.float32)
  variables = cases.Scanned().init(jax.random.key(0), x)
  kernel = variables["params"]["layers"]["dense"]["kernel"]
  kernel = kernel.at[1, ::16].multiply(1e4)
  variables["params"]["layers"]["dense"]["kernel"] = kernel
  tx = optax.adam(1e-2)
  runs = {}
  for name, model in (("scan", cases.Scanned()), ("unrolled", _Unrolled()),
                      ("remat", _Unrolled(remat=True))):
    params, probes = variables["params"], variables["mor_grads"]
    if name != "scan":
      params = _unstack(params["layers"]["dense"], 3)
      probes = _unstack(probes["layers"]["dense"], 3)
    step = _train_step(model, tx)
    new_params, _, loss, grads, metrics = step(params, tx.init(params), probes,
                                               x)
    runs[name] = dict(params=params, new_params=new_params, loss=loss,
                      grads=grads, metrics=metrics)
  return runs


def test_scan_equals_unrolled_layers(stack):
  scan, unrolled = stack["scan"], stack["unrolled"]
  np.testing.assert_allclose(scan["loss"], unrolled["loss"], rtol=1e-6)
  chex.assert_trees_all_close(_unstack(scan["grads"]["layers"]["dense"], 3),
                              unrolled["grads"], rtol=1e-6, atol=1e-7)
  # Keys: "layers/dense/<i>/<gemm>/<role>/<metric>" vs "layer_<i>/...".
  renamed = {re.sub(r"^layers/dense/(\d+)/", r"layer_\1/", k): v
             for k, v in scan["metrics"].items()}
  assert set(renamed) == set(unrolled["metrics"])
  for key, value in unrolled["metrics"].items():
    np.testing.assert_allclose(renamed[key], value, rtol=1e-6, err_msg=key)
  # Each scanned layer has its own decisions.
  m = unrolled["metrics"]
  assert [float(m[f"layer_{i}/fprop/weight/fraction_e4m3"])
          for i in range(3)] == [1.0, 0.0, 1.0]
  assert [float(m[f"layer_{i}/dgrad/weight/fraction_e4m3"])
          for i in range(3)] == [1.0, 1.0, 1.0]


def test_remat_changes_nothing(stack):
  chex.assert_trees_all_equal(
      {k: stack["remat"][k] for k in ("loss", "grads", "metrics")},
      {k: stack["unrolled"][k] for k in ("loss", "grads", "metrics")})


def test_optax_step_updates_params_and_reports_all_six(stack):
  run = stack["unrolled"]
  for i in range(3):
    before = run["params"][f"layer_{i}"]["kernel"]
    after = run["new_params"][f"layer_{i}"]["kernel"]
    assert not np.array_equal(before, after)
    for gemm, role in GEMM_ROLES:
      for metric in ("fraction_e4m3", "fraction_bf16", "elements_e4m3",
                     "chosen_error", "error_e4m3", "amax", "dynamic_range",
                     "nonfinite"):
        value = run["metrics"][f"layer_{i}/{gemm}/{role}/{metric}"]
        assert value.shape == () and value.dtype == jnp.float32
  assert len(run["metrics"]) == 3 * 6 * 9


def test_vmap_over_apply_decides_per_example():
  model = MoRDense(8)
  xs = np.stack([_outliers((16, 32), 0, scale=1), _outliers((16, 32), 1)])
  variables = model.init(jax.random.key(0), xs[0])
  apply = functools.partial(model.apply, variables, mutable=["mor_stats"])
  ys, state = jax.jit(jax.vmap(apply))(xs)
  metrics = flatten_stats(state["mor_stats"])
  assert [float(metrics[f"{i}/fprop/activation/fraction_e4m3"])
          for i in range(2)] == [1.0, 0.0]
  for i in range(2):
    y, single = jax.jit(apply)(xs[i])
    np.testing.assert_array_equal(ys[i], y)
    chex.assert_trees_all_equal(
        jax.tree.map(lambda a, i=i: a[i], state["mor_stats"]),
        single["mor_stats"])


def test_nnx_linear_under_nnx_jit_matches_linen_dense():
  """MoRLinear and MoRDense, same parameters: same numbers and statistics."""
  model = mor_nnx.MoRLinear(32, 8, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.sgd(0.1), wrt=nnx.Param)
  x = jnp.asarray(_outliers((16, 32), 2))

  @nnx.jit
  def step(model, optimizer, x):
    grad_fn = nnx.value_and_grad(
        lambda m: _loss(m(x)),
        argnums=nnx.DiffState(0, nnx.Any(nnx.Param, mor_nnx.GradProbes)))
    loss, grads = grad_fn(model)
    param_grads = nnx.filter_state(grads, nnx.Param)
    optimizer.update(model, param_grads)
    return loss, nnx.to_pure_dict(param_grads), mor_nnx.flatten_stats(
        model, grads)

  params = {"kernel": model.kernel[...], "bias": model.bias[...]}
  loss, grads, metrics = step(model, optimizer, x)
  assert not np.array_equal(model.kernel[...], params["kernel"])
  linen = MoRDense(8)
  variables = linen.init(jax.random.key(0), x)

  def linen_loss(params, probes):
    y, state = linen.apply({"params": params, "mor_grads": probes}, x,
                           mutable=["mor_stats"])
    return _loss(y), state["mor_stats"]

  (l2, fwd), (g2, bwd) = jax.jit(jax.value_and_grad(
      linen_loss, (0, 1), has_aux=True))(params, variables["mor_grads"])
  # XLA may fuse the two programs differently: equal to float32 rounding,
  # and the decisions exactly.
  np.testing.assert_allclose(loss, l2, rtol=1e-6)
  chex.assert_trees_all_close(grads, g2, rtol=1e-5, atol=1e-6)
  linen_metrics = flatten_stats(fwd, bwd)
  assert set(metrics) == set(linen_metrics)
  for key, value in metrics.items():
    if "fraction" in key:
      np.testing.assert_array_equal(value, linen_metrics[key], err_msg=key)
    np.testing.assert_allclose(value, linen_metrics[key], rtol=1e-5,
                               err_msg=key)
  assert float(metrics["fprop/activation/fraction_bf16"]) == 1.0
  assert float(metrics["wgrad/activation/fraction_e4m3"]) == 1.0


# ---------------------------------------------------------------------------
# Policies per layer and by module path.


class _Model(nn.Module):
  """Three Dense layers at different paths, written without mor_jax."""

  @nn.compact
  def __call__(self, x):
    x = nn.Dense(16, name="qkv")(x)
    x = nn.Dense(16, name="fc1")(nn.relu(x))
    return nn.Dense(4, name="lm_head")(x)


E5M2_ROWS = mor_jax.Policy.uniform(
    mor_jax.Static(mor_jax.E5M2, block_shape=(1, None)))
RULES = mor_jax.PolicyRules(rules=((r"lm_head", None), (r"fc.*", E5M2_ROWS)))


def test_policy_rules_choose_by_module_path():
  x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 8)),
                  jnp.float32)
  model = dense.convert(_Model(), RULES)
  variables = model.init(jax.random.key(0), x)
  assert set(variables["mor_stats"]) == {"qkv", "fc1"}  # lm_head: plain
  assert set(variables["mor_grads"]) == {"qkv", "fc1"}
  _, state = jax.jit(functools.partial(model.apply, mutable=["mor_stats"]))(
      variables, x)
  stats = state["mor_stats"]
  assert stats["qkv"]["fprop"]["weight"].names == ("E4M3", "BF16")
  assert stats["fc1"]["fprop"]["weight"].names == ("E5M2", "BF16")
  # lm_head is a plain nn.Dense: with NoQuant elsewhere, the model is Flax's.
  plain = dense.convert(_Model(), mor_jax.PolicyRules(
      rules=((r"lm_head", None),), default=NOQUANT))
  params = {"params": variables["params"]}
  np.testing.assert_array_equal(plain.apply(params, x),
                                _Model().apply(params, x))


def test_policy_rules_through_dot_general_cls_and_per_layer_policy():
  rules = mor_jax.PolicyRules(rules=((r"b", NOQUANT),))  # the layer's path

  class Two(nn.Module):
    @nn.compact
    def __call__(self, x):
      cls = functools.partial(MoRDotGeneral, policy=rules)
      x = nn.Dense(8, name="a", dot_general_cls=cls)(x)
      x = nn.Dense(8, name="b", dot_general_cls=cls)(x)
      return MoRDense(8, name="c", policy=mor_jax.Policy(
          weight=mor_jax.NoQuant()))(x)

  variables = Two().init(jax.random.key(0), jnp.ones((2, 8)))
  s = variables["mor_stats"]
  assert s["a"]["MoRDotGeneral_0"]["fprop"]["weight"].names == ("E4M3", "BF16")
  assert s["b"]["MoRDotGeneral_0"]["fprop"]["weight"].names == ("BF16",)
  assert s["c"]["fprop"]["weight"].names == ("BF16",)
  assert s["c"]["fprop"]["activation"].names == ("E4M3", "BF16")
  probes = variables["mor_grads"]
  assert probes["c"]["dgrad"]["weight"].names == ("BF16",)
  assert probes["c"]["wgrad"]["gradient"].names == ("E4M3", "BF16")


class _TwoGemms(nn.Module):
  """Two GEMMs in one module through mor_dot_general (an attention core's
  shape): ``names`` names them."""
  names: tuple = ("in", "out")
  policy: object = mor_jax.Policy()

  @nn.compact
  def __call__(self, x):
    w = self.param("w", nn.initializers.lecun_normal(), (8, 8))
    dims = (((1,), (0,)), ((), ()))
    h = mor_dot_general(self, self.policy, x, w, dims, name=self.names[0])
    return mor_dot_general(self, self.policy, h, w.T, dims,
                           name=self.names[1])


class _Tied(nn.Module):
  """One layer applied twice."""
  layer: nn.Module

  @nn.compact
  def __call__(self, x):
    return self.layer(self.layer(x))


def test_mor_dot_general_twice_in_one_module_needs_names():
  x = _outliers((4, 8), 3)
  for names in ((None, None), ("a", "a")):
    with pytest.raises(ValueError, match="second GEMM in one call.*own name"):
      _TwoGemms(names).init(jax.random.key(0), x)
  # A layer applied twice (tied, or in a loop) is one GEMM called twice: its
  # backward statistics sum (mor_jax.dense's docstring), on every route.
  for layer in (MoRDense(8), dense.convert(nn.Dense(8), mor_jax.Policy())):
    tied = _Tied(layer)
    params, probes = mor_jax.split_variables(
        jax.jit(tied.init)(jax.random.key(0), x))
    g = jax.jit(jax.grad(lambda p: jnp.sum(tied.apply(
        {"params": params, "mor_grads": p}, x) ** 2)))(probes)
    assert {float(v) for k, v in flatten_stats(mor_grads=g).items()
            if k.endswith("wgrad/gradient/fraction_e4m3")} == {2.0}
  model = _TwoGemms(policy=mor_jax.PolicyRules(
      rules=((r"out$", NOQUANT),), default=mor_jax.Policy()))
  params, probes = mor_jax.split_variables(model.init(jax.random.key(0), x))

  def loss(params, probes):
    y, state = model.apply({"params": params, "mor_grads": probes}, x,
                           mutable=["mor_stats"])
    return jnp.sum(y ** 2), state["mor_stats"]

  (_, fwd), (_, bwd) = jax.jit(jax.value_and_grad(
      loss, (0, 1), has_aux=True))(params, probes)
  flat = flatten_stats(fwd, bwd)
  # Six quantizations each: 9 metrics under MoR, 6 under NoQuant (by path).
  assert len(flat) == 6 * 9 + 6 * 6
  assert {k.rsplit("/", 3)[0] for k in flat} == {"in", "out"}
  assert float(flat["out/wgrad/gradient/fraction_bf16"]) == 1.0
  assert float(flat["in/wgrad/gradient/fraction_e4m3"]) == 1.0


def test_flatten_stats_keys():
  x = jnp.ones((2, 8))
  model = dense.convert(_Model(), RULES)
  variables = model.init(jax.random.key(0), x)
  _, state = model.apply(variables, x, mutable=["mor_stats"])
  flat = flatten_stats(state["mor_stats"], variables["mor_grads"])
  layers = {k.split("/")[0] for k in flat}
  assert layers == {"qkv", "fc1"}
  assert {"/".join(k.split("/")[1:3]) for k in flat} == {
      f"{g}/{r}" for g, r in GEMM_ROLES}
  assert "fc1/wgrad/gradient/fraction_e5m2" in flat
  assert "fc1/wgrad/gradient/error_e5m2" in flat
  assert "fc1/wgrad/gradient/error_bf16" not in flat
  assert flatten_stats() == {}


# ---------------------------------------------------------------------------
# Bad arguments fail where they are given, naming them.


@pytest.mark.parametrize("call,error,match", [
    (lambda: MoRDense(4, policy="fp8"), TypeError,
     "policy must be a mor_jax.Policy, a mor_jax.PolicyRules or None"),
    (lambda: MoRDotGeneral(policy=mor_jax.TensorLevelMoR()), TypeError,
     "policy must be a mor_jax.Policy"),
    (lambda: mor_nnx.MoRLinear(2, 3, policy="fp8", rngs=nnx.Rngs(0)),
     TypeError, "policy must be a mor_jax.Policy"),
    (lambda: mor_nnx.MoRDotGeneral(RULES), TypeError,
     "resolve PolicyRules with convert"),
    (lambda: mor_jax.PolicyRules(min_size=-1), ValueError,
     "PolicyRules.min_size must be an int >= 0"),
    (lambda: mor_jax.PolicyRules(filter=3), TypeError,
     "PolicyRules.filter must be callable"),
    (lambda: dense.convert(nn.Dense(3), policy=3), TypeError,
     "policy must be a mor_jax.Policy"),
    (lambda: dense.convert(lambda x: x), TypeError,
     "model must be a flax.linen Module"),
    (lambda: dense.convert(nn.Dense), TypeError,
     r"got the class Dense: convert\(Dense\(...\), policy\)"),
    (lambda: mor_nnx.convert(nnx.Linear, mor_jax.Policy()), TypeError,
     r"got the class Linear \(pass an instance\)"),
    (lambda: dense.convert(nn.Dense(3), methods=("nope",)), ValueError,
     "has no method 'nope'"),
    (lambda: MoREinsum((3, 4), "ab,bc").init(jax.random.key(0),
                                             jnp.ones((2, 3))),
     ValueError, "must be explicit"),
    (lambda: MoREinsum((3, 3), "ab,bb->ab").init(jax.random.key(0),
                                                 jnp.ones((2, 3))),
     ValueError, "a label repeats within the kernel"),
    (lambda: MoREinsum((3, 4), "ab,cd->ad").init(jax.random.key(0),
                                                 jnp.ones((2, 3))),
     ValueError, "label 'b' is summed within one operand"),
    (lambda: MoRDenseGeneral(3, axis=-1, batch_dims=(1,)).init(
        jax.random.key(0), jnp.ones((2, 3, 4))),
     ValueError, "batch_dims .* must be consecutive leading dimensions"),
    (lambda: flatten_stats({"layer": {"fprop": {"activation": 1.0}}}),
     TypeError, r"found float at 'layer/fprop/activation'"),
    (lambda: flatten_stats({"layer": mor_jax.zero_probes(
        mor_jax.Policy())["dgrad"]["weight"]}),
     ValueError, "lack the <gemm>/<role> keys"),
])
def test_bad_arguments(call, error, match):
  with pytest.raises(error, match=match):
    call()
