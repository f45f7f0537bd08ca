"""Reports of MoR statistics: a per-layer table, a CSV log and plots.

Works on what ``flatten_stats`` returns (keys
``"<layer path>/<gemm>/<role>/<metric>"``) and on ``summarize``'s result:

- ``layer_table(metrics)``: one step's statistics as a Markdown table, a row
  per layer and a column per quantization;
- ``CsvWriter(path).write(step, values)``: one CSV row per step of any
  ``{name: scalar}`` dict (or a ``mor_jax.Summary``); no dependencies;
- ``plot_fp8_share`` and ``plot_error_heatmap``: the E4M3 share per role
  over steps, and each quantization's E4M3 error over steps, from the
  statistics of several steps, ``{key: values over steps}``.

The plots need matplotlib (``pip install 'mor_jax[report]'``), imported
only when one is drawn, and then only ``matplotlib.figure.Figure``: no
pyplot and no backend switch, so an interactive session's matplotlib stays
as it was.

Examples:
  >>> import jax, jax.numpy as jnp, mor_jax
  >>> from mor_jax.dense import MoRDense, flatten_stats
  >>> from mor_jax.report import layer_table
  >>> layer = MoRDense(4)
  >>> x = jax.random.normal(jax.random.key(0), (8, 16))
  >>> @jax.jit   # eager MoR runs op by op: slow
  ... def forward_stats(x):
  ...   v = layer.init(jax.random.key(1), x)
  ...   return layer.apply(v, x, mutable=["mor_stats"])[1]["mor_stats"]
  >>> print(layer_table(flatten_stats(forward_stats(x))).splitlines()[0])
  | layer | fprop/activation | fprop/weight |
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from mor_jax import _summary

__all__ = [
    "CsvWriter",
    "figure",
    "label_colors",
    "layer_table",
    "markdown_table",
    "plot_error_heatmap",
    "plot_fp8_share",
    "role_mean",
    "split_key",
]

ROLES = _summary.ROLES
GEMMS = ("fprop", "dgrad", "wgrad")
GEMMS_OF = {"activation": "fprop, wgrad", "weight": "fprop, dgrad",
            "gradient": "dgrad, wgrad"}
THRESHOLD = 0.045  # TensorLevelMoR's default acceptance bound, marked in plots.


def split_key(key: str) -> tuple[str, str, str, str]:
  """``"<layer path>/<gemm>/<role>/<metric>"`` -> its four parts.

  The layer path is empty for a layer at the top of the model.
  """
  parts = key.rsplit("/", 3)
  return ("",) * (4 - len(parts)) + tuple(parts)  # type: ignore[return-value]


def role_mean(stats: Mapping[str, Any], metric: str) -> dict[str, np.ndarray]:
  """Per role, ``metric`` averaged over every layer and GEMM of that role.

  Args:
    stats: flat statistics, ``{key: value}`` (one step) or
      ``{key: values over steps}``.
    metric: e.g. "fraction_e4m3".

  Returns:
    ``{role: mean}`` for the roles present, float64.
  """
  out = {}
  for role in ROLES:
    cols = [np.asarray(v, np.float64) for k, v in stats.items()
            if split_key(k)[2:] == (role, metric)]
    if cols:
      out[role] = np.mean(cols, axis=0)
  return out


def markdown_table(rows: Sequence[Mapping[str, str]],
                   columns: Sequence[str] | None = None) -> str:
  """Rows of cells as Markdown; the columns default to the first row's keys.

  Examples:
    >>> print(markdown_table([{"layer": "fc1", "error": "1.2%"}]))
    | layer | error |
    |-------|-------|
    | fc1   |  1.2% |
    >>> print(markdown_table([], columns=["layer"]))  # no rows: the header
    | layer |
    |-------|
  """
  if columns is None and not rows:
    raise ValueError("markdown_table: no rows and no columns given.")
  cols = list(rows[0] if columns is None else columns)
  widths = [max([len(c)] + [len(r[c]) for r in rows]) for c in cols]
  lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(cols, widths)) + " |",
           "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
  lines += ["| " + " | ".join(r[c].rjust(w) if i else r[c].ljust(w)
                              for i, (c, w) in enumerate(zip(cols, widths)))
            + " |" for r in rows]
  return "\n".join(lines)


def _natural(text: str) -> tuple:
  """Sorts 'Block_10' after 'Block_2'."""
  # isdecimal, not isdigit: "²" is a digit that int() refuses.
  return tuple(int(p) if p.isdecimal() else p for p in re.split(r"(\d+)", text))


def _quantization_order(key: str) -> tuple:
  layer, gemm, role, _ = split_key(key)
  return (_natural(layer), GEMMS.index(gemm) if gemm in GEMMS else len(GEMMS),
          role)


def layer_table(metrics: Mapping[str, Any]) -> str:
  """One step's statistics: per layer and quantization, representation and error.

  Each cell is the representation with the largest share (its share added
  where below 100%, as for sub-tensor recipes) and ``chosen_error``, e.g.
  ``E4M3 1.23%`` or ``BF16 0.00%``; for a layer applied k times in the
  step (backward statistics summed, fractions summing to k) their mean,
  and ``not run`` for one not applied (all fractions 0).

  Args:
    metrics: ``flatten_stats``'s result (arrays or floats).

  Returns:
    A Markdown table, a row per layer (the path; "-" for a top-level
    layer), a column per ``<gemm>/<role>`` present; the header alone
    where ``metrics`` holds no quantization (a model without MoR layers).

  Raises:
    TypeError: ``metrics`` is not flat (a nested collection, or a
      ``Summary``): it would make an empty table.
  """
  for key, value in metrics.items():
    if (isinstance(value, Mapping) or np.ndim(value) != 0 or
        split_key(key)[1:3] not in {(g, r) for g in GEMMS for r in ROLES}):
      raise TypeError(
          f"layer_table takes flatten_stats's flat dict of scalars keyed "
          f"'<layer>/<gemm>/<role>/<metric>'; got {key!r} "
          f"({type(value).__name__}): pass flatten_stats(mor_stats, "
          "mor_grads).")
  cells: dict[str, dict[str, str]] = {}
  heads = sorted({split_key(k)[1:3] for k in metrics},
                 key=lambda gr: (GEMMS.index(gr[0]) if gr[0] in GEMMS else 9,
                                 gr[1]))
  for key in sorted(metrics, key=_quantization_order):
    layer, gemm, role, metric = split_key(key)
    if not metric.startswith("fraction_"):
      continue
    pre = key.rsplit("/", 1)[0] + "/"
    shares = {k[len(pre) + len("fraction_"):]: float(v)
              for k, v in metrics.items()
              if k.startswith(pre + "fraction_")}
    applied = sum(shares.values())
    name = max(shares, key=shares.get)
    share = shares[name] / max(applied, 1)
    error = float(metrics[pre + "chosen_error"]) / max(applied, 1)
    text = (f"{name.upper()}{f' {share:.0%}' if share < 1 else ''} "
            f"{error:.2%}" if applied else "not run")
    cells.setdefault(layer or "-", {})[f"{gemm}/{role}"] = text
  rows = [{"layer": layer, **{f"{g}/{r}": c.get(f"{g}/{r}", "-")
                              for g, r in heads}}
          for layer, c in cells.items()]
  return markdown_table(rows, ["layer", *(f"{g}/{r}" for g, r in heads)])


class CsvWriter:
  """Appends one CSV row per step: ``CsvWriter(path).write(step, values)``.

  The columns are ``step`` and the keys of the first row written (or of the
  header of an existing file, which is appended to); a later row may leave
  some out, never add new ones. Only JAX process 0 writes. Rows are flushed
  as written, so a killed run keeps them.

  Args:
    path: the CSV file, in an existing directory (checked here).

  Examples:
    >>> import pathlib, tempfile
    >>> from mor_jax.report import CsvWriter
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "mor.csv"
    >>> with CsvWriter(path) as w:
    ...   w.write(0, {"e4m3_share/all": 1.0, "worst_error_at": "fc1/fprop/weight"})
    ...   w.write(1, {"e4m3_share/all": 0.5})
    >>> print(path.read_text().strip())
    step,e4m3_share/all,worst_error_at
    0,1.0,fc1/fprop/weight
    1,0.5,
  """

  def __init__(self, path: str | os.PathLike):
    self._path = path
    self._file = None
    self._writer: csv.DictWriter | None = None
    self._enabled = jax.process_index() == 0
    # Fail here, not at the first write many steps into a run.
    if self._enabled:
      if os.path.isdir(path):
        raise IsADirectoryError(f"CsvWriter({str(path)!r}): a directory; "
                                "give a file's path.")
      folder = os.path.dirname(os.fspath(path)) or os.curdir
      if not os.path.isdir(folder):
        raise FileNotFoundError(f"CsvWriter({str(path)!r}): no directory "
                                f"{folder!r}; create it first.")

  def write(self, step: int, values: Mapping[str, Any]) -> None:
    """Writes ``step`` and ``values`` (numbers, 0-d arrays or strings).

    A ``mor_jax.Summary`` is written as its ``as_dict()``.

    Raises:
      ValueError: if ``values`` has a key that the file has no column for.
    """
    if not self._enabled:
      return
    if isinstance(values, _summary.Summary):
      values = values.as_dict()
    row = {"step": int(step)}
    row.update((k, v if isinstance(v, str) else float(v))
               for k, v in values.items())
    if self._writer is None:
      self._open(list(row))
    extra = set(row) - set(self._writer.fieldnames)
    if extra:
      raise ValueError(f"CsvWriter({str(self._path)!r}): no column for "
                       f"{sorted(extra)}; the columns are fixed by the first "
                       "row (or the file's header).")
    self._writer.writerow(row)
    self._file.flush()

  def _open(self, fields: list[str]) -> None:
    header = None
    if os.path.exists(self._path) and os.path.getsize(self._path):
      with open(self._path, newline="", encoding="utf-8") as f:
        header = next(csv.reader(f))
    self._file = open(self._path, "a", newline="", encoding="utf-8")  # pylint: disable=consider-using-with
    self._writer = csv.DictWriter(self._file, fieldnames=header or fields)
    if header is None:
      self._writer.writeheader()

  def close(self) -> None:
    if self._file is not None:
      self._file.close()
      self._file = None

  def __enter__(self) -> CsvWriter:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def figure(**kwargs):
  """A ``matplotlib.figure.Figure`` outside pyplot (no backend chosen).

  ``savefig`` renders PNG files with Agg all the same.

  Args:
    **kwargs: as for ``matplotlib.figure.Figure``.

  Raises:
    ImportError: naming the ``report`` extra, if matplotlib is missing.
  """
  try:
    from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(
        "mor_jax.report draws with matplotlib, which is not installed: "
        "pip install 'mor_jax[report]' (or matplotlib).") from e
  return Figure(**kwargs)


def label_colors(labels: Sequence[str]) -> dict[str, str]:
  """One colour per label (matplotlib's cycle), the same in every plot."""
  figure()  # The ImportError with its hint, if matplotlib is missing.
  import matplotlib  # pylint: disable=import-outside-toplevel
  cycle = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
  return {label: cycle[k % len(cycle)] for k, label in enumerate(labels)}


def _save(fig, path, tight: bool = True) -> None:
  if tight:
    fig.tight_layout()
  fig.savefig(path, dpi=110)


def plot_fp8_share(runs: Mapping[str, tuple[Any, Mapping[str, Any]]],
                   path: str | os.PathLike,
                   colors: Mapping[str, str] | None = None) -> None:
  """Share of quantizations in E4M3 per role over steps, a line per run.

  Args:
    runs: ``{label: (steps, stats)}``, ``stats`` flat statistics with
      values over ``steps``.
    path: the image file to write.
    colors: ``{label: colour}`` (default ``label_colors``).
  """
  fig = figure(figsize=(14, 4))
  colors = colors or label_colors(list(runs))
  axes = fig.subplots(1, 3, sharey=True)
  for ax, role in zip(axes, ROLES):
    for label, (steps, stats) in runs.items():
      series = role_mean(stats, "fraction_e4m3").get(role)
      if series is not None:
        ax.plot(steps, 100 * series, label=label, lw=1, color=colors[label])
    ax.set_title(f"{role}s ({GEMMS_OF[role]})")
    ax.set_xlabel("step")
    ax.set_ylim(-2, 102)
  axes[0].set_ylabel("quantizations in E4M3 (%)")
  if axes[-1].get_legend_handles_labels()[0]:  # None for BF16-only runs.
    axes[-1].legend()
  _save(fig, path)


def _row_label(key: str) -> str:
  layer, gemm, _, _ = split_key(key)
  return f"{layer} {gemm}".strip()


def plot_error_heatmap(
    steps: Any, stats: Mapping[str, Any], path: str | os.PathLike, *,
    title: str = "", threshold: float = THRESHOLD,
    row_label: Callable[[str], str] = _row_label,
    row_order: Callable[[str], Any] = _quantization_order) -> bool:
  """Relative error in E4M3 of each quantization over steps, a panel per role.

  Args:
    steps: the steps, shape (n,).
    stats: flat statistics with values over ``steps``; the
      ``error_e4m3`` keys are drawn.
    path: the image file to write.
    title: what the plot's title starts with (say, the recipe).
    threshold: the error bound marked white (red above it).
    row_label: a row's label from its key (default "<layer path> <gemm>").
    row_order: the sort key of rows (default: layer path, digits as
      numbers, then fprop, dgrad, wgrad).

  Returns:
    False (and writes nothing) if there is no E4M3 error to draw.
  """
  steps = np.asarray(steps)
  rows_by_role = {role: sorted(
      (k for k in stats if split_key(k)[2:] == (role, "error_e4m3")),
      key=row_order) for role in ROLES}
  if not any(rows_by_role.values()) or steps.size == 0:
    return False
  vmax = max(2 * threshold, max(float(np.max(stats[k]))
                                for keys in rows_by_role.values()
                                for k in keys))
  n_rows = max(len(keys) for keys in rows_by_role.values())
  # Constrained layout reserves room for each panel's own row labels, which
  # differ between panels (the GEMMs of the role), so none overlaps the
  # panel to its left.
  fig = figure(figsize=(15, 1.8 + 0.15 * n_rows), layout="constrained")
  from matplotlib.colors import TwoSlopeNorm  # pylint: disable=import-outside-toplevel
  norm = TwoSlopeNorm(vmin=0.0, vcenter=threshold, vmax=vmax)
  axes = fig.subplots(1, 3, squeeze=False)
  fig.get_layout_engine().set(wspace=0.04)
  image = None
  for ax, role in zip(axes[0], ROLES):
    keys = rows_by_role[role]
    if not keys:
      continue
    data = np.array([np.asarray(stats[k], np.float64) for k in keys])
    half = (steps[1] - steps[0]) / 2 if steps.size > 1 else 0.5
    image = ax.imshow(data, aspect="auto", cmap="RdBu_r", norm=norm,
                      interpolation="nearest",
                      extent=(steps[0] - half, steps[-1] + half,
                              len(keys) - 0.5, -0.5))
    ax.set_yticks(range(len(keys)), [row_label(k) for k in keys],
                  fontsize=6 if len(keys) > 24 else 8)
    ax.set_title(f"{role}s ({GEMMS_OF[role]})")
    ax.set_xlabel("step")
  axes[0, 0].set_ylabel("layer, GEMM")
  cbar = fig.colorbar(image, ax=axes[0].tolist(), fraction=0.02, pad=0.01)
  cbar.set_label(f"relative error in E4M3 (threshold {threshold:.1%})")
  fig.suptitle(f"{title + ': ' if title else ''}relative error of each "
               "quantization had it been E4M3 (red: above the MoR threshold, "
               "kept in BF16 by MoR)")
  _save(fig, path, tight=False)
  return True
