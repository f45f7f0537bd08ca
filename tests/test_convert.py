"""Converting a model written without mor_jax: every route works or says why.

- linen ``convert`` / ``intercept``: Einsum with the equation in the
  constructor, every public method, nn.scan without the statistics
  collections (a warning naming the layer) or with a None axis (a clear
  error);
- ``PolicyRules`` match the same paths on every route (a top-level layer
  too), warn about a rule that matches no layer, and keep layers that are
  too small or filtered out plain, on linen and NNX alike;
- NNX: Flax's layers with ``mor_jax.dot_general`` injected, ``MoRLinear``
  with ``PolicyRules``, ``mor_jax.nnx.convert``;
- ``mor_jax.describe`` on linen and NNX models.
"""

from __future__ import annotations

import functools
import pickle
import subprocess
import sys
import warnings

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import mor_jax
from mor_jax import dense
from mor_jax import nnx as mor_nnx

NOQUANT = mor_jax.Policy.uniform(mor_jax.NoQuant())
E5M2 = mor_jax.Policy.uniform(
    mor_jax.Static(mor_jax.E5M2, block_shape=(1, None)))


def _x(shape, seed=0):
  return jnp.asarray(np.random.default_rng(seed).standard_normal(shape),
                     jnp.float32)


def _init_shapes(model, *args, **kwargs):
  """model.init's variables as shapes, with nothing computed."""
  return jax.eval_shape(lambda: model.init(jax.random.key(0), *args, **kwargs))


def _quantized_layers(variables):
  return set(variables.get("mor_stats", {}))


# ---------------------------------------------------------------------------
# linen: Einsum, methods, nn.scan.


class _Attention(nn.Module):
  """DenseGeneral q and an Einsum output projection, equation given up front."""

  @nn.compact
  def __call__(self, x):
    h = nn.DenseGeneral((2, 16), name="q")(x)
    return nn.Einsum((2, 16, 32), "bthd,hdm->btm", name="out")(h)


@pytest.mark.parametrize("route", ["convert", "intercept"])
def test_einsum_with_the_equation_in_the_constructor(route):
  x = _x((2, 4, 32))
  if route == "convert":
    model = dense.convert(_Attention(), NOQUANT)
    v = model.init(jax.random.key(0), x)
    y = model.apply(v, x)
  else:
    model = _Attention()
    with dense.intercept(NOQUANT):
      v = model.init(jax.random.key(0), x)
      y = model.apply(v, x)
  assert _quantized_layers(v) == {"q", "out"}
  # NoQuant: Flax's numbers (to rounding: einsum and dot_general may sum
  # in another order).
  chex.assert_trees_all_close(
      y, _Attention().apply({"params": v["params"]}, x), rtol=1e-6, atol=1e-6)


class _AutoEncoder(nn.Module):

  def setup(self):
    self.enc = nn.Dense(16)
    self.dec = nn.Dense(32)

  def encode(self, x):
    return self.enc(x)

  def __call__(self, x):
    return self.dec(self.encode(x))


def test_convert_quantizes_every_public_method():
  x = _x((2, 32))
  model = dense.convert(_AutoEncoder())
  v = {"params": model.init(jax.random.key(0), x)["params"]}
  _, state = model.apply(v, x, method="encode", mutable=["mor_stats"])
  assert _quantized_layers(state) == {"enc"}
  # Only the methods asked for, if given.
  only_call = dense.convert(_AutoEncoder(), methods=("__call__",))
  _, state = only_call.apply(v, x, method="encode", mutable=["mor_stats"])
  assert not _quantized_layers(state)
  # One name as a string, not a sequence of one-letter names.
  only_encode = dense.convert(_AutoEncoder(), methods="encode")
  _, state = only_encode.apply(v, x, method="encode", mutable=["mor_stats"])
  assert _quantized_layers(state) == {"enc"}


def test_converted_model_pickles():
  """The converted class is made by convert, so pickle cannot find it by
  name: it pickles as the original and the conversion (methods= kept)."""
  x = _x((2, 32))
  model = dense.convert(_AutoEncoder(), NOQUANT, methods="encode")
  v = {"params": model.init(jax.random.key(0), x)["params"]}
  back = pickle.loads(pickle.dumps(model))
  assert type(back).__mro__[1] is _AutoEncoder
  for method in ("encode", "__call__"):
    chex.assert_trees_all_equal(
        back.apply(v, x, method=method, mutable=["mor_stats"]),
        model.apply(v, x, method=method, mutable=["mor_stats"]))
  _, state = back.apply(v, x, mutable=["mor_stats"])
  assert _quantized_layers(state) == {"enc"}


