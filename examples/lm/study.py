"""The paired multi-seed study: each recipe against BF16 over several seeds.

A seed fixes the initial parameters and the batches (``train.train_recipe``),
so for one seed BF16 and every other recipe see the same start and the same
data and differ only in quantization; the ratio of a recipe's final
validation loss to the same seed's BF16 loss cancels most of what the seed
moves. Over n seeds the study reports that ratio's mean, its standard error
and a Student-t 95% interval, and whether the recipe is within 0.5% of BF16
and how sure that is.

Layout: ``<out>/seed<k>/<recipe>.jsonl``, each ``seed<k>`` a directory of
``examples/train_lm.py --out`` (so ``train_lm.py --report`` reads it too).
``run_study`` skips the runs already complete, so the same command continues
a study that a time limit stopped, seed by seed, and holds ``<out>`` while it
runs, so that a second process there is refused. ``analyse`` writes
``study.md``, ``study.csv``, ``study.json`` and ``study.png`` to ``<out>``
and each seed's report (``report.report``: losses, E4M3 shares, heatmaps)
to its directory.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import pathlib
import re
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from mor_jax import report as mor_report

from .config import Config
from .data import Corpus
from .metrics import (ROLES, Run, load_files, lock_directory, metrics_files,
                      read_jsonl, recipe_of, recipe_order)
from .report import BASELINE, report
from .train import train_recipe

TOLERANCE = 0.005  # The paper's claim: within 0.5% of BF16's loss.
LEVEL = 0.95  # Of the two-sided Student-t interval of the mean ratio.
_SEED_DIR = re.compile(r"seed(\d+)")


def seed_dir(out: pathlib.Path, seed: int) -> pathlib.Path:
  return out / f"seed{seed}"


# ----------------------------------------------------------------------------
# Statistics.


def t_quantile(p: float, df: int) -> float:
  """Student's t quantile for p > 0.5 with ``df`` degrees of freedom.

  Bisection on the CDF, P(T <= t) = 1 - I_x(df/2, 1/2) / 2 with
  x = df / (df + t^2) for t >= 0 (I the regularized incomplete beta
  function), as scipy is not a dependency.
  """
  if not 0.5 < p < 1 or df < 1:
    raise ValueError(f"need 0.5 < p < 1 and df >= 1, got p={p}, df={df}.")

  def cdf(t: float) -> float:
    return 1 - 0.5 * float(jax.scipy.special.betainc(df / 2, 0.5,
                                                     df / (df + t * t)))
  lo, hi = 0.0, 1.0
  while cdf(hi) < p:
    lo, hi = hi, 2 * hi
  for _ in range(50):
    mid = (lo + hi) / 2
    lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
  return (lo + hi) / 2


@dataclasses.dataclass(frozen=True)
class Estimate:
  """The mean of n values with its standard error and t interval.

  With one value, the standard error and the interval are NaN.
  """

  n: int
  mean: float
  stderr: float
  low: float
  high: float

  @classmethod
  def of(cls, values: Sequence[float], level: float = LEVEL) -> Estimate:
    x = np.asarray(values, np.float64)
    if x.size < 2:
      return cls(x.size, float(np.mean(x)) if x.size else math.nan,
                 math.nan, math.nan, math.nan)
    se = float(np.std(x, ddof=1) / math.sqrt(x.size))
    half = t_quantile((1 + level) / 2, x.size - 1) * se
    m = float(np.mean(x))
    return cls(x.size, m, se, m - half, m + half)

  def verdict(self, tolerance: float = TOLERANCE) -> str:
    """Whether the ratio is within ``1 + tolerance``, and how sure.

    "yes": the interval's upper end is within; "mean only": the mean is,
    the upper end not; "mean above": the mean is above, the lower end not;
    "no": the whole interval is above; "n/a": fewer than two seeds.
    """
    if self.n < 2:
      return "n/a"
    bound = 1 + tolerance
    if self.high <= bound:
      return "yes"
    if self.mean <= bound:
      return "mean only"
    return "mean above" if self.low <= bound else "no"


# ----------------------------------------------------------------------------
# Running.


def is_complete(path: pathlib.Path, cfg: Config, corpus: Corpus) -> bool:
  """Whether ``path`` holds a finished run of ``cfg`` on ``corpus``.

  Raises:
    SystemExit: if ``path`` holds a run of other settings (another study's
      file, which training would overwrite).
  """
  if not path.exists():
    return False
  rows = read_jsonl(path)
  if not rows:
    return False
  old = {"config": rows[0].get("config"), "corpus": rows[0].get("corpus")}
  new = {"config": dataclasses.asdict(cfg), "corpus": corpus.describe()}
  if old != new:
    raise SystemExit(
        f"{path} holds a run with other settings than this study's; use "
        f"another --out or delete it.\n old: {old}\n new: {new}")
  return rows[-1]["kind"] == "done"


def run_study(cfg: Config, seeds: Sequence[int], recipes: Sequence[str],
              corpus: Corpus, out: pathlib.Path, *,
              deadline: float = math.inf, progress: bool = True,
              say: Callable[..., None] = print) -> bool:
  """Trains every recipe for every seed, seed by seed, skipping finished runs.

  A run stopped at ``deadline`` leaves its checkpoint; the same call later
  resumes it (``train_recipe``) and goes on. Throughout, it holds ``out``
  (``lock_directory``), not only the seeds' directories: ``analyse`` after
  it reads every seed's files and writes to ``out`` and to each seed's
  directory, so a second study there, even with other seeds, would race
  with it. It holds each seed's directory as well, a ``train_lm.py --out``
  that a ``train_lm.py`` run would hold.

  Returns:
    True if every run is complete, False if it stopped at the deadline.

  Raises:
    SystemExit: before training anything, if another process holds ``out``
      or one of its seeds' directories.
  """
  with contextlib.ExitStack() as held:
    held.enter_context(lock_directory(out))
    for seed in seeds:
      held.enter_context(lock_directory(seed_dir(out, seed)))
    for seed in seeds:
      seeded = dataclasses.replace(cfg, seed=seed)
      directory = seed_dir(out, seed)
      for recipe in recipes:
        if is_complete(directory / f"{recipe}.jsonl", seeded, corpus):
          say(f"seed {seed} {recipe}: complete, skipped")
          continue
        if not train_recipe(recipe, seeded, corpus, directory,
                            deadline=deadline, progress=progress):
          say(f"stopped during seed {seed} {recipe}; run the same command "
              "again to continue.")
          return False
  return True


# ----------------------------------------------------------------------------
# Analysis.


def e4m3_shares(run: Run) -> dict[str, float]:
  """Per role, the share of quantizations in E4M3 over every logged step."""
  return {role: float(np.mean(v))
          for role, v in run.role_series("fraction_e4m3").items()}


def _seed_runs(out: pathlib.Path) -> dict[int, dict[str, Run]]:
  """{seed: {recipe: Run}} of the runs under ``out/seed<k>`` (``*.jsonl``,
  or ``*.jsonl.gz`` as committed results are)."""
  seeds = {}
  for d in out.iterdir():
    m = _SEED_DIR.fullmatch(d.name)
    if m and d.is_dir():
      runs = load_files(metrics_files(d))
      seeds[int(m.group(1))] = {r.recipe: r for r in runs}
  return dict(sorted(seeds.items()))


def study(out: pathlib.Path, tolerance: float = TOLERANCE,
          level: float = LEVEL) -> dict[str, Any]:
  """The study's numbers from the runs under ``out`` (``study.json``'s content).

  Only finished runs count, and for each recipe only the seeds whose BF16
  run finished too (the pairs).
  """
  by_seed = _seed_runs(out)
  done = {s: {k: r for k, r in runs.items() if r.end.get("kind") == "done"}
          for s, runs in by_seed.items()}
  # Unfinished runs, and empty files (killed before their header).
  incomplete = [f"seed{s}/{k}" for s in by_seed
                for k in sorted({recipe_of(p) for p in
                                 metrics_files(seed_dir(out, s))},
                                key=recipe_order)
                if k not in done[s]]
  recipes = sorted({k for runs in done.values() for k in runs},
                   key=recipe_order)
  if BASELINE not in recipes:
    raise SystemExit(f"error: no finished {BASELINE} run under {out}/seed*/; "
                     "the study needs it in every seed.")
  result: dict[str, Any] = {}
  for recipe in recipes:
    per_seed = {}
    for s, runs in done.items():
      if recipe in runs and BASELINE in runs:
        val, base = runs[recipe].final_val_loss(), runs[BASELINE].final_val_loss()
        per_seed[s] = {"val_loss": val, "bf16_val_loss": base,
                       "ratio": val / base, "e4m3": e4m3_shares(runs[recipe]),
                       "train_ratio": (runs[recipe].final_train_loss()
                                       / runs[BASELINE].final_train_loss())}
    est = Estimate.of([v["ratio"] for v in per_seed.values()], level)
    train = Estimate.of([v["train_ratio"] for v in per_seed.values()], level)
    shares = {role: float(np.mean([v["e4m3"][role] for v in per_seed.values()]))
              for role in ROLES if all(role in v["e4m3"]
                                       for v in per_seed.values())}
    result[recipe] = {
        "seeds": per_seed, "mean_ratio": est.mean, "stderr": est.stderr,
        "interval": [est.low, est.high], "verdict": est.verdict(tolerance),
        # Second evidence, from every step's batch rather than one
        # evaluation: the mean training loss over the last 5% of steps.
        "train_ratio": {"mean": train.mean, "interval": [train.low,
                                                         train.high]},
        "mean_val_loss": float(np.mean([v["val_loss"]
                                        for v in per_seed.values()])),
        "e4m3": shares}
  base_losses = [v["val_loss"] for v in result[BASELINE]["seeds"].values()]
  first = next(r[BASELINE] for r in done.values() if BASELINE in r).header
  configs = {json.dumps({k: v for k, v in r.header["config"].items()
                         if k != "seed"}, sort_keys=True)
             for runs in done.values() for r in runs.values()}
  return {
      "baseline": BASELINE, "tolerance": tolerance, "level": level,
      "recipes": result, "incomplete": incomplete,
      "bf16_seed_spread": (float(np.std(base_losses, ddof=1)
                                 / np.mean(base_losses))
                           if len(base_losses) > 1 else math.nan),
      "same_settings": len(configs) == 1,
      "config": {k: v for k, v in first["config"].items() if k != "seed"},
      "params": first["params"], "corpus": first["corpus"],
      "versions": first["versions"],
      "commands": sorted({r.header["command"] for runs in done.values()
                          for r in runs.values()}),
  }


def _nan_to_none(tree: Any) -> Any:
  """NaN (no error bar from one seed) as null: JSON has no NaN."""
  if isinstance(tree, dict):
    return {k: _nan_to_none(v) for k, v in tree.items()}
  if isinstance(tree, list):
    return [_nan_to_none(v) for v in tree]
  return None if isinstance(tree, float) and math.isnan(tree) else tree


def table_rows(numbers: dict[str, Any]) -> list[dict[str, str]]:
  """One row of formatted cells per recipe."""
  seeds = sorted({s for r in numbers["recipes"].values() for s in r["seeds"]})
  rows = []
  for recipe, r in numbers["recipes"].items():
    row = {"recipe": recipe, "seeds": str(len(r["seeds"])),
           "val loss (mean)": f"{r['mean_val_loss']:.4f}"}
    for s in seeds:
      row[f"seed {s}"] = (f"{r['seeds'][s]['ratio']:.4f}" if s in r["seeds"]
                          else "-")
    baseline = recipe == numbers["baseline"]
    lo, hi = r["interval"]
    row["mean ratio"] = "-" if baseline else f"{r['mean_ratio']:.4f}"
    row["std error"] = ("-" if baseline or math.isnan(r["stderr"])
                        else f"{r['stderr']:.4f}")
    row[f"{numbers['level']:.0%} interval"] = (
        "-" if baseline or math.isnan(lo) else f"[{lo:.4f}, {hi:.4f}]")
    row[f"within {numbers['tolerance']:.1%}"] = "-" if baseline else r["verdict"]
    t, (tlo, thi) = r["train_ratio"]["mean"], r["train_ratio"]["interval"]
    row["train ratio"] = ("-" if baseline else f"{t:.4f}" if math.isnan(tlo)
                          else f"{t:.4f} [{tlo:.4f}, {thi:.4f}]")
    for role in ROLES:
      row[f"E4M3 {role}"] = (f"{r['e4m3'][role]:.1%}" if role in r["e4m3"]
                             else "-")
    rows.append(row)
  return rows


def plot_ratios(numbers: dict[str, Any], path: pathlib.Path) -> None:
  """Each recipe's per-seed ratios to BF16, their mean and its t interval."""
  recipes = [k for k in numbers["recipes"] if k != numbers["baseline"]]
  seeds = sorted({s for r in numbers["recipes"].values() for s in r["seeds"]})
  colors = mor_report.label_colors([f"seed {s}" for s in seeds])
  fig = mor_report.figure(figsize=(max(6, 1.6 * len(recipes) + 2), 4.5))
  ax = fig.subplots()
  tol = numbers["tolerance"]
  ax.axhline(1.0, color="k", lw=0.5)
  ax.axhspan(1 - tol, 1 + tol, color="g", alpha=0.1,
             label=f"within {tol:.1%}")
  offsets = np.linspace(-0.25, 0.25, len(seeds)) if len(seeds) > 1 else [0.0]
  for i, recipe in enumerate(recipes):
    r = numbers["recipes"][recipe]
    for off, s in zip(offsets, seeds):
      if s in r["seeds"]:
        ax.plot(i + off, r["seeds"][s]["ratio"], "o", ms=4,
                color=colors[f"seed {s}"],
                label=f"seed {s}" if i == 0 else None)
    lo, hi = r["interval"]
    if not math.isnan(lo):
      ax.errorbar(i, r["mean_ratio"],
                  yerr=[[r["mean_ratio"] - lo], [hi - r["mean_ratio"]]],
                  fmt="s", color="k", ms=6, capsize=6,
                  label=(f"mean, {numbers['level']:.0%} t interval" if i == 0
                         else None))
  ax.set_xticks(range(len(recipes)), recipes, rotation=20, ha="right")
  ax.set_ylabel(f"final val loss / {numbers['baseline']} (same seed)")
  ax.set_title(f"paired study over {len(seeds)} seeds")
  ax.legend(fontsize="small")
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def analyse(out: pathlib.Path, *, seed_reports: bool = True) -> str:
  """Writes ``study.md``, ``study.csv``, ``study.json`` and ``study.png``
  to ``out``, and (``seed_reports``) each seed directory's report.

  Returns:
    The table with its notes (Markdown), as in ``study.md``.
  """
  if not out.is_dir():
    raise SystemExit(f"error: {out} is not a directory.")
  numbers = study(out)
  rows = table_rows(numbers)
  with open(out / "study.csv", "w", newline="", encoding="utf-8") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
  (out / "study.json").write_text(
      json.dumps(_nan_to_none(numbers), indent=1, allow_nan=False) + "\n")
  c, v = numbers["config"], numbers["versions"]
  tol, level = numbers["tolerance"], numbers["level"]
  notes = [
      f"Model: {numbers['params'] / 1e6:.1f}M parameters, {c['layers']} "
      f"layers, d_model {c['d_model']}, {c['steps']} steps of "
      f"{c['batch'] * c['seq_len']:,} tokens, lr {c['lr']:g}"
      + (f", {c['outlier_channels']} outlier channels x{c['outlier_scale']:g}"
         if c.get("outlier_channels") else "")
      + f"; corpus fingerprint {numbers['corpus']['fingerprint']}; "
      f"{v['device']}, jax {v['jax']}.",
      f"seed k: final validation loss / {numbers['baseline']}'s with seed k "
      "(same initial parameters, same batches). mean ratio, std error: over "
      f"the seeds; {level:.0%} interval: Student t with n-1 degrees of "
      f"freedom. within {tol:.1%}: yes = the interval's upper end <= "
      f"{1 + tol:g}; mean only = the mean is, the upper end not (more seeds "
      f"would tell); mean above = the mean is above {1 + tol:g}, the lower "
      "end not; no = the whole interval is above. E4M3: share of "
      "quantizations (tensors, or blocks for sub-tensor recipes) in E4M3, "
      "over layers, both GEMMs of the role, logged steps and seeds. train "
      "ratio: the same paired ratio of the mean training loss over the last "
      f"5% of steps, its mean and {level:.0%} interval.",
      f"{numbers['baseline']} itself: seed-to-seed standard deviation of the "
      f"final val loss {numbers['bf16_seed_spread']:.2%} of its mean.",
  ]
  if numbers["incomplete"]:
    notes.append("Not finished, left out: "
                 + ", ".join(numbers["incomplete"]) + ".")
  if not numbers["same_settings"]:
    notes.append("WARNING: the runs differ in settings other than the seed.")
  text = mor_report.markdown_table(rows) + "\n\n" + "\n\n".join(notes) + "\n"
  (out / "study.md").write_text(text)
  plot_ratios(numbers, out / "study.png")
  if seed_reports:
    for s, runs in _seed_runs(out).items():
      if runs:
        report(seed_dir(out, s))
  return text
