"""Compares two runs of examples/train_lm.py: losses, every MoR decision, speed.

Run: python examples/compare_runs.py ONE.jsonl[.gz] OTHER.jsonl[.gz]
 or: python -m examples.compare_runs ONE.jsonl[.gz] OTHER.jsonl[.gz]

Meant for a sharded run against the one-device run of the same recipe, seed
and global batch: losses agree up to the order of sums, decisions exactly.
Rows are matched by step: only the steps both runs logged are compared, and
a note names the rows left out (runs logged with other --stats-every or
--eval-every, or one stopped early).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

if not __package__:  # Run as a script: make the repository root importable.
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

# pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np

from examples.lm.metrics import Run, differing_settings
# pylint: enable=g-import-not-at-top,wrong-import-position


def _rel(a: np.ndarray, b: np.ndarray) -> float | None:
  """The largest relative difference of a from b; None over no step."""
  return float(np.max(np.abs(a - b) / np.abs(b))) if a.size else None


def _common(one: np.ndarray, other: np.ndarray):
  """The steps both runs logged, and their rows' indices in each."""
  return np.intersect1d(one, other, return_indices=True)


def compare(one: Run, other: Run) -> dict[str, float | int | None]:
  """Differences between two runs at the steps both logged.

  Rows are matched by step, not by position: runs logged with other
  ``--stats-every`` or ``--eval-every``, or one stopped early, are compared
  where both have a row (``unmatched`` lists the others). ``steps``,
  ``val_steps`` and ``stats_steps`` count the steps compared; a difference
  over no step is None. ``first_differing_step`` is the first of them at
  which some decision differs (None if none does), and
  ``train_loss_max_rel_diff_before`` the losses' largest difference over the
  steps before it: where the runs part, and how far apart they had drifted.

  Raises:
    ValueError: if the runs have no training step in common.
  """
  steps, i, j = _common(one.train["step"], other.train["step"])
  if not steps.size:
    raise ValueError("the runs have no training step in common; nothing to "
                     "compare.")
  loss, other_loss = one.train["loss"][i], other.train["loss"][j]
  val_steps, vi, vj = _common(one.val["step"], other.val["step"])
  stats_steps, si, sj = _common(one.stats_steps, other.stats_steps)
  m = stats_steps.size
  # A decision (one quantization's choice) logs one fraction per candidate.
  decisions: dict[str, np.ndarray] = {}
  for k in one.stats:
    if "/fraction_" in k:
      name = k.rsplit("/fraction_", 1)[0]
      theirs = other.stats[k][sj] if k in other.stats else np.full(m, np.nan)
      ne = one.stats[k][si] != theirs
      decisions[name] = decisions.get(name, False) | ne
  # [decision, step]
  unequal = np.array(list(decisions.values())).reshape(-1, m)
  differs = unequal.any(axis=0)
  first = int(stats_steps[np.argmax(differs)]) if differs.any() else None
  before = steps < first if first is not None else slice(None)
  return {
      "steps": steps.size,
      "val_steps": val_steps.size,
      "stats_steps": m,
      "train_loss_max_rel_diff": _rel(other_loss, loss),
      "val_loss_max_rel_diff": _rel(other.val["loss"][vj], one.val["loss"][vi]),
      "decisions_compared": unequal.size,
      "decisions_differing": int(unequal.sum()),
      "first_differing_step": first,
      "train_loss_max_rel_diff_before": _rel(other_loss[before], loss[before]),
      "tokens_per_s_ratio": other.tokens_per_s() / one.tokens_per_s(),
  }


def unmatched(one: Run, other: Run) -> dict[str, tuple[np.ndarray,
                                                       np.ndarray]]:
  """Per kind of row, the steps only ``one`` logged and those only ``other``
  logged: what ``compare`` leaves out."""
  pairs = {"train": (one.train["step"], other.train["step"]),
           "val": (one.val["step"], other.val["step"]),
           "stats": (one.stats_steps, other.stats_steps)}
  return {kind: (np.setdiff1d(a, b), np.setdiff1d(b, a))
          for kind, (a, b) in pairs.items()}


def _list_steps(steps: np.ndarray, most: int = 10) -> str:
  """'step 3', 'steps 1, 3, 5', or the first ``most`` and their number."""
  shown = ", ".join(str(int(s)) for s in steps[:most])
  if steps.size > most:
    shown += f", ... ({steps.size} in all)"
  return f"step {shown}" if steps.size == 1 else f"steps {shown}"


def differing(one: Run, other: Run) -> dict[str, tuple]:
  """What the runs should share but do not: the recipe, the corpus, and the
  settings (``differing_settings``; the mesh and the process count, which
  the comparison is for, are no settings)."""
  pairs = {"recipe": (one.recipe, other.recipe),
           "corpus": tuple(r.header.get("corpus", {}).get("fingerprint")
                           for r in (one, other))}
  pairs.update(differing_settings([one, other]))
  return {k: tuple(v) for k, v in pairs.items() if v[0] != v[1]}


def _load(ap: argparse.ArgumentParser, path: pathlib.Path) -> Run:
  """``Run.load(path)``; a one-line error instead of a traceback."""
  if path.is_dir():
    ap.error(f"{path} is a directory; expected ONE.jsonl[.gz] as written by "
             "train_lm.py --out.")
  if not path.exists():
    ap.error(f"{path} does not exist.")
  try:
    return Run.load(path)
  except ValueError as e:  # EmptyRunError, or no run log (metrics.read_jsonl).
    raise SystemExit(f"error: {e}") from None
  except OSError as e:  # Say, a *.gz file gzip cannot read.
    raise SystemExit(f"error: {path}: {e}") from None


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("one", type=pathlib.Path, help="the reference run")
  ap.add_argument("other", type=pathlib.Path, help="the run compared with it")
  args = ap.parse_args(argv)
  one, other = _load(ap, args.one), _load(ap, args.other)
  try:
    diff = compare(one, other)
  except ValueError as e:
    raise SystemExit(f"error: {args.one} and {args.other}: {e}") from None
  print(f"{args.one}: mesh {one.mesh}, {one.step_ms():.1f} ms/step, "
        f"{one.tokens_per_s():,.0f} tokens/s")
  print(f"{args.other}: mesh {other.mesh}, {other.step_ms():.1f} ms/step, "
        f"{other.tokens_per_s():,.0f} tokens/s")
  settings = differing(one, other)
  if settings:
    listed = "; ".join(f"{k}: {a} vs {b}" for k, (a, b) in settings.items())
    print(f"WARNING: the runs used different settings ({listed}); their "
          "losses and decisions are not comparable.")
  for k, val in diff.items():
    print(f"{k}: {val:.3g}" if isinstance(val, float) else f"{k}: {val}")
  for kind, only in unmatched(one, other).items():
    for path, steps, theirs in ((args.one, only[0], args.other),
                                (args.other, only[1], args.one)):
      if steps.size:
        print(f"note: left out the {kind} rows of {path} at "
              f"{_list_steps(steps)}: {theirs} has none there.")
  return 0


if __name__ == "__main__":
  sys.exit(main())