def test_convert_quantizes_a_method_given_as_a_function():
  """Flax calls method=<function> as it is: the original class's method, or
  a function of the module, must still run with MoR, as method="encode"
  does; with methods= given, only those."""
  x = _x((2, 32))
  model = dense.convert(_AutoEncoder())
  v = {"params": model.init(jax.random.key(0), x)["params"]}
  want = model.apply(v, x, method="encode", mutable=["mor_stats"])
  for method in (_AutoEncoder.encode, _AutoEncoder().encode, model.encode,
                 lambda module, x: module.enc(x)):
    chex.assert_trees_all_equal(
        model.apply(v, x, method=method, mutable=["mor_stats"]), want)
    _, got = model.init_with_output(jax.random.key(0), x, method=method)
    assert _quantized_layers(got) == {"enc"}
  only_call = dense.convert(_AutoEncoder(), methods=("__call__",))
  for method in (_AutoEncoder.encode, lambda module, x: module.enc(x)):
    _, state = only_call.apply(v, x, method=method, mutable=["mor_stats"])
    assert not _quantized_layers(state)


class _Block(nn.Module):

  @nn.compact
  def __call__(self, x, _):
    return nn.Dense(16, name="fc")(x), None


def _scanned(variable_axes):

  class Stack(nn.Module):

    @nn.compact
    def __call__(self, x):
      return nn.scan(_Block, variable_axes=variable_axes, length=2,
                     split_rngs={"params": True})(name="blocks")(x, None)[0]

  return dense.convert(Stack())


def test_scan_without_the_statistics_axes_warns_naming_the_layer():
  with pytest.warns(UserWarning, match=r"layer 'blocks/fc' .* variable_axes="):
    v = _init_shapes(_scanned({"params": 0}), _x((4, 16)))
  assert "mor_stats" not in v
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    v = _init_shapes(_scanned({"params": 0, "mor_stats": 0, "mor_grads": 0}),
                     _x((4, 16)))
  assert v["mor_stats"]["blocks"]["fc"]["fprop"]["weight"].amax.shape == (2,)


def test_scan_with_a_none_axis_says_what_to_write():
  with pytest.raises(ValueError, match=r"int axis for every collection"):
    _init_shapes(_scanned({"params": 0, "mor_stats": None}), _x((4, 16)))


# ---------------------------------------------------------------------------
# PolicyRules: the same paths on every route.


class _Model(nn.Module):
  """A top-level lm_head, an mlp block, attention; plain Flax."""
  dot_general_cls: object = None

  @nn.compact
  def __call__(self, x):
    kw = {} if self.dot_general_cls is None else {
        "dot_general_cls": self.dot_general_cls}
    x = nn.Dense(32, name="qkv", **kw)(x)
    x = _Mlp(self.dot_general_cls, name="mlp")(x)
    return nn.Dense(16, name="lm_head", **kw)(x)


class _Mlp(nn.Module):
  dot_general_cls: object = None

  @nn.compact
  def __call__(self, x):
    kw = {} if self.dot_general_cls is None else {
        "dot_general_cls": self.dot_general_cls}
    return nn.Dense(32, name="fc2", **kw)(nn.Dense(32, name="fc1", **kw)(x))


README_RULES = mor_jax.PolicyRules(rules=(
    (r".*/lm_head", None),
    (r".*/mlp/.*", mor_jax.Policy(gradient=mor_jax.NoQuant()))))


def test_rule_paths_top_level_nested_and_anchored():
  rules = README_RULES
  assert rules.policy_for("lm_head") is None
  assert rules.policy_for("Decoder/lm_head") is None
  assert rules.policy_for("mlp/fc1").gradient == mor_jax.NoQuant()
  assert rules.policy_for("Block_0/mlp/fc1").gradient == mor_jax.NoQuant()
  assert rules.policy_for("qkv") == mor_jax.Policy()
  tail = mor_jax.PolicyRules(rules=((r"lm_head", None),))
  assert tail.policy_for("Decoder/lm_head") is None
  anchored = mor_jax.PolicyRules(rules=((r"/lm_head", None),))
  assert anchored.policy_for("lm_head") is None
  assert anchored.policy_for("Decoder/lm_head") == mor_jax.Policy()


