"""Report: the summary table and the plots of a directory of metrics files.

The table goes to the terminal, ``summary.md`` and ``summary.csv``; each
recipe's ``mor_jax.summarize`` scalars per stats step to
``<recipe>_summary.csv``; the plots (losses against bf16, E4M3 share per
role, a heatmap of each layer's and GEMM's error) to PNG files beside them.
The plots and the CSV writer are ``mor_jax.report``'s; matplotlib is
imported only when a plot is drawn, without pyplot or a backend switch.

Losses are divided by the baseline's (``baseline``: bf16, else dense) at the
same steps. A ratio is '-' where the baseline has no loss there, a run killed
before its first training step is no baseline, and a note under the table
says why, naming the file: a silent NaN, or a ratio of losses at different
steps, would read as a result.
"""

from __future__ import annotations

import csv
import pathlib
from collections.abc import Sequence

import numpy as np
from mor_jax import report as mor_report

from .config import PLAIN
from .metrics import ROLES, Run, differing_settings, load_runs, split_key
from .sharding import MESH_AXES

BASELINE = "bf16"


def baseline(runs: Sequence[Run]) -> Run | None:
  """The run the others' losses are divided by: bf16's, else dense's.

  ``dense`` trains to bf16's losses bit for bit without its statistics
  (tests/test_train_lm.py), so speed runs that compare with it alone still
  get loss ratios. A run killed before its first training step has no loss
  to divide by and is passed over.
  """
  for name in (BASELINE, PLAIN):
    for r in runs:
      if r.recipe == name and r.train["step"].size:
        return r
  return None


def _losses_at(rows: dict[str, np.ndarray],
               steps: np.ndarray) -> np.ndarray | None:
  """``rows``' losses at ``steps``; None unless it has one at each."""
  common, _, j = np.intersect1d(steps, rows["step"], return_indices=True)
  return rows["loss"][j] if steps.size and common.size == steps.size else None


def loss_ratios(run: Run, base: Run) -> tuple[float | None, float | None]:
  """``run``'s final training and validation losses over ``base``'s at the
  same steps; None where ``base`` has no loss there (stopped or killed
  before them), since losses of different steps are no comparison."""
  train = _losses_at(base.train, run.final_train_steps())
  val = _losses_at(base.val, run.val["step"][-1:])
  return (None if train is None else run.final_train_loss() / np.mean(train),
          None if val is None else run.final_val_loss() / val[0])


def baseline_note(runs: Sequence[Run]) -> str | None:
  """Why ratio cells of runs with losses say '-'; None if none does."""
  base = baseline(runs)
  if base is None:
    killed = [str(r.path) for r in runs if r.recipe in (BASELINE, PLAIN)]
    if killed:
      return (f"No ratios to {BASELINE}: {', '.join(killed)} holds no "
              "training step (its run was killed before it logged one); "
              "train it again, or delete it.")
    return f"No ratios: no {BASELINE} or {PLAIN} run to divide by."
  missing = [r.recipe for r in runs
             if r.train["step"].size and None in loss_ratios(r, base)]
  if not missing:
    return None
  return (f"Ratios to {base.recipe}: '-' for {', '.join(missing)}: "
          f"{base.path} has no loss at the "
          "steps of their final losses (its last training step is "
          f"{int(base.train['step'][-1])}, its last validation "
          f"{int(base.val['step'][-1])}), and losses of different steps are "
          "not compared; finish that run (the same command resumes one "
          "stopped by --time-limit).")


def summary_rows(runs: Sequence[Run]) -> list[dict[str, str]]:
  """One row of formatted cells per run; '-' where there is no number."""
  base = baseline(runs)
  rows = []
  for r in runs:
    trained = r.train["step"].size > 0
    ratios = loss_ratios(r, base) if base else (None, None)
    share = {role: float(np.mean(v))
             for role, v in r.role_series("fraction_e4m3").items()}
    row = {
        "recipe": r.recipe,
        "steps": f"{r.steps_done}/{r.header['config']['steps']}",
        "train loss": f"{r.final_train_loss():.4f}" if trained else "-",
        "train / bf16": "-" if ratios[0] is None else f"{ratios[0]:.4f}",
        "val loss": (f"{r.final_val_loss():.4f}" if r.val["step"].size
                     else "-"),
        "val / bf16": "-" if ratios[1] is None else f"{ratios[1]:.4f}",
    }
    for role in ROLES:
      row[f"E4M3 {role}"] = f"{share[role]:.1%}" if role in share else "-"
    # Every role has the same number of quantizations (two GEMMs per layer),
    # so the mean of the three is the share of all of them.
    row["E4M3 all"] = (f"{np.mean(list(share.values())):.1%}"
                       if len(share) == len(ROLES) else "-")
    row["ms/step"] = f"{r.step_ms():.1f}" if trained else "-"
    row["tokens/s"] = f"{r.tokens_per_s():,.0f}" if trained else "-"
    rows.append(row)
  return rows


