"""Program size and compile time of one MoRDense forward and backward pass.

MoR's programs compile much slower than plain dense ones. This lowers
``jax.jit(jax.value_and_grad(loss))`` of one ``MoRDense`` (input
256 x 768, 3072 features by default) for several policies and plain
``lax.dot_general``, and prints the StableHLO line count, the most common
ops, and the compile time (median of ``--repeats`` fresh compiles, wall and
process CPU seconds: the CPU time is steadier on a shared machine).
``--by-source`` attributes the ops to the innermost mor_jax source line
that made them, from the ``loc(...)`` metadata (ops traced for a custom_vjp's
backward pass carry only the call site of the custom_vjp).

Run anywhere: ``python benchmarks/compile_size.py`` (on a CPU, the XLA
reference passes and execution "emulate"). Nothing here goes into tests.
"""

from __future__ import annotations

import argparse
import collections
import re
import statistics
import time

import jax
import jax.numpy as jnp

import mor_jax
from mor_jax.dense import MoRDense

POLICIES = {
    "mor_channel": mor_jax.Policy(),
    "mor_channel_fp8": mor_jax.Policy(execution="fp8"),
    "bf16": mor_jax.Policy.uniform(mor_jax.NoQuant()),
}


def _step(policy, rows: int, k: int, n: int):
  """(jitted fwd+bwd, its arguments); policy None: plain dot_general."""
  x = jax.random.normal(jax.random.key(0), (rows, k), jnp.float32)
  if policy is None:
    w = jax.random.normal(jax.random.key(1), (k, n), jnp.float32)
    loss = lambda w, x: jnp.mean((x @ w) ** 2)
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1))), (w, x)
  layer = MoRDense(n, policy=policy)
  v = layer.init(jax.random.key(1), x)

  def loss(params, probes, x):
    out, state = layer.apply({"params": params, "mor_grads": probes}, x,
                             mutable=["mor_stats"])
    return jnp.mean(out ** 2), state

  grad = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)
  return jax.jit(grad), (v["params"], v["mor_grads"], x)


def _by_source(text: str) -> collections.Counter:
  """Ops per innermost mor_jax file:line in ``as_text(debug_info=True)``."""
  locs = dict(re.findall(r"^#(loc\d+) = (.*)$", text, re.M))

  def frames(name, depth=0):
    value = locs.get(name, "")
    found = re.findall(r'"([^"]*\.py)":(\d+)', value)
    if found or depth > 30:
      return found
    return [f for inner in re.findall(r"#(loc\d+)", value)
            for f in frames(inner, depth + 1)]

  out = collections.Counter()
  for line in text.splitlines():
    op = re.search(r"= \"?stablehlo\.", line)
    loc = re.search(r"loc\(#(loc\d+)\)\s*$", line)
    if op and loc:
      ours = [f"{p.rsplit('/', 1)[-1]}:{n}" for p, n in frames(loc.group(1))
              if "/mor_jax/" in p or "/kernels/" in p]
      out[ours[0] if ours else "(outside mor_jax)"] += 1
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--shape", type=int, nargs=3, default=(256, 768, 3072),
                      metavar=("ROWS", "K", "N"))
  parser.add_argument("--policies", nargs="+",
                      default=[*POLICIES, "dot_general"],
                      choices=[*POLICIES, "dot_general"])
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--by-source", action="store_true")
  args = parser.parse_args()
  print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; "
        f"MoRDense {args.shape[0]}x{args.shape[1]} -> {args.shape[2]}")
  for name in args.policies:
    walls, cpus = [], []
    for _ in range(args.repeats):
      jax.clear_caches()
      fn, fn_args = _step(POLICIES.get(name), *args.shape)
      lowered = fn.lower(*fn_args)
      wall, cpu = time.perf_counter(), time.process_time()
      lowered.compile()
      walls.append(time.perf_counter() - wall)
      cpus.append(time.process_time() - cpu)
    text = lowered.as_text()
    ops = collections.Counter(re.findall(r"= \"?(stablehlo\.[a-z_]+)", text))
    print(f"{name}: {len(text.splitlines())} StableHLO lines, "
          f"compile {statistics.median(walls):.2f} s wall, "
          f"{statistics.median(cpus):.2f} s CPU")
    print("  ops:", ", ".join(f"{op[10:]} {c}" for op, c in ops.most_common(8)))
    if args.by_source and name != "dot_general":
      top = _by_source(lowered.as_text(debug_info=True)).most_common(12)
      print("  by source:", ", ".join(f"{s} {c}" for s, c in top))


if __name__ == "__main__":
  main()
