"""Metrics files: one JSON line per event, written while training, read back.

Each recipe writes ``<out>/<recipe>.jsonl``: a "config" header, then "train"
rows (loss, learning rate, gradient norm, step time), "stats" rows (every MoR
statistic of every layer and role), "val" rows, "resume" markers and a final
"done" or "stopped" row. Committed results are gzip-compressed
(``*.jsonl.gz``). Writer and reader share this module so that the format
lives in one place; ``Run`` is what the report and ``compare_runs`` read.
``lock_directory`` keeps a second process from writing the same files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import json
import math
import os
import pathlib
import platform
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import numpy as np
from mor_jax import report as mor_report

from .config import RECIPES, parse_recipe
from .sharding import format_mesh

ROLES = mor_report.ROLES
split_key = mor_report.split_key
LOCK_FILE = ".lock"  # In each output directory, held while a process writes.


@contextlib.contextmanager
def lock_directory(directory: pathlib.Path) -> Iterator[None]:
  """Holds ``directory`` (created if missing) for this process alone.

  Two processes training one recipe into one directory (a study trains
  ``bf16`` for each seed, whatever its recipes) would interleave the lines
  of its metrics file and clobber its checkpoints. So a process that writes
  there takes an exclusive ``fcntl.flock`` on ``directory/.lock``, without
  waiting: a second one is refused before it trains anything. The operating
  system drops the lock when its process ends, however it ends, so none is
  ever left stale. Linux and macOS (``fcntl``). With several processes
  (``jax.distributed``) only process 0, the one that writes, takes it.

  Raises:
    SystemExit: if another process holds ``directory``; the message names
      it, the holder's process id and host, and what to do.
  """
  # Imported here: reading runs (report, compare_runs) works without fcntl.
  import fcntl  # pylint: disable=g-import-not-at-top
  if jax.process_index():
    yield
    return
  directory.mkdir(parents=True, exist_ok=True)
  with open(directory / LOCK_FILE, "a+", encoding="utf-8") as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      holder = f.read().strip() or "another process"
      raise SystemExit(
          f"error: {directory} is in use: {holder} is writing there (it "
          f"holds {directory / LOCK_FILE}), and two writers would interleave "
          "the lines of a metrics file. Wait for it to end, or write "
          "elsewhere: another --out (processes in parallel take one --out "
          "each).") from None
    # Who holds it, for the message above; emptied again on release.
    f.truncate(0)
    f.write(f"process {os.getpid()} on {platform.node()}\n")
    f.flush()
    try:
      yield
    finally:
      f.truncate(0)


class Writer:
  """Appends JSON lines to a recipe's metrics file (only in process 0)."""

  def __init__(self, path: pathlib.Path, mode: str):
    if jax.process_index():
      path, mode = pathlib.Path(os.devnull), "w"
    self._f = open(path, mode, encoding="utf-8")  # pylint: disable=consider-using-with

  def write(self, **row):
    self._f.write(json.dumps(row, separators=(",", ":")) + "\n")

  def flush(self):
    self._f.flush()

  def close(self):
    self._f.close()


def read_jsonl(path: pathlib.Path) -> list[dict[str, Any]]:
  """The rows of a metrics file; a last line cut off by a killed run is skipped.

  ``path`` may be gzip-compressed (``*.jsonl.gz``), as committed results are.

  Raises:
    ValueError: if the first line is not JSON (no run log at all: say, a
      summary.csv), or another but the last is not (say, two processes
      wrote the file at once); the message names file and line.
  """
  if path.name.endswith(".gz"):
    with gzip.open(path, "rt", encoding="utf-8") as f:
      lines = f.read().splitlines()
  else:
    lines = path.read_text(encoding="utf-8").splitlines()
  if not lines:  # A run killed before its header was written.
    return []
  try:
    json.loads(lines[0])
  except json.JSONDecodeError as e:
    # A header cut off by a kill is the only line, and starts as a row does.
    if len(lines) > 1 or not lines[0].startswith("{"):
      raise not_a_run_log(path, f"its first line is not a JSON row ({e.msg})"
                          f": {lines[0][:80]!r}") from None
  rows = []
  for i, line in enumerate(lines[:-1], 1):
    try:
      rows.append(json.loads(line))
    except json.JSONDecodeError as e:
      raise ValueError(
          f"{path}, line {i} of {len(lines)}: not a JSON row ({e.msg}, "
          f"column {e.colno}): {line[:80]!r}. The file is damaged (two "
          "processes writing it at once interleave their lines); delete it "
          "to train the run again.") from e
  try:
    rows.append(json.loads(lines[-1]))
  except json.JSONDecodeError:
    pass
  return rows


