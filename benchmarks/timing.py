"""The timing both benchmarks use."""

from __future__ import annotations

import statistics
import time

import jax


def timed(fn, *args, iters: int = 10, rounds: int = 5) -> float:
  """Seconds per call of a jitted ``fn``: the median of ``rounds`` rounds.

  Each round queues ``iters`` calls back to back and waits for them once, so
  that host dispatch overlaps the device's work as in a training step; a
  first call compiles and warms up.
  """
  jax.block_until_ready(fn(*args))
  out = []
  for _ in range(rounds):
    t0 = time.perf_counter()
    for _ in range(iters):
      r = fn(*args)
    jax.block_until_ready(r)
    out.append((time.perf_counter() - t0) / iters)
  return statistics.median(out)
