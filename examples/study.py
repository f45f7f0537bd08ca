"""A paired multi-seed study: MoR recipes against BF16 over several seeds.

For each seed every recipe trains from the same initial parameters on the
same batches (``examples/train_lm.py``'s training), so the ratio of a
recipe's final validation loss to BF16's with the same seed isolates its
quantization. The table gives, per recipe, each seed's ratio, their mean,
standard error and Student-t 95% interval, whether the recipe is within
0.5% of BF16 and how sure, and the share of E4M3 per role.

Runs go to ``<out>/seed<k>/<recipe>.jsonl``, seed after seed. Finished runs
are skipped, and a run stopped by ``--time-limit`` resumes from its
checkpoint, so the same command continues an interrupted study. One process
writes to an ``--out`` at a time (a second is refused before it trains):
processes in parallel take an ``--out`` each, e.g. one per seed, whose
``seed<k>`` directories ``--analyse`` can then read gathered in one.
``--analyse DIR`` only (re)writes the table (``study.md``, ``study.csv``,
``study.json``), the plot ``study.png`` and each seed's report.

Run:
  python examples/study.py --preset demo --seeds 0,1 --recipes bf16,mor_channel
  python examples/study.py --preset gpu --seeds 0,1,2,3 \\
      --recipes bf16,mor_channel,mor_sub2 --out DIR --time-limit 540
  python examples/study.py --analyse DIR
"""

from __future__ import annotations

import argparse
import math
import pathlib
import sys
import time
from collections.abc import Sequence

if not __package__:  # Run as a script: make the repository root importable.
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax

from examples.lm.config import (PRESETS, add_config_flags, check_backend,
                                config_from_args, recipe_list)
from examples.lm.data import load_corpus
from examples.lm.metrics import lock_directory
from examples.lm.report import BASELINE
from examples.lm.study import analyse, run_study
# pylint: enable=g-import-not-at-top,wrong-import-position


def _seed_list(text: str) -> tuple[int, ...]:
  try:
    seeds = tuple(int(s) for s in text.split(",") if s.strip())
  except ValueError:
    seeds = ()
  if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
    raise argparse.ArgumentTypeError(
        f"--seeds must be distinct integers >= 0, comma-separated; got "
        f"{text!r}.")
  return seeds


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(
      prog="study.py", description=__doc__.rsplit("\n\nRun:", 1)[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog="Run:" + __doc__.rsplit("\n\nRun:", 1)[1] + "\nRecipes, "
      "ablations (RECIPE+ROLE=OTHER) and settings as for train_lm.py "
      "--help.")
  parser.add_argument("--preset", choices=list(PRESETS), default="demo",
                      help="settings and recipes to start from (default demo)")
  parser.add_argument("--seeds", type=_seed_list, default=(0, 1, 2, 3),
                      help="comma-separated seeds (default 0,1,2,3)")
  parser.add_argument("--recipes", type=recipe_list, default=None,
                      help=f"comma-separated recipes or ablations, or 'all' "
                      f"(default: the preset's); {BASELINE} is added first "
                      "if missing")
  parser.add_argument("--out", type=pathlib.Path, default=None,
                      help="output directory (default runs/study/<preset>)")
  parser.add_argument("--analyse", type=pathlib.Path, metavar="DIR",
                      help="only write the table and plots of DIR/seed*/")
  parser.add_argument("--time-limit", type=float, default=math.inf,
                      metavar="SECONDS",
                      help="checkpoint and stop once this much time has "
                      "passed since start; the same command continues")
  parser.add_argument("--no-progress", action="store_true",
                      help="no progress bar")
  add_config_flags(parser)
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
  start = time.monotonic()
  args = parse_args(argv)
  if args.analyse is not None:
    print(analyse(args.analyse))
    print(f"table, plots and per-seed reports in {args.analyse}")
    return
  if args.seed is not None:
    raise SystemExit("error: a study takes --seeds, not --seed.")
  cfg = config_from_args(args)
  try:
    check_backend(cfg, jax.default_backend())
  except ValueError as e:
    raise SystemExit(f"error: {e}") from None
  recipes = args.recipes or PRESETS[args.preset][1]
  recipes = tuple(dict.fromkeys((BASELINE,) + tuple(recipes)))
  out = args.out or pathlib.Path("runs", "study", args.preset)
  corpus = load_corpus(cfg.val_fraction)
  print(f"study: seeds {','.join(map(str, args.seeds))} x recipes "
        f"{','.join(recipes)} -> {out}; corpus fingerprint "
        f"{corpus.fingerprint}")
  if run_study(cfg, args.seeds, recipes, corpus, out,
               deadline=start + args.time_limit,
               progress=not args.no_progress):
    print()
    with lock_directory(out):  # As run_study did: one writer in out.
      print(analyse(out))
    print(f"table, plots and per-seed reports in {out}")


if __name__ == "__main__":
  main()
