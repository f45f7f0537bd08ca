"""Converts a plain Flax transformer to MoR, trains it, and reports its statistics.

``examples/tiny_transformer.py`` is written with ``nn.Dense`` and no mor_jax.
It is converted without editing it, in one of two ways:

- ``--method dot_general_cls`` (default): its Dense layers are handed our
  dot_general through the model's own Flax hook,
  ``dot_general_cls=functools.partial(MoRDotGeneral, policy=POLICY)``;
- ``--method convert``: ``mor_jax.dense.convert(model, POLICY)`` runs every
  ``nn.Dense`` inside it as ``MoRDense``, for models without such a hook.

Both give the same GEMMs (three per layer, six MoR quantizations) and the
same numbers. ``PolicyRules`` keeps the ``lm_head`` unquantized, as the paper
quantizes only QKV, the attention output, FC1 and FC2. The same model trains
unconverted alongside, from the same initial parameters and data, and the
script prints both losses and, for the last step, every layer's six
decisions and errors.

The task: sequences with x[t+1] = (x[t] + x[t-1]) mod vocab from two random
tokens, so the model must attend to the previous tokens.

Run (from the repository root): python -m examples.convert_transformer --steps 300
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import mor_jax
from examples import tiny_transformer
from mor_jax.dense import MoRDotGeneral, convert, flatten_stats
from mor_jax.report import layer_table

# Quantize everything (default Policy) except the output projection; the rule
# matches the layer's path "lm_head" on both routes.
POLICY = mor_jax.PolicyRules(rules=((r"lm_head", None),))
METHODS = ("dot_general_cls", "convert")
ROLES = ("fprop/activation", "fprop/weight", "dgrad/gradient", "dgrad/weight",
         "wgrad/activation", "wgrad/gradient")


@dataclasses.dataclass(frozen=True)
class Result:
  """Per-step losses of both runs and the last step's MoR statistics."""

  mor_losses: list[float]
  ref_losses: list[float]
  metrics: dict[str, float]


def batch(key: jax.Array, size: int, length: int, vocab: int) -> jax.Array:
  """[size, length] int32 sequences x[t+1] = (x[t] + x[t-1]) mod vocab."""
  first = jax.random.randint(key, (size, 2), 0, vocab)

  def step(prev, _):
    nxt = (prev[:, 0] + prev[:, 1]) % vocab
    return jnp.stack([prev[:, 1], nxt], axis=1), nxt

  _, rest = jax.lax.scan(step, first, None, length=length - 2)
  return jnp.concatenate([first, rest.T], axis=1)


def to_mor(cfg: tiny_transformer.Config, method: str = "dot_general_cls"):
  """The tiny transformer with its Dense layers running through MoR.

  Args:
    cfg: the model's configuration.
    method: "dot_general_cls" (hand the Dense layers our dot_general through
      the Flax hook the model exposes) or "convert" (intercept every
      ``nn.Dense``; needs no hook).

  Returns:
    An unbound linen Module with the plain model's parameters.
  """
  if method == "dot_general_cls":
    return tiny_transformer.TinyTransformer(dataclasses.replace(
        cfg, dot_general_cls=functools.partial(MoRDotGeneral, policy=POLICY)))
  if method == "convert":
    return convert(tiny_transformer.TinyTransformer(cfg), POLICY)
  raise ValueError(f"method must be one of {METHODS}, got {method!r}.")


def make_step(model, tx):
  """A jitted train step returning the loss and the flattened statistics."""

  def loss_fn(params, probes, tokens):
    logits, state = model.apply({"params": params, "mor_grads": probes},
                                tokens[:, :-1], mutable=["mor_stats"])
    loss = optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(jnp.float32), tokens[:, 1:]).mean()
    return loss, state.get("mor_stats", {})

  @jax.jit
  def step(params, opt_state, probes, tokens):
    (loss, fwd), (grads, g_probes) = jax.value_and_grad(
        loss_fn, argnums=(0, 1), has_aux=True)(params, probes, tokens)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state, loss,
            flatten_stats(fwd, g_probes))

  return step


