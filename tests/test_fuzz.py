"""A property/fuzz suite: random problems against the NumPy reference.

Each case draws a static configuration (below) and its own values: a seed
from which magnitudes log-uniform over a random window of the dtype's range
(float32's or float16's) are drawn, with zeros, NaN and +-inf injected at
random rates. It checks, for each implementation (``tests.cases.IMPLS``: XLA,
and the Pallas kernels in interpret mode off a GPU):

- codes and scales equal ``tests/reference.py`` bit for bit;
- dequantized and fake-quantized values are within 1 ulp of the reference;
- no finite input becomes +-inf or NaN (saturation, docs/numerics.md 3.9);
- gam scales satisfy s/2 < scale <= s;
- MoR's decisions equal the reference's, except for a unit whose deciding
  quantity lies within 1e-5 (relative) of its bound (docs/numerics.md
  section 5 says why those may differ), and MoR's values are within 1 ulp;
- MoR's statistics are finite.

A static configuration is what a compile depends on: a shape of rank 0-4
(dimensions up to 96, 24, 10 and 6 by rank, so edge blocks are often
ragged), a block shape (a size 1-8 or None per dimension), a scaling (fp32,
e8m0, gam), a gam group (None, or 1-3 blocks per dimension), a format (E4M3,
E5M2), a recipe (TensorLevelMoR with threshold 0.02, 0.045 or 0.1,
SubTensorMoR two- or three-way, Static) and an input dtype (float32,
bfloat16, float16). Compiling costs about a second of CPU and running a case
milliseconds, so a run of n cases draws its configurations from a pool of
``pool_size(n)`` (about 5 sqrt(n): 90 for 320 cases, 500 for 10,000), each
compiled once and reused by the cases that draw it. The pool is a prefix of
one seeded sequence that cycles through every combination of rank, scaling,
format, recipe and dtype (360) in shuffled order, the other fields drawn at
random; so a pool of 500 holds each combination at least once, and a small
one a sample of them. The test prints how many cases ran and how many
configurations they compiled (a derandomized run of 10,000 draws all 500).

The default run: 320 cases under XLA and 80 under Pallas. The long run is a
documented command (README, Tests):

    MOR_JAX_FUZZ_EXAMPLES=10000 pytest -s tests/test_fuzz.py

which runs that many cases under each implementation and prints the counts
(see docs/robustness.md for its time on two CPU cores; Pallas compiles on a
GPU).
"""

from __future__ import annotations

import itertools
import math
import os

import hypothesis
from hypothesis import strategies as st
import ml_dtypes
import numpy as np
import pytest

import mor_jax
from mor_jax import _partition
from mor_jax.kernels import quantize as kq
from tests import cases
from tests import data
from tests import reference as ref

ENV_VAR = "MOR_JAX_FUZZ_EXAMPLES"
# Cases per implementation: the environment variable's value for both, or by
# default 320 for XLA and 80 for Pallas (interpret mode compiles slower).
DEFAULT = {"xla": 320, "pallas": 80}
FMTS = {"E4M3": mor_jax.E4M3, "E5M2": mor_jax.E5M2}
RECIPES = ("tensor", "two_way", "three_way", "static")
SCALINGS = ("fp32", "e8m0", "gam")
MAX_DIM = {0: 1, 1: 96, 2: 24, 3: 10, 4: 6}  # by rank
# Decisions within this relative distance of their bound may differ from the
# float64 reference (float32 sums and division, docs/numerics.md section 5).
MARGIN = 1e-5


def pool_size(n: int) -> int:
  """Static configurations for a run of n cases (see the module docstring)."""
  return min(n, math.ceil(5 * math.sqrt(n)))


