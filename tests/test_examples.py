"""The examples: committed outputs match what they print now; quick runs;
importing them leaves matplotlib alone."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import numpy as np
import pytest

from examples import mor_table

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_mor_table_matches_committed_output():
  committed = (ROOT / "docs" / "mor_table.md").read_text()
  assert mor_table.markdown(mor_table.table()) in committed


def test_converted_transformer_trains_and_reports_statistics():
  """The plain Flax transformer, handed our dot_general, trains and reports."""
  from examples import convert_transformer  # pylint: disable=import-outside-toplevel
  result = convert_transformer.train(steps=3, batch_size=4, seq_len=8,
                                     layers=1, d_model=16, heads=2, d_ff=32)
  assert np.isfinite(result.mor_losses).all()
  # FP8 where MoR allows it, and the loss stays with the unquantized model's.
  np.testing.assert_allclose(result.mor_losses, result.ref_losses, rtol=0.02)
  # Six quantizations of each of the four quantized layers; lm_head is not.
  layers = {k.split("/")[1] for k in result.metrics}
  assert layers == {"qkv", "attn_out", "fc1", "fc2"}
  for layer in layers:
    for role in convert_transformer.ROLES:
      pre = f"Block_0/{layer}/MoRDotGeneral_0/{role}/"
      assert result.metrics[pre + "fraction_e4m3"] in (0.0, 1.0)
      assert 0 < result.metrics[pre + "amax"]
  assert np.mean([v for k, v in result.metrics.items()
                  if k.endswith("fraction_e4m3")]) > 0.5
  table = convert_transformer.report(result.metrics)
  assert "Block_0/qkv " in table and "lm_head" not in table


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "--steps must be at least 1, got 0"),
    (["--steps", "-3"], "--steps must be at least 1, got -3"),
    # One step: without the check, a quick failure rather than a long run.
    (["--steps", "1", "--batch", "0"], "--batch must be at least 1, got 0"),
    (["--steps", "1", "--seq", "2"], "--seq must be at least 3, got 2"),
])
def test_converted_transformer_refuses_bad_sizes(argv, message, capsys):
  """Refused before anything traces: no IndexError, NaN loss or MLIRError."""
  from examples import convert_transformer  # pylint: disable=import-outside-toplevel
  with pytest.raises(SystemExit) as e:
    convert_transformer.main(argv)
  assert e.value.code == 2
  assert message in capsys.readouterr().err


_MATPLOTLIB_UNTOUCHED = """
import sys

import numpy as np

import examples.compare_runs
import examples.study
import examples.train_lm
from examples.lm import (config, data, metrics, model, report, sharding, study,
                         train)

loaded = sorted(m for m in sys.modules if m.split(".")[0] == "matplotlib")
assert not loaded, f"imported at import time: {loaded}"

import matplotlib

matplotlib.use("svg")  # A user's choice, which drawing must keep.
backend = matplotlib.get_backend()
# One layer's statistics: a GEMM of each role.
layer = "blocks/attn/qkv/0/"
roles = ("fprop/activation/", "fprop/weight/", "dgrad/gradient/")
run = metrics.Run(
    recipe="mor_channel", header={},
    train={"step": np.arange(4.0), "loss": np.array([3.0, 2.5, 2.2, 2.0])},
    val={"step": np.array([0.0, 3.0]), "loss": np.array([3.1, 2.1])},
    stats_steps=np.arange(4),
    stats={layer + r + m: np.full(4, v) for r in roles
           for m, v in (("fraction_e4m3", 1.0), ("error_e4m3", 0.01))},
    end={})
out = sys.argv[1]
report.plot_losses([run], f"{out}/loss.png")
report.plot_fp8_share([run], f"{out}/fp8_share.png")
assert report.plot_error_heatmap(run, f"{out}/heatmap.png")
study.plot_ratios({"baseline": "bf16", "tolerance": 0.005, "level": 0.95,
                   "recipes": {"bf16": {"seeds": {0: {}, 1: {}}},
                               "mor_channel": {
                                   "seeds": {0: {"ratio": 1.002},
                                             1: {"ratio": 1.006}},
                                   "mean_ratio": 1.004,
                                   "interval": [0.979, 1.029]}}},
                  f"{out}/study.png")
assert matplotlib.get_backend() == backend, matplotlib.get_backend()
assert "matplotlib.pyplot" not in sys.modules
"""


def test_examples_leave_matplotlib_alone(tmp_path):
  """Importing the examples loads no matplotlib; plotting keeps the backend.

  In a fresh interpreter, since this one may have loaded pyplot already.
  """
  done = subprocess.run(
      [sys.executable, "-c", _MATPLOTLIB_UNTOUCHED, str(tmp_path)], cwd=ROOT,
      capture_output=True, text=True, timeout=120, check=False)
  assert done.returncode == 0, done.stderr
  for name in ("loss.png", "fp8_share.png", "heatmap.png", "study.png"):
    assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