def train(steps: int = 300, batch_size: int = 32, seq_len: int = 32,
          dtype: str = "float32", seed: int = 0, log_every: int = 0,
          method: str = "dot_general_cls", **sizes) -> Result:
  """Trains the converted and the plain model side by side.

  Args:
    steps: optimizer steps.
    batch_size: sequences per step.
    seq_len: tokens per sequence.
    dtype: compute dtype ("float32" or "bfloat16").
    seed: seed of the initial parameters and the data.
    log_every: print the losses every this many steps (0: never).
    method: how the model is converted, see ``to_mor``.
    **sizes: other ``tiny_transformer.Config`` fields (layers, d_model, ...).

  Returns:
    A ``Result``.
  """
  cfg = tiny_transformer.Config(max_len=seq_len, dtype=jnp.dtype(dtype),
                                **sizes)
  ref_model = tiny_transformer.TinyTransformer(cfg)
  mor_model = to_mor(cfg, method)
  key = jax.random.key(seed)
  tokens = batch(key, batch_size, seq_len, cfg.vocab)
  variables = mor_model.init(jax.random.key(seed + 1), tokens[:, :-1])
  probes = variables["mor_grads"]
  tx = optax.adamw(3e-3, weight_decay=0.01)
  runs = {"mor": (mor_model, variables["params"]),
          "ref": (ref_model, variables["params"])}  # Same parameters.
  state = {name: (params, tx.init(params), make_step(model, tx))
           for name, (model, params) in runs.items()}
  losses = {name: [] for name in runs}
  metrics = {}
  for i in range(steps):
    tokens = batch(jax.random.fold_in(key, i), batch_size, seq_len, cfg.vocab)
    for name, (params, opt_state, step) in state.items():
      params, opt_state, loss, stats = step(params, opt_state, probes, tokens)
      state[name] = (params, opt_state, step)
      losses[name].append(float(loss))
      if name == "mor":
        metrics = stats
    if log_every and (i + 1) % log_every == 0:
      e4m3 = np.mean([float(v) for k, v in metrics.items()
                      if k.endswith("fraction_e4m3")])
      print(f"step {i + 1:5d}  loss MoR {losses['mor'][-1]:.4f}  "
            f"plain {losses['ref'][-1]:.4f}  "
            f"E4M3 share of quantizations {e4m3:.1%}")
  return Result(losses["mor"], losses["ref"],
                {k: float(v) for k, v in metrics.items()})


def report(metrics: dict[str, float]) -> str:
  """A table: per layer and quantization, the representation and the error."""
  return layer_table({k.replace("/MoRDotGeneral_0/", "/"): v
                      for k, v in metrics.items()})


# ``batch`` draws two tokens, then each from the two before: the first token
# the rule predicts, and so anything to learn, is the third.
MIN_SEQ = 3


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--steps", type=int, default=300)
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--seq", type=int, default=32)
  parser.add_argument("--dtype", default="float32",
                      choices=("float32", "bfloat16"))
  parser.add_argument("--method", default="dot_general_cls", choices=METHODS)
  args = parser.parse_args(argv)
  # Else an IndexError (no step), NaN losses (no sequence) or an MLIRError.
  for name, least in (("steps", 1), ("batch", 1), ("seq", MIN_SEQ)):
    if getattr(args, name) < least:
      parser.error(f"--{name} must be at least {least}, got "
                   f"{getattr(args, name)}.")
  start = time.time()
  result = train(args.steps, args.batch, args.seq, args.dtype,
                 log_every=max(args.steps // 10, 1), method=args.method)
  print(f"\nfinal loss: MoR {result.mor_losses[-1]:.4f}, plain "
        f"{result.ref_losses[-1]:.4f} ({time.time() - start:.0f} s)")
  print("\nlast step, each quantization: representation, relative error")
  print(report(result.metrics))


if __name__ == "__main__":
  main()