def static_configs(size: int) -> list[dict]:
  """The first ``size`` static configurations of one seeded sequence.

  Each round of 360 covers every (rank, scaling, format, recipe, dtype) once,
  shuffled; shape, block shape, group and threshold are drawn at random.
  """
  rng = np.random.default_rng(16)
  combos = list(itertools.product(range(5), SCALINGS, sorted(FMTS), RECIPES,
                                  sorted(data.DTYPES)))
  out = []
  while len(out) < size:
    for i in rng.permutation(len(combos)):
      rank, scaling, fmt, recipe, dtype = combos[i]
      shape = tuple(int(d) for d in rng.integers(1, MAX_DIM[rank] + 1, rank))
      block = tuple(None if rng.random() < 0.5 else int(rng.integers(1, 9))
                    for _ in shape)
      group = None
      if scaling == "gam" and rank and rng.random() < 0.5:
        group = tuple(None if b is None else b * int(rng.integers(1, 4))
                      for b in block)
      threshold = float(rng.choice((0.02, 0.045, 0.1)))
      out.append(dict(shape=shape, block=block, scaling=scaling, group=group,
                      fmt=fmt, recipe=recipe, threshold=threshold,
                      dtype=dtype))
  return out[:size]


def problems(pool):
  """Cases: a configuration of ``pool`` (by index) and a seed for values."""
  return st.builds(lambda i, seed: dict(pool[i], config=i, seed=seed),
                   st.sampled_from(range(len(pool))),
                   st.integers(0, 2**32 - 1))


def tensor(p) -> np.ndarray:
  """Magnitudes log-uniform over a random window of the dtype's range, with
  zeros, NaN and +-inf injected at random rates."""
  rng = np.random.default_rng(p["seed"])
  dtype = data.DTYPES[p["dtype"]]
  info = ml_dtypes.finfo(dtype)
  lo, hi = int(info.minexp) - 6, int(info.maxexp)
  center = rng.uniform(lo, hi)
  width = rng.choice([0.5, 4.0, 20.0, float(hi - lo)])
  e = rng.uniform(center - width / 2, center + width / 2, p["shape"])
  x = np.sign(rng.standard_normal(p["shape"])) * np.exp2(np.clip(e, lo, hi))
  x = np.clip(x, -float(info.max), float(info.max))
  for value, rate in ((0.0, rng.choice([0, 0.1, 0.5])),
                      (np.nan, rng.choice([0, 0, 0.02])),
                      (np.inf, rng.choice([0, 0, 0.02])),
                      (-np.inf, rng.choice([0, 0, 0.02]))):
    x = np.where(rng.random(p["shape"]) < rate, value, x)
  return np.asarray(x).astype(dtype)


def recipe_of(p):
  """(mor_jax recipe, ``ref.mor`` description)."""
  kw = dict(block_shape=p["block"], scaling=p["scaling"],
            group_shape=p["group"])
  desc = lambda cands, gran: (cands, gran, p["block"], p["scaling"],  # noqa: E731
                              p["group"])
  if p["recipe"] == "tensor":
    return (mor_jax.TensorLevelMoR(threshold=p["threshold"], **kw),
            desc([("E4M3", ("error_below", p["threshold"]))], "tensor"))
  if p["recipe"] == "static":
    return (mor_jax.Static(FMTS[p["fmt"]], **kw),
            desc([(p["fmt"], ("always",))], "block"))
  two = [("E4M3", ("error_not_above", "E5M2"))]
  if p["recipe"] == "two_way":
    return mor_jax.SubTensorMoR(**kw), desc(two, "block")
  return (mor_jax.SubTensorMoR(mode="three_way", **kw),
          desc(two + [("E5M2", ("dynamic_range",))], "block"))


def run_all(p):
  fmt = FMTS[p["fmt"]]
  kw = dict(block_shape=p["block"], scaling=p["scaling"],
            group_shape=p["group"])
  recipe = recipe_of(p)[0]

  def fn(x):
    qa = mor_jax.quantize(x, fmt, **kw)
    return (qa, mor_jax.dequantize(qa), mor_jax.fake_quantize(x, fmt, **kw),
            mor_jax.mor_quantize(x, recipe))

  return fn