def _routes(policy):
  return {
      "convert": dense.convert(_Model(), policy),
      "dot_general_cls": _Model(dot_general_cls=functools.partial(
          dense.MoRDotGeneral, policy=policy)),
  }


def _policies_by_layer(variables):
  """Layer path -> the weight recipe's names, by the probes' shapes."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(
      variables["mor_grads"], is_leaf=lambda x: isinstance(
          x, mor_jax.NamedMoRStats))[0]:
    keys = [k.key for k in path]
    keys = [k for k in keys if k != "MoRDotGeneral_0"]
    out.setdefault("/".join(keys[:-2]), {})["/".join(keys[-2:])] = leaf.names
  return out


def test_rules_choose_the_same_layers_on_every_route():
  x = _x((2, 32))
  got = {name: _policies_by_layer(_init_shapes(model, x))
         for name, model in _routes(README_RULES).items()}
  assert got["convert"] == got["dot_general_cls"]
  assert set(got["convert"]) == {"qkv", "mlp/fc1", "mlp/fc2"}  # no lm_head
  assert got["convert"]["mlp/fc1"]["wgrad/gradient"] == ("BF16",)
  assert got["convert"]["qkv"]["wgrad/gradient"] == ("E4M3", "BF16")


def test_a_rule_that_matches_no_layer_warns_once_naming_it():
  rules = mor_jax.PolicyRules(rules=((r"lm_head", None), (r"decoder/.*", None)))
  for model in (dense.convert(_Model(), rules),):
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always")
      _init_shapes(model, _x((2, 32)))
    texts = [str(w.message) for w in caught]
    assert len(texts) == 1, texts
    assert "rule 1 ('decoder/.*') matched no layer" in texts[0]
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    mor_nnx.convert(_NnxModel(nnx.Rngs(0)), rules)
  assert ["rule 1 ('decoder/.*')" in str(w.message) for w in caught] == [True]


def _size_rules():
  return mor_jax.PolicyRules(
      min_size=32, multiple_of=16,
      filter=lambda path, gemm: not path.endswith("fc2"))


def test_small_and_filtered_layers_stay_plain_on_linen():
  class Sizes(nn.Module):
    @nn.compact
    def __call__(self, x):
      x = nn.Dense(64, name="big")(x)             # 48 x 64: converted
      x = nn.Dense(40, name="odd")(x)             # n = 40: not a multiple of 16
      x = nn.Dense(16, name="small")(x)           # n = 16 < 32
      return nn.Dense(32, name="fc2")(x)          # filtered out
  for model in (dense.convert(Sizes(), _size_rules()),):
    assert _quantized_layers(_init_shapes(model, _x((2, 48)))) == {"big"}
  layer = dense.MoRDense(16, policy=_size_rules())   # MoRDense route too
  assert not _quantized_layers(_init_shapes(layer, _x((2, 48))))


# ---------------------------------------------------------------------------
# NNX.


class _NnxModel(nnx.Module):

  def __init__(self, rngs):
    self.qkv = nnx.Linear(32, 64, rngs=rngs)
    self.heads = nnx.LinearGeneral(64, (2, 32), rngs=rngs)
    self.out = nnx.Einsum("bhd,hdm->bm", (2, 32, 48), rngs=rngs)
    self.mlp = nnx.Dict(fc2=nnx.Linear(48, 16, rngs=rngs))
    self.lm_head = nnx.Linear(16, 10, rngs=rngs)

  def __call__(self, x):
    x = self.out(self.heads(self.qkv(x)))
    return self.lm_head(self.mlp["fc2"](x))


@pytest.mark.parametrize("cls,args", [
    (nnx.Linear, (32, 8)), (nnx.LinearGeneral, (32, (2, 4)))])
def test_flax_nnx_layers_take_mor_dot_general(cls, args):
  x = _x((4, 32))
  got = cls(*args, rngs=nnx.Rngs(0), dot_general=functools.partial(
      mor_jax.dot_general, policy=NOQUANT))(x)
  chex.assert_trees_all_equal(got, cls(*args, rngs=nnx.Rngs(0))(x))


def test_dot_general_honours_out_sharding():
  mesh = jax.make_mesh((1,), ("x",),
                       axis_types=(jax.sharding.AxisType.Explicit,))
  spec = jax.sharding.PartitionSpec("x", None)
  with jax.set_mesh(mesh):
    sharding = jax.sharding.NamedSharding(mesh, spec)
    y = jax.jit(lambda x, w: mor_jax.dot_general(
        x, w, (((1,), (0,)), ((), ())), out_sharding=sharding,
        policy=NOQUANT))(_x((4, 8)), _x((8, 2), 1))
  assert y.sharding.spec == spec


def test_mor_jax_nnx_is_reachable_after_import_mor_jax():
  code = "import mor_jax; print(mor_jax.nnx.MoRLinear.__name__)"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, check=True)
  assert out.stdout.strip() == "MoRLinear"


def test_mor_linear_takes_policy_rules():
  rules = mor_jax.PolicyRules(rules=((r"lm_head", None), (r"fc.*", E5M2)))
  fc = mor_nnx.MoRLinear(16, 32, policy=rules, path="mlp/fc1",
                         rngs=nnx.Rngs(0))
  assert fc.policy == E5M2
  assert fc.dgrad["weight"].get_value().names == ("E5M2", "BF16")
  head = mor_nnx.MoRLinear(16, 10, policy=rules, path="lm_head",
                           rngs=nnx.Rngs(0))
  assert head.policy is None   # plain: Flax's numbers, no statistics
  x = _x((3, 16))
  chex.assert_trees_all_equal(head(x), nnx.Linear(16, 10, rngs=nnx.Rngs(0))(x))
  assert mor_nnx.flatten_stats(head) == {}
  with pytest.warns(UserWarning, match="no path="):
    mor_nnx.MoRLinear(16, 32, policy=rules, rngs=nnx.Rngs(0))
  with warnings.catch_warnings():  # Rules with only a default need no path.
    warnings.simplefilter("error")
    mor_nnx.MoRLinear(16, 32, policy=mor_jax.PolicyRules(min_size=8),
                      rngs=nnx.Rngs(0))


def test_nnx_convert_in_place():
  x = _x((4, 32))
  model = _NnxModel(nnx.Rngs(0))
  want = model(x)
  params = nnx.state(model, nnx.Param)
  mor_nnx.convert(model, mor_jax.PolicyRules(
      rules=((r"lm_head", None),), default=NOQUANT))
  chex.assert_trees_all_equal(nnx.state(model, nnx.Param), params)
  # NoQuant: Flax's numbers (to rounding: the Einsum's GEMM may sum in
  # another order than jnp.einsum's on some CPUs, see tests/test_dense.py).
  chex.assert_trees_all_close(model(x), want, rtol=1e-6, atol=1e-6)
  assert model.lm_head.dot_general is jax.lax.dot_general
  mor_nnx.convert(model, mor_jax.Policy())   # converted layers stay so
  assert model.qkv.dot_general.policy == NOQUANT
  assert model.lm_head.dot_general.policy == mor_jax.Policy()
  # Statistics by layer path, forward and backward.
  grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2), argnums=nnx.DiffState(
      0, nnx.Any(nnx.Param, mor_nnx.GradProbes)))(model)
  layers = {k.rsplit("/", 3)[0] for k in mor_nnx.flatten_stats(model, grads)}
  assert layers == {"qkv", "heads", "out", "mlp/fc2", "lm_head"}
  assert "mlp/fc2/wgrad/gradient/fraction_bf16" in mor_nnx.flatten_stats(
      model, grads)
  # summarize names each quantization as flatten_stats does (by the layer,
  # not its injected op) and counts six per layer.
  summary = mor_nnx.summarize(model, grads)
  assert set(summary.locations) == {
      k.rsplit("/", 1)[0] for k in mor_nnx.flatten_stats(model, grads)}
  assert float(summary["quantizations"]) == 6 * 5
  with pytest.raises(TypeError, match=r"for linen, mor_jax\.summarize"):
    mor_nnx.summarize({})


def test_nnx_flatten_stats_refuses_a_shared_op_and_grads_without_probes():
  """functools.partial shares one op: one set of statistics for both."""
  make = functools.partial(nnx.Linear, dot_general=mor_nnx.MoRDotGeneral(
      mor_jax.Policy()), rngs=nnx.Rngs(0))
  model = nnx.Sequential(make(32, 16), make(16, 8))
  forward = nnx.jit(lambda m, x: m(x))
  forward(model, _x((4, 32)))
  with pytest.raises(ValueError, match=r"2 layers \(layers/0/dot_general, "
                     r"layers/1/dot_general\).*its own"):
    mor_nnx.flatten_stats(model)
  model.layers[1].dot_general = mor_nnx.MoRDotGeneral(mor_jax.Policy())
  forward(model, _x((4, 32)))
  layers = {k.rsplit("/", 3)[0] for k in mor_nnx.flatten_stats(model)}
  assert layers == {"layers/0", "layers/1"}
  # Gradients of the parameters alone hold no backward statistics.
  grads = nnx.jit(nnx.grad(lambda m, x: jnp.sum(m(x) ** 2)))(model, _x((4, 32)))
  with pytest.raises(ValueError, match="no GradProbes.*DiffState"):
    mor_nnx.flatten_stats(model, grads)


def test_nnx_convert_twice_reports_no_unused_rule():
  # The second call matches the converted layers again: no rule warns that
  # it matched nothing (it did, and "converting twice changes nothing").
  model = _NnxModel(nnx.Rngs(0))
  rules = mor_jax.PolicyRules(rules=((r"qkv", NOQUANT), (r"lm_head", None)))
  for _ in range(2):
    with warnings.catch_warnings():
      warnings.simplefilter("error")
      mor_nnx.convert(model, rules)
  assert model.qkv.dot_general.policy == NOQUANT


def test_small_and_filtered_layers_stay_plain_on_nnx():
  model = mor_nnx.convert(_NnxModel(nnx.Rngs(0)), _size_rules())
  # qkv 32 x 64, heads 64 x 64, out 64 x 48, fc2 filtered, lm_head 16 x 10.
  converted = {name for name in ("qkv", "heads", "lm_head")
               if getattr(model, name).dot_general is not jax.lax.dot_general
               and getattr(model, name).dot_general is not None}
  assert converted == {"qkv", "heads"}
  assert isinstance(model.out.einsum_op, mor_nnx.MoREinsumOp)
  assert model.mlp["fc2"].dot_general is jax.lax.dot_general


# ---------------------------------------------------------------------------
# describe.


def test_describe_linen_lists_every_layer_and_its_policy():
  d = mor_jax.describe(_Model(), jax.ShapeDtypeStruct((2, 32), jnp.bfloat16),
                       policy=README_RULES)
  got = {l.path: (l.kind, l.kernel_shape, l.gemm, l.policy) for l in d.layers}
  assert got == {
      "qkv": ("Dense", (32, 32), (32, 32), mor_jax.Policy()),
      "mlp/fc1": ("Dense", (32, 32), (32, 32),
                  mor_jax.Policy(gradient=mor_jax.NoQuant())),
      "mlp/fc2": ("Dense", (32, 32), (32, 32),
                  mor_jax.Policy(gradient=mor_jax.NoQuant())),
      "lm_head": ("Dense", (32, 16), (32, 16), None),
  }
  table = str(d).splitlines()
  assert table[0].split() == ["path", "layer", "kernel", "k", "x", "n",
                              "policy"]
  assert table[-1].split()[-1] == "plain"
  # Unconverted, Flax's layers are plain; the dot_general_cls route agrees.
  assert {l.policy for l in mor_jax.describe(_Model(), _x((2, 32))).layers
         } == {None}
  cls_route = mor_jax.describe(_routes(README_RULES)["dot_general_cls"],
                               _x((2, 32)))
  assert [(l.path, l.kind, l.policy) for l in cls_route.layers] == [
      (p, k, pol) for p, (k, _, _, pol) in got.items()]


def test_describe_nnx_without_changing_the_model():
  model = _NnxModel(nnx.Rngs(0))
  d = mor_jax.describe(model, policy=_size_rules())
  got = {l.path: (l.kind, l.gemm, l.policy is not None) for l in d.layers}
  assert got == {
      "qkv": ("Linear", (32, 64), True),
      "heads": ("LinearGeneral", (64, 64), True),
      "out": ("Einsum", (64, 48), True),
      "mlp/fc2": ("Linear", (48, 16), False),
      "lm_head": ("Linear", (16, 10), False),
  }
  assert model.qkv.dot_general is jax.lax.dot_general   # not converted
  mor_nnx.convert(model, _size_rules())
  assert [l.policy for l in mor_jax.describe(model).layers] == [
      l.policy for l in d.layers]