def not_a_run_log(path: pathlib.Path, why: str) -> ValueError:
  """The error for a file that train_lm.py did not write, saying ``why``."""
  return ValueError(f"{path} is not a train_lm.py run log: {why}; expected "
                    "ONE.jsonl[.gz] as written by --out.")


class EmptyRunError(ValueError):
  """A metrics file without a single row (see ``Run.load``)."""


@dataclasses.dataclass
class Run:
  """One recipe's metrics file, parsed."""

  recipe: str
  header: dict[str, Any]
  train: dict[str, np.ndarray]
  val: dict[str, np.ndarray]
  stats_steps: np.ndarray
  stats: dict[str, np.ndarray]
  end: dict[str, Any]
  # ``mor_jax.summarize`` of each stats row, as ``Summary.as_dict`` gives it.
  summaries: list[dict[str, Any]] = dataclasses.field(default_factory=list)
  path: pathlib.Path | None = None  # The metrics file read (``load``).

  @classmethod
  def load(cls, path: pathlib.Path) -> Run:
    """Parses a metrics file (``read_jsonl``).

    Raises:
      EmptyRunError: if the file holds no row: its run was killed before it
        wrote its header (while compiling), and there is nothing to report.
      ValueError: if it is no metrics file (``read_jsonl``), or its first
        row is no header.
    """
    rows = read_jsonl(path)
    if not rows:
      raise EmptyRunError(
          f"{path} is empty: its run was killed before it wrote its header, "
          "so it holds nothing to report. Train the recipe again (the same "
          "command) or delete the file.")
    if not isinstance(rows[0], dict) or rows[0].get("kind") != "config":
      raise not_a_run_log(path, "its first row is no \"config\" header")
    by_kind: dict[str, list[dict]] = {}
    for r in rows:
      by_kind.setdefault(r["kind"], []).append(r)
    train, val = by_kind.get("train", []), by_kind.get("val", [])
    stats = by_kind.get("stats", [])
    names = sorted(stats[0]["stats"]) if stats else []
    return cls(
        recipe=rows[0]["recipe"], header=rows[0],
        train={k: np.array([r[k] for r in train], np.float64)
               for k in ("step", "loss", "lr", "grad_norm", "step_time")},
        val={k: np.array([r[k] for r in val], np.float64)
             for k in ("step", "loss")},
        stats_steps=np.array([r["step"] for r in stats], np.int64),
        stats={n: np.array([r["stats"][n] for r in stats], np.float64)
               for n in names},
        end=(by_kind.get("done") or by_kind.get("stopped") or [{}])[-1],
        summaries=[r["summary"] for r in stats if "summary" in r],
        path=path)

  @property
  def steps_done(self) -> int:
    return int(self.train["step"][-1]) + 1 if self.train["step"].size else 0

  def final_train_steps(self) -> np.ndarray:
    """The last 5% of the steps run: at least one, if any ran."""
    return self.train["step"][-max(1, self.steps_done // 20):]

  def final_train_loss(self) -> float:
    """Mean training loss over ``final_train_steps``."""
    n = self.final_train_steps().size
    return float(np.mean(self.train["loss"][-n:])) if n else math.nan

  def final_val_loss(self) -> float:
    return float(self.val["loss"][-1]) if self.val["loss"].size else math.nan

  def role_series(self, metric: str) -> dict[str, np.ndarray]:
    """Per role: ``metric`` averaged over layers and both GEMMs, per stats step."""
    return mor_report.role_mean(self.stats, metric)

  def step_ms(self) -> float:
    """Median time per step in ms, the first (compiling) window excluded."""
    times = self.train["step_time"][1:] if self.train["step_time"].size > 1 \
        else self.train["step_time"]
    return float(np.median(times)) * 1e3 if times.size else math.nan

  def tokens_per_s(self) -> float:
    """Training throughput at the median step time."""
    return self.header["tokens_per_step"] / (self.step_ms() / 1e3)

  @property
  def mesh(self) -> str:
    """The mesh, e.g. 'data=2,fsdp=2,tensor=2', or 'none' (one device)."""
    return format_mesh(self.header.get("mesh"))


# Config fields that may differ between runs whose losses still compare: how
# GEMMs and attention run (fp8 or emulated, xla or cudnn), what is profiled,
# and at which steps rows are logged (reports match rows by step).
NOT_SETTINGS = frozenset({"execution", "attention", "profile_steps",
                          "eval_every", "log_every", "stats_every"})


def differing_settings(runs: Sequence[Run]) -> dict[str, list[Any]]:
  """The settings (the header's ``Config`` fields, less ``NOT_SETTINGS``)
  whose values differ between ``runs``: each with its value in each run.

  A field some header lacks (a run of another version of ``Config``) is left
  out: there is no value to compare.
  """
  configs = [r.header.get("config") or {} for r in runs]
  return {k: [c[k] for c in configs] for k in configs[0]
          if k not in NOT_SETTINGS and all(k in c for c in configs)
          and len({json.dumps(c[k]) for c in configs}) > 1}


def metrics_files(directory: pathlib.Path) -> list[pathlib.Path]:
  """``directory``'s ``*.jsonl`` and ``*.jsonl.gz``; where a recipe has both,
  the uncompressed one (a run in progress writes it)."""
  files = {p.name: p for p in sorted(directory.glob("*.jsonl.gz"))}
  files.update((p.name + ".gz", p) for p in sorted(directory.glob("*.jsonl")))
  return [files[k] for k in sorted(files)]


def recipe_of(path: pathlib.Path) -> str:
  """The recipe a metrics file is named after: ``<recipe>.jsonl[.gz]``."""
  return path.name.removesuffix(".gz").removesuffix(".jsonl")


def load_files(paths: list[pathlib.Path]) -> list[Run]:
  """``Run.load`` of each path; an empty file is left out with a note on
  stderr naming it (a report over the rest still helps)."""
  runs = []
  for p in paths:
    try:
      runs.append(Run.load(p))
    except EmptyRunError as e:
      print(f"note: left out {recipe_of(p)}: {e}", file=sys.stderr)
  return runs


def load_runs(directory: pathlib.Path) -> list[Run]:
  """Every metrics file in ``directory`` (``metrics_files``), in ``RECIPES``
  order, each recipe's ablations after it."""
  if not directory.is_dir():
    raise SystemExit(f"error: {directory} is not a directory.")
  runs = load_files(metrics_files(directory))
  if not runs:
    raise SystemExit(f"error: no *.jsonl or *.jsonl.gz metrics files in "
                     f"{directory}.")
  return sorted(runs, key=lambda r: recipe_order(r.recipe))


def recipe_order(recipe: str) -> tuple[int, str]:
  """A sort key: ``RECIPES`` order of the base recipe, then the name."""
  order = list(RECIPES)
  try:
    base = parse_recipe(recipe)[0]
  except ValueError:  # A recipe of another version of this file.
    return len(order), recipe
  return order.index(base), recipe