def ambiguous(x, p, desc) -> np.ndarray:
  """Units whose reference decision lies within MARGIN of a bound."""
  cands, granularity, block, scaling, group = desc
  errs = {f: ref.scaled_errors(x, f, block, scaling, group)
          for f in ("E4M3", "E5M2")}
  if granularity == "tensor":
    errs = {f: (s.sum(), c.sum()) for f, (s, c) in errs.items()}
  mean = {f: s / np.maximum(c, 1) for f, (s, c) in errs.items()}
  near = np.zeros(np.shape(mean["E4M3"]), bool)
  for fmt, rule in cands:
    if rule[0] == "error_below":
      near |= np.abs(mean[fmt] - rule[1]) <= MARGIN * rule[1]
    elif rule[0] == "error_not_above":
      near |= np.abs(mean[fmt] - mean["E5M2"]) <= MARGIN * np.maximum(
          mean[fmt], mean["E5M2"])
    elif rule[0] == "dynamic_range":
      near |= True  # bounded below by the range checks of test_mor
  return near


def check(got, x, p) -> None:
  qa, deq, fq, r = got
  fmt, block, scaling, group = p["fmt"], p["block"], p["scaling"], p["group"]
  want_codes, want_scales = ref.quantize(x, fmt, block, scaling, group)
  data.assert_bits_equal(qa.scale, want_scales)
  data.assert_codes_equal(qa.data, want_codes)
  want_deq = ref.to_dtype(ref.dequantize(want_codes, want_scales, block),
                          x.dtype)
  data.assert_within_ulp(np.asarray(deq), want_deq)
  want_fq = ref.to_dtype(ref.fake_quantize(x, fmt, block, scaling, group),
                         x.dtype)
  data.assert_within_ulp(np.asarray(fq), want_fq)

  finite = np.isfinite(x.astype(np.float32))
  for name, v in (("dequantize", deq), ("fake_quantize", fq),
                  ("mor value", r.value)):
    v = np.asarray(v, np.float32)
    assert np.isfinite(v[finite]).all(), f"{name}: a finite input became inf/NaN"
  if scaling == "gam":
    amax = np.asarray(ref.scales(x, fmt, block, "fp32"))
    nonzero = amax != 1  # fp32 scales of 1: zero blocks (or amax = F)
    s = np.asarray(qa.scale)
    assert (s[nonzero] > amax[nonzero] / 2).all() and (
        s[nonzero] <= amax[nonzero]).all(), "gam bound s/2 < scale <= s"

  _, desc = recipe_of(p)
  want_value, want_choice, _ = ref.mor(x, *desc)
  choice = np.asarray(r.choice)
  differ = choice != want_choice
  if differ.any():
    assert not (differ & ~ambiguous(x, p, desc)).any(), (
        f"decisions differ: got {choice}, want {want_choice}")
  else:
    data.assert_within_ulp(np.asarray(r.value),
                           ref.to_dtype(want_value, x.dtype))
  for leaf in (r.stats.error, r.stats.chosen_error, r.stats.dynamic_range,
               r.stats.fraction_blocks, r.stats.amax):
    assert np.isfinite(np.asarray(leaf)).all(), "a statistic is not finite"


@pytest.mark.parametrize("impl", cases.IMPLS)
def test_fuzz_against_the_reference(impl, capsys):
  n = int(os.environ.get(ENV_VAR, DEFAULT[impl.name]))
  pool = static_configs(pool_size(n))
  compiled = {}  # configuration index -> executable
  count = 0

  @hypothesis.settings(derandomize=True, max_examples=n, deadline=None,
                       database=None, print_blob=True,
                       suppress_health_check=list(hypothesis.HealthCheck))
  @hypothesis.given(problems(pool))
  def run(p):
    nonlocal count
    x = tensor(p)
    if p["config"] not in compiled:
      # Pallas declines the partitions it cannot tile (XLA runs them).
      tileable = impl.kernels and kq.plan(
          _partition.Partition.build(x.shape, p["block"]),
          impl.config.quantize) is not None
      compiled[p["config"]] = impl.compile(run_all(p), x, kernels=tileable)
    check(compiled[p["config"]](x), x, p)
    count += 1

  run()
  with capsys.disabled():
    print(f"\nfuzz[{impl.name}]: {count} cases against the reference, "
          f"{len(compiled)} static configurations compiled")
