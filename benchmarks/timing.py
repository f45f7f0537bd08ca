"""The timing both benchmarks use."""

from __future__ import annotations

import contextlib
import statistics
import time

import jax


def timed(fn, *args, iters: int = 10, rounds: int = 5, meter=None) -> float:
  """Seconds per call of a jitted ``fn``: the median of ``rounds`` rounds.

  Each round queues ``iters`` calls back to back and waits for them once, so
  that host dispatch overlaps the device's work as in a training step; a
  first call compiles and warms up. ``meter`` (benchmarks/power.py's
  ``Meter``), if given, measures the timed rounds.
  """
  jax.block_until_ready(fn(*args))
  return statistics.median(_per_call(fn, args, iters, meter)
                           for _ in range(rounds))


def _per_call(fn, args, iters: int, meter=None) -> float:
  """Seconds per call of ``iters`` calls queued back to back, waited once
  (inside one of ``meter``'s windows, if given)."""
  with meter.window(iters) if meter else contextlib.nullcontext():
    t0 = time.perf_counter()
    for _ in range(iters):
      r = fn(*args)
    jax.block_until_ready(r)
    return (time.perf_counter() - t0) / iters


def timed_interleaved(cases: dict, *, iters: int = 3, rounds: int = 15
                      ) -> dict:
  """Per case (name: (jitted fn, args)): (seconds per call, its ratio to the
  first case), both medians over ``rounds`` rounds.

  Each round runs every case in turns, ``iters`` queued calls untimed and
  then ``iters`` timed, so drift of the device (clocks, temperature)
  between cases cancels in the per-round ratios: differences of a few
  percent, which separate runs of ``timed`` do not resolve, are measured
  side by side. The untimed calls let the clocks settle to the case's own
  load: on the H200, without them, the case timed right after nn.Dense's
  BF16 step ran 2-4% slower, whichever case it was (docs/benchmarks.md,
  seventeenth session). With them the case timed last in each round still
  ran 1.7-3% slower than the same code timed earlier (eighteenth session),
  so each round starts one case further on: when the rounds are a
  multiple of the cases, every case takes every place equally often.
  """
  for fn, args in cases.values():
    jax.block_until_ready(fn(*args))  # compile and warm up
  times = {name: [] for name in cases}
  names = list(cases)
  for r in range(rounds):
    for name in names[r % len(names):] + names[:r % len(names)]:
      fn, args = cases[name]
      _per_call(fn, args, iters)
      times[name].append(_per_call(fn, args, iters))
  first = times[next(iter(cases))]
  return {name: (statistics.median(t),
                 statistics.median(a / b for a, b in zip(t, first)))
          for name, t in times.items()}
