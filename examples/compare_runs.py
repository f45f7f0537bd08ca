"""Compares two runs of examples/train_lm.py: losses, every MoR decision, speed.

Run: python examples/compare_runs.py ONE.jsonl[.gz] OTHER.jsonl[.gz]
 or: python -m examples.compare_runs ONE.jsonl[.gz] OTHER.jsonl[.gz]

Meant for a sharded run against the one-device run of the same recipe, seed
and global batch: losses agree up to the order of sums, decisions exactly.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

if not __package__:  # Run as a script: make the repository root importable.
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

# pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np

from examples.lm.metrics import EmptyRunError, Run
# pylint: enable=g-import-not-at-top,wrong-import-position


def compare(one: Run, other: Run) -> dict[str, float | int | None]:
  """Differences between two runs over the steps both ran.

  ``first_differing_step`` is the first logged step at which some decision
  differs (None if none does), and ``train_loss_max_rel_diff_before`` the
  losses' largest difference over the steps before it: where the runs part,
  and how far apart they had drifted by then.
  """
  n = min(one.train["loss"].size, other.train["loss"].size)
  v = min(one.val["loss"].size, other.val["loss"].size)
  m = min(one.stats_steps.size, other.stats_steps.size)
  # A decision (one quantization's choice) logs one fraction per candidate.
  decisions: dict[str, np.ndarray] = {}
  for k in one.stats:
    if "/fraction_" in k:
      name = k.rsplit("/fraction_", 1)[0]
      ne = one.stats[k][:m] != other.stats.get(k, np.full(m, np.nan))[:m]
      decisions[name] = decisions.get(name, False) | ne
  unequal = np.array(list(decisions.values())).reshape(-1, m)  # [decision, step]
  differs = unequal.any(axis=0)
  first = int(one.stats_steps[np.argmax(differs)]) if differs.any() else None
  rel = lambda a, b: float(np.max(np.abs(a - b) / np.abs(b))) if a.size else 0.0  # noqa: E731
  before = n if first is None else min(n, first)
  return {
      "steps": n,
      "train_loss_max_rel_diff": rel(other.train["loss"][:n],
                                     one.train["loss"][:n]),
      "val_loss_max_rel_diff": rel(other.val["loss"][:v], one.val["loss"][:v]),
      "decisions_compared": unequal.size,
      "decisions_differing": int(unequal.sum()),
      "first_differing_step": first,
      "train_loss_max_rel_diff_before": rel(other.train["loss"][:before],
                                            one.train["loss"][:before]),
      "tokens_per_s_ratio": other.tokens_per_s() / one.tokens_per_s(),
  }


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("one", type=pathlib.Path, help="the reference run")
  ap.add_argument("other", type=pathlib.Path, help="the run compared with it")
  args = ap.parse_args(argv)
  try:
    one, other = Run.load(args.one), Run.load(args.other)
  except EmptyRunError as e:
    raise SystemExit(f"error: {e}") from None
  print(f"{args.one}: mesh {one.mesh}, {one.step_ms():.1f} ms/step, "
        f"{one.tokens_per_s():,.0f} tokens/s")
  print(f"{args.other}: mesh {other.mesh}, {other.step_ms():.1f} ms/step, "
        f"{other.tokens_per_s():,.0f} tokens/s")
  for k, val in compare(one, other).items():
    print(f"{k}: {val:.3g}" if isinstance(val, float) else f"{k}: {val}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