def _smooth(x: np.ndarray, n: int) -> np.ndarray:
  """Trailing moving average over n points (fewer at the start)."""
  c = np.cumsum(np.insert(x, 0, 0.0))
  idx = np.arange(1, x.size + 1)
  lo = np.maximum(idx - n, 0)
  return (c[idx] - c[lo]) / (idx - lo)


def plot_losses(runs: Sequence[Run], path: pathlib.Path) -> None:
  """Training (smoothed) and validation loss, and their ratio to bf16."""
  base = baseline(runs)
  fig = mor_report.figure(figsize=(12, 7))
  axes = fig.subplots(2, 2, sharex="col", height_ratios=(2, 1), squeeze=False)
  colors = mor_report.label_colors([r.recipe for r in runs])
  for r in runs:
    n = max(1, r.steps_done // 50)
    train = _smooth(r.train["loss"], n)
    style = dict(label=r.recipe, color=colors[r.recipe])
    axes[0, 0].plot(r.train["step"], train, lw=1, **style)
    axes[0, 1].plot(r.val["step"], r.val["loss"], "o-", ms=3, **style)
    if base is not None and r is not base:
      common, i, j = np.intersect1d(r.train["step"], base.train["step"],
                                    return_indices=True)
      axes[1, 0].plot(common, train[i] / _smooth(base.train["loss"], n)[j],
                      lw=1, **style)
      common, i, j = np.intersect1d(r.val["step"], base.val["step"],
                                    return_indices=True)
      axes[1, 1].plot(common, r.val["loss"][i] / base.val["loss"][j], "o-",
                      ms=3, **style)
  axes[0, 0].set_title("training loss (moving average)")
  axes[0, 1].set_title("validation loss")
  for ax in axes[0]:
    ax.set_ylabel("loss (nats/byte)")
    ax.set_yscale("log")
    ax.legend()
  for ax in axes[1]:
    ax.axhline(1.0, color="k", lw=0.5)
    ax.axhspan(0.995, 1.005, color="g", alpha=0.1, label="within 0.5%")
    ax.set_ylabel(f"ratio to {base.recipe if base else BASELINE}")
    ax.set_xlabel("step")
    ax.legend(fontsize="small")
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def plot_fp8_share(runs: Sequence[Run], path: pathlib.Path) -> None:
  """Share of quantizations in E4M3 per role over steps, one line per recipe."""
  mor_report.plot_fp8_share({r.recipe: (r.stats_steps, r.stats) for r in runs},
                            path)


def plot_error_heatmap(run: Run, path: pathlib.Path) -> bool:
  """Relative error of E4M3 per layer and GEMM, per role, over steps.

  Returns:
    False (and writes nothing) if the recipe has no E4M3 candidate.
  """
  return mor_report.plot_error_heatmap(
      run.stats_steps, run.stats, path, title=run.recipe,
      row_label=_row_label, row_order=_layer_order)


def _layer_parts(layer: str) -> tuple[int, str]:
  """'blocks/attn/qkv/3' -> (3, 'qkv'): the block index (0 if none) and name.

  Under ``nn.scan`` the block index follows the module path.
  """
  parts = layer.split("/")
  block = next((int(p) for p in parts if p.isdigit()), 0)
  name = next((p for p in reversed(parts) if not p.isdigit()), layer)
  return block, name


def _row_label(key: str) -> str:
  """A heatmap row: '3 qkv fprop' (block, layer, GEMM)."""
  layer, gemm, _, _ = split_key(key)
  block, name = _layer_parts(layer)
  return f"{block} {name} {gemm}"


def _layer_order(key: str) -> tuple:
  """Sort by block number (numerically), then position in the block, then GEMM."""
  layer, gemm, _, _ = split_key(key)
  order = ("qkv", "out", "fc1", "fc2")
  block, name = _layer_parts(layer)
  return (block, order.index(name) if name in order else len(order), layer,
          ("fprop", "dgrad", "wgrad").index(gemm))


def write_summary_csv(run: Run, path: pathlib.Path) -> None:
  """``path``: a row per stats step of ``mor_jax.summarize``'s scalars."""
  path.unlink(missing_ok=True)
  with mor_report.CsvWriter(path) as w:
    for step, summary in zip(run.stats_steps, run.summaries):
      w.write(step, summary)


def _per_value(values: Sequence[object], runs: Sequence[Run]) -> str:
  """'64 (bf16, fp8_tensor), 32 (mor_channel)': each value, then its runs."""
  recipes: dict[str, list[str]] = {}
  for v, r in zip(values, runs):
    recipes.setdefault(str(v), []).append(r.recipe)
  return ", ".join(f"{v} ({', '.join(names)})" for v, names in recipes.items())


def report(directory: pathlib.Path) -> str:
  """Writes the summary and the plots for the runs in ``directory``.

  Returns:
    The summary (Markdown), also written to ``summary.md``.
  """
  runs = load_runs(directory)
  rows = summary_rows(runs)
  with open(directory / "summary.csv", "w", newline="",
            encoding="utf-8") as f:
    w = csv.DictWriter(f, fieldnames=list(rows[0]))
    w.writeheader()
    w.writerows(rows)
  h = runs[0].header
  corpora = {r.header["corpus"]["fingerprint"] for r in runs}
  settings = differing_settings(runs)
  notes = [
      # The first run's, which the others' may not be (the warning below).
      f"Model{f' (of {runs[0].recipe})' if settings else ''}: "
      f"{h['params'] / 1e6:.1f}M parameters, {h['config']['layers']} "
      f"layers, d_model {h['config']['d_model']}; "
      f"{h['tokens_per_step']:,} tokens/step; corpus {h['corpus']['root']} "
      f"(Python {h['corpus']['python']}, fingerprint "
      f"{h['corpus']['fingerprint']}); {h['versions']['device']}, jax "
      f"{h['versions']['jax']}.",
      "train loss: mean over the last 5% of steps; val loss: at the last "
      "step, with the recipe's own forward pass; / bf16: against the bf16 "
      "run, or the dense run (the same losses) where there is none or it "
      "has no training step, at the same steps ('-' where it has no loss "
      "there); E4M3: share of "
      "quantizations (tensors, or blocks for sub-tensor recipes) in E4M3 "
      "over all layers, both GEMMs of the role and every logged step; "
      "E4M3 all: the same over all three roles (six quantizations per "
      "layer); ms/step: median, excluding compilation and validation; "
      "tokens/s: at that median.",
  ]
  note = baseline_note(runs)
  if note:
    notes.append(note)
  meshes = {r.recipe: r.mesh for r in runs}
  if set(meshes.values()) != {"none"}:
    notes.append("Mesh (" + ", ".join(MESH_AXES) + "): " + "; ".join(
        f"{k} {v} over {runs[i].header['versions']['devices']} devices"
        if v != "none" else f"{k} one device"
        for i, (k, v) in enumerate(meshes.items())) + ".")
  if len(corpora) > 1:
    notes.append(f"WARNING: the runs used different corpora {sorted(corpora)};"
                 " their losses are not comparable.")
  if settings:
    notes.append(
        "WARNING: the runs used different settings (" + "; ".join(
            f"{k}: {_per_value(values, runs)}" for k, values in
            settings.items()) + "); their losses are not comparable.")
  text = mor_report.markdown_table(rows) + "\n\n" + "\n\n".join(notes) + "\n"
  (directory / "summary.md").write_text(text)
  for r in runs:
    write_summary_csv(r, directory / f"{r.recipe}_summary.csv")
  plot_losses(runs, directory / "loss.png")
  plot_fp8_share(runs, directory / "fp8_share.png")
  for r in runs:
    plot_error_heatmap(r, directory / f"error_heatmap_{r.recipe}.png")
  return text
