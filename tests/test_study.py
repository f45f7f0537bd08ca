"""examples/study.py and examples/lm/study.py: the paired multi-seed study.

Its statistics against NumPy and scipy, the ablation recipes, the stress
test's outliers (BF16 unchanged bit for bit), and a tiny study of 2 seeds x
2 recipes: the table, skipping finished runs, continuing after a stop.
The MoR recipe of the tiny study quantizes gradients only (an ablation),
which compiles faster than a full recipe; the module shares one persistent
compilation cache among its runs.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import json
import math
import os
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mor_jax
from examples import study as study_cli
from examples.lm import config, data, metrics, study
from examples.lm import train as training
from examples.lm.model import Transformer, outlier_gain

ROOT = pathlib.Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("module_compilation_cache")

TINY = config.Config(layers=1, d_model=32, heads=2, d_ff=64, seq_len=16,
                     batch=8, steps=4, warmup=1, log_every=2, stats_every=2,
                     eval_every=2, val_batches=2)
GRAD = "mor_channel+activation=bf16+weight=bf16"  # MoR on gradients only.
RECIPES = ("bf16", GRAD)
SEEDS = (0, 1)


def _initial_variables(model: Transformer):
  """``initial_variables`` of TINY, jitted (faster than eager ``init``)."""
  return jax.jit(functools.partial(training.initial_variables, model, TINY))()


@pytest.fixture(scope="module")
def done_study(corpus, tmp_path_factory):
  """A finished study of SEEDS x RECIPES: its directory."""
  out = tmp_path_factory.mktemp("study")
  assert study.run_study(TINY, SEEDS, RECIPES, corpus, out, progress=False)
  return out


# ----------------------------------------------------------------------------
# Statistics.


@pytest.mark.parametrize("df", [1, 2, 3, 5, 9, 30])
@pytest.mark.parametrize("p", [0.975, 0.95, 0.995])
def test_t_quantile_matches_scipy(p, df):
  scipy_stats = pytest.importorskip("scipy.stats")
  np.testing.assert_allclose(study.t_quantile(p, df),
                             scipy_stats.t.ppf(p, df), rtol=2e-5)


def test_estimate_against_a_hand_computed_example():
  ratios = [1.0021, 1.0064, 0.9987, 1.0042]
  # By hand: mean 1.00285; deviations -.00075 .00355 -.00415 .00135; their
  # squares sum to 3.2210e-5; / 3 = 1.07367e-5; std 3.27669e-3;
  # stderr = std / 2 = 1.63834e-3; t(0.975, 3) = 3.18245.
  est = study.Estimate.of(ratios)
  assert est.n == 4
  np.testing.assert_allclose(est.mean, 1.00285, rtol=1e-12)
  np.testing.assert_allclose(est.stderr, 1.63834e-3, rtol=1e-5)
  np.testing.assert_allclose(est.stderr, np.std(ratios, ddof=1) / 2,
                             rtol=1e-12)
  np.testing.assert_allclose([est.low, est.high],
                             [1.00285 - 3.18245 * 1.63834e-3,
                              1.00285 + 3.18245 * 1.63834e-3], rtol=1e-7)
  # Its upper end 1.00806 > 1.005 > the mean: the mean is within, not sure.
  assert est.verdict() == "mean only"
  assert est.verdict(tolerance=0.01) == "yes"


@pytest.mark.parametrize("ratios, verdict", [
    ([1.001, 1.002, 1.0015, 1.0025], "yes"),
    ([0.990, 0.991, 0.992, 0.990], "yes"),   # Better than BF16 is within.
    ([1.000, 1.009, 1.002, 1.004], "mean only"),
    ([1.004, 1.010, 1.003, 1.009], "mean above"),
    ([1.010, 1.011, 1.012, 1.010], "no"),
    ([1.003], "n/a"),
])
def test_verdicts(ratios, verdict):
  assert study.Estimate.of(ratios).verdict() == verdict


def test_one_value_has_no_error_bar():
  est = study.Estimate.of([1.01])
  assert est.mean == 1.01 and math.isnan(est.stderr) and math.isnan(est.high)


# ----------------------------------------------------------------------------
# Ablations and the stress test.


def test_ablation_names_swap_one_role():
  mor = config.RECIPES["mor_channel"][1]
  p = config.policy("mor_channel+gradient=bf16", TINY)
  assert p.gradient == mor_jax.NoQuant()
  assert (p.activation, p.weight) == (mor.activation, mor.weight)
  assert isinstance(p.activation, mor_jax.TensorLevelMoR)
  assert p.execution == TINY.execution
  p = config.policy("bf16+gradient=fp8_tensor+weight=mor_sub2", TINY)
  assert p.activation == mor_jax.NoQuant()
  assert p.gradient == config.RECIPES["fp8_tensor"][1].gradient
  assert p.weight == config.RECIPES["mor_sub2"][1].weight
  assert config.parse_recipe("mor_block") == ("mor_block", {})
  assert "; gradient as bf16" in config.describe("mor_channel+gradient=bf16")


@pytest.mark.parametrize("name, message", [
    ("mor_chanel", "unknown recipe 'mor_chanel'"),
    ("mor_channel+grad=bf16", "'grad=bf16' must be ROLE=RECIPE"),
    ("mor_channel+gradient=fp16", "'gradient=fp16' must be ROLE=RECIPE"),
    ("mor_channel+gradient", "'gradient' must be ROLE=RECIPE"),
    ("mor_channel+weight=bf16+weight=bf16", "role 'weight' given twice"),
])
def test_bad_recipe_names_fail_with_a_clear_message(name, message):
  with pytest.raises(ValueError, match=message):
    config.parse_recipe(name)


def test_recipes_share_initial_parameters_and_batch_key():
  """Whatever the policy, a seed gives the same parameters and data key."""
  first = None
  for recipe in ["bf16", GRAD, "mor_channel"]:
    model = Transformer(TINY, config.policy(recipe, TINY))
    params, _, key = _initial_variables(model)
    got = (params, jax.random.key_data(key))
    if first is None:
      first = got
    jax.tree.map(np.testing.assert_array_equal, got, first)


def test_outlier_config_is_checked():
  cfg = dataclasses.replace(TINY, outlier_channels=3, outlier_scale=2.0**14)
  gain = outlier_gain(cfg)
  assert sorted(np.unique(gain)) == [1.0, 2.0**14]
  assert np.sum(gain > 1) == 3
  with pytest.raises(ValueError, match="power of two"):
    dataclasses.replace(TINY, outlier_channels=2, outlier_scale=1000.0)
  with pytest.raises(ValueError, match="--outlier-channels 33 must be <="):
    dataclasses.replace(TINY, outlier_channels=33)


def test_outliers_leave_bf16_bit_for_bit(corpus):
  """(X g)(W / g) = X W exactly in BF16 for powers of two: the stress test
  changes nothing but what FP8 sees."""
  stressed = dataclasses.replace(TINY, outlier_channels=2,
                                 outlier_scale=2.0**16)
  batch = data.sample_batch(jnp.asarray(corpus.train), jax.random.key(3),
                            TINY.batch, TINY.seq_len)

  def loss_and_grads(cfg):
    model = Transformer(cfg, config.policy("bf16", cfg))
    params, probes, _ = _initial_variables(model)
    return jax.jit(functools.partial(training.loss_and_grads, model))(
        params, probes, batch)[:2]

  jax.tree.map(np.testing.assert_array_equal, loss_and_grads(stressed),
               loss_and_grads(TINY))


# ----------------------------------------------------------------------------
# A tiny study.


def test_study_table_from_the_runs(done_study):
  text = study.analyse(done_study)
  numbers = json.loads((done_study / "study.json").read_text())
  runs = {s: {r: metrics.Run.load(study.seed_dir(done_study, s) /
                                  f"{r}.jsonl") for r in RECIPES}
          for s in SEEDS}
  ratios = [runs[s][GRAD].final_val_loss() / runs[s]["bf16"].final_val_loss()
            for s in SEEDS]
  got = numbers["recipes"][GRAD]
  np.testing.assert_allclose([got["seeds"][str(s)]["ratio"] for s in SEEDS],
                             ratios, rtol=1e-12)
  np.testing.assert_allclose(got["mean_ratio"], np.mean(ratios), rtol=1e-12)
  np.testing.assert_allclose(got["stderr"],
                             np.std(ratios, ddof=1) / np.sqrt(2), rtol=1e-12)
  # The training-loss ratio: the mean loss of the last 5% of steps (at least
  # one), computed here from the logged rows.
  tail = max(1, TINY.steps // 20)
  train = [np.mean(runs[s][GRAD].train["loss"][-tail:])
           / np.mean(runs[s]["bf16"].train["loss"][-tail:]) for s in SEEDS]
  np.testing.assert_allclose(
      [got["seeds"][str(s)]["train_ratio"] for s in SEEDS], train, rtol=1e-12)
  np.testing.assert_allclose(got["train_ratio"]["mean"], np.mean(train),
                             rtol=1e-12)
  half = 12.706204736 * np.std(train, ddof=1) / np.sqrt(2)  # t(0.975, 1)
  np.testing.assert_allclose(got["train_ratio"]["interval"],
                             [np.mean(train) - half, np.mean(train) + half],
                             rtol=1e-6)
  # Only gradients are quantized: shares for that role alone.
  assert list(got["e4m3"]) == ["gradient"]
  shares = [np.mean([v for k, v in runs[s][GRAD].stats.items()
                     if k.endswith("/gradient/fraction_e4m3")])
            for s in SEEDS]
  np.testing.assert_allclose(got["e4m3"]["gradient"], np.mean(shares),
                             rtol=1e-12)
  assert numbers["recipes"]["bf16"]["e4m3"] == {}
  assert numbers["same_settings"] and not numbers["incomplete"]
  assert numbers["config"]["steps"] == TINY.steps
  header, _, bf16, grad = text.splitlines()[:4]
  for column in ("seed 0", "seed 1", "mean ratio", "std error",
                 "95% interval", "within 0.5%", "train ratio",
                 "E4M3 gradient"):
    assert column in header
  assert bf16.startswith("| bf16 ") and grad.startswith(f"| {GRAD} ")
  assert f"{ratios[1]:.4f}" in grad
  assert (done_study / "study.csv").read_text().startswith("recipe,seeds,")
  for path in (done_study / "study.png",
               done_study / "seed1" / f"error_heatmap_{GRAD}.png"):
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", path


def test_finished_runs_are_skipped(done_study, corpus):
  before = {p: p.read_bytes() for p in done_study.glob("seed*/*.jsonl")}
  said = []
  assert study.run_study(TINY, SEEDS, RECIPES, corpus, done_study,
                         progress=False, say=said.append)
  assert len(said) == 4 and all("complete, skipped" in s for s in said)
  assert {p: p.read_bytes() for p in before} == before


def test_other_settings_in_the_directory_are_refused(done_study, corpus):
  with pytest.raises(SystemExit, match="other settings than this study's"):
    study.run_study(dataclasses.replace(TINY, steps=6), SEEDS, RECIPES,
                    corpus, done_study, progress=False)


def test_a_run_killed_before_its_header_starts_afresh(corpus, tmp_path):
  """A process killed while compiling leaves an empty metrics file."""
  empty = tmp_path / "bf16.jsonl"
  empty.write_text("")
  assert metrics.read_jsonl(empty) == []
  assert not study.is_complete(empty, TINY, corpus)


def test_a_stopped_study_continues_where_it_stopped(done_study, corpus,
                                                    tmp_path):
  said = []
  # A deadline already past: the first run stops after its first window.
  assert not study.run_study(TINY, SEEDS[:1], RECIPES, corpus, tmp_path,
                             deadline=-math.inf, progress=False,
                             say=said.append)
  assert "stopped during seed 0 bf16" in said[-1]
  assert len(list(tmp_path.glob("seed0/bf16.*.ckpt"))) == 1
  with pytest.raises(SystemExit, match="no finished bf16 run"):
    study.study(tmp_path)
  said.clear()
  assert study.run_study(TINY, SEEDS[:1], RECIPES, corpus, tmp_path,
                         progress=False, say=said.append)
  assert not said  # bf16 resumed from its checkpoint, then the other run.
  assert not list(tmp_path.glob("seed0/*.ckpt"))
  for recipe in RECIPES:
    a = metrics.Run.load(done_study / "seed0" / f"{recipe}.jsonl")
    b = metrics.Run.load(tmp_path / "seed0" / f"{recipe}.jsonl")
    np.testing.assert_array_equal(a.train["loss"], b.train["loss"])
    np.testing.assert_array_equal(a.val["loss"], b.val["loss"])


def test_half_a_study_lists_what_is_missing(done_study, tmp_path):
  """seed1's MoR run unfinished and an empty file in seed0: left out and
  named. (Seed 0 gzip-compressed, as committed results are.)"""
  for path in done_study.glob("seed*/*.jsonl"):
    (tmp_path / path.parent.name).mkdir(exist_ok=True)
    rows = path.read_text().splitlines(keepends=True)
    if path.parent.name == "seed1" and path.name == f"{GRAD}.jsonl":
      rows = rows[:-1]  # No "done" row.
    copy = tmp_path / path.parent.name / path.name
    if path.parent.name == "seed0":
      with gzip.open(f"{copy}.gz", "wt", encoding="utf-8") as f:
        f.writelines(rows)
    else:
      copy.write_text("".join(rows))
  (tmp_path / "seed0" / "mor_sub2.jsonl").write_text("")  # Killed compiling.
  numbers = study.study(tmp_path)
  assert numbers["incomplete"] == ["seed0/mor_sub2", f"seed1/{GRAD}"]
  assert list(numbers["recipes"][GRAD]["seeds"]) == [0]
  assert numbers["recipes"][GRAD]["verdict"] == "n/a"
  assert (f"Not finished, left out: seed0/mor_sub2, seed1/{GRAD}." in
          study.analyse(tmp_path))  # The seed reports skip the empty file.
  saved = json.loads((tmp_path / "study.json").read_text())
  assert saved["recipes"][GRAD]["stderr"] is None  # NaN: one seed.


# ----------------------------------------------------------------------------
# One writer per directory, and damaged metrics files.


def _files(directory):
  return {p: p.read_bytes() for p in directory.rglob("*") if p.is_file()}


def test_a_second_study_on_a_directory_in_use_is_refused(done_study, corpus):
  before = _files(done_study)
  said = []
  # Another study on the same --out, even with other seeds.
  with metrics.lock_directory(done_study):
    with pytest.raises(SystemExit, match=re.escape(f"{done_study} is in use")):
      study.run_study(TINY, SEEDS[1:], RECIPES, corpus, done_study,
                      progress=False, say=said.append)
  # A train_lm.py run in a seed's directory: refused, and out, taken
  # before it, given back.
  seed1 = study.seed_dir(done_study, 1)
  with metrics.lock_directory(seed1):
    with pytest.raises(SystemExit, match=re.escape(f"{seed1} is in use")):
      study.run_study(TINY, SEEDS, RECIPES, corpus, done_study,
                      progress=False, say=said.append)
    with metrics.lock_directory(done_study):
      pass
  assert not said  # Refused before looking at any run.
  assert _files(done_study) == before
  # Released: the same call goes on (every run complete, skipped).
  assert study.run_study(TINY, SEEDS, RECIPES, corpus, done_study,
                         progress=False, say=said.append)
  assert len(said) == 4 and all("complete, skipped" in s for s in said)


def test_the_study_command_is_refused_before_it_trains(tmp_path, capsys):
  with metrics.lock_directory(tmp_path):
    with pytest.raises(SystemExit) as e:
      study_cli.main(["--seeds", "0", "--out", str(tmp_path), "--no-progress"])
  message = str(e.value.code)
  assert message.startswith(f"error: {tmp_path} is in use: process ")
  assert "another --out" in message
  assert [p.name for p in tmp_path.iterdir()] == [metrics.LOCK_FILE]
  assert "seed 0" not in capsys.readouterr().out


def test_the_lock_is_another_process_s_until_it_dies(tmp_path):
  """Held by a subprocess: refused, naming it; killed: free (no stale lock)."""
  holder = subprocess.Popen(  # pylint: disable=consider-using-with
      [sys.executable, "-c",
       "import pathlib, sys\n"
       "from examples.lm import metrics\n"
       "with metrics.lock_directory(pathlib.Path(sys.argv[1])):\n"
       "  print('held', flush=True)\n"
       "  sys.stdin.read()\n", str(tmp_path)],
      cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline() == "held\n"
    with pytest.raises(SystemExit,
                       match=f"process {holder.pid} on .* is writing there"):
      with metrics.lock_directory(tmp_path):
        pass
  finally:
    holder.kill()  # SIGKILL: no cleanup in the holder.
    holder.communicate()
  with metrics.lock_directory(tmp_path):
    text = (tmp_path / metrics.LOCK_FILE).read_text()
    assert text.startswith(f"process {os.getpid()} on ")
  assert not (tmp_path / metrics.LOCK_FILE).read_text()


@pytest.mark.parametrize("gz", [False, True])
def test_a_damaged_metrics_line_is_named_by_file_and_line(tmp_path, gz):
  """Two writers' lines interleaved, as in a metrics file two processes
  trained at once: after the "done" row, one's cut-off line, then the
  other's rows."""
  lines = ['{"kind":"config","recipe":"bf16"}',
           '{"kind":"train","step":0,"loss":5.5}',
           '{"kind":"done","step":1}',
           '{"kind":"train","st',  # Line 4.
           '{"kind":"train","step":1,"loss":5.1}{"kind":"val"']
  path = tmp_path / ("bf16.jsonl.gz" if gz else "bf16.jsonl")
  text = "".join(line + "\n" for line in lines)
  if gz:
    path.write_bytes(gzip.compress(text.encode()))
  else:
    path.write_text(text)
  with pytest.raises(ValueError,
                     match=re.escape(f"{path}, line 4 of 5: not a JSON row")):
    metrics.read_jsonl(path)
  # The last line alone cut off (a killed run): skipped, as before.
  plain = tmp_path / "mor_channel.jsonl"
  plain.write_text("".join(line + "\n" for line in lines[:3]) + lines[3])
  assert [r["kind"] for r in metrics.read_jsonl(plain)] == [
      "config", "train", "done"]
  # Two rows glued on one line (JSON's "Extra data" after the first row's
  # 36 characters) are no row either.
  plain.write_text(lines[0] + "\n" + lines[4] + "\n" + lines[2] + "\n")
  with pytest.raises(ValueError, match=r"line 2 of 3: not a JSON row \(Extra "
                     r"data, column 37\)"):
    metrics.read_jsonl(plain)


# ----------------------------------------------------------------------------
# The command line.


def test_analyse_from_the_command_line(done_study, capsys):
  study_cli.main(["--analyse", str(done_study)])
  assert (done_study / "study.md").read_text() in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "0,0"], "--seeds must be distinct integers"),
    (["--seeds", "a"], "--seeds must be distinct integers"),
    (["--seed", "3"], "a study takes --seeds, not --seed"),
    (["--recipes", "mor_channel+gradient=bf32"], "must be ROLE=RECIPE"),
    (["--outlier-channels", "4", "--outlier-scale", "100"], "power of two"),
    (["--analyse", "/nonexistent/dir"], "is not a directory"),
])
def test_bad_command_lines_fail_with_a_clear_message(argv, message, capsys):
  with pytest.raises(SystemExit) as e:
    study_cli.main(argv)
  assert e.value.code != 0
  assert message in str(e.value.code) + capsys.readouterr().err


def test_study_runs_as_a_script_from_anywhere(tmp_path):
  done = subprocess.run(
      [sys.executable, str(ROOT / "examples" / "study.py"), "--help"],
      cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False)
  assert done.returncode == 0, done.stderr
  assert done.stdout.startswith("usage: study.py")
  assert "--analyse DIR" in done.stdout and "--outlier-scale" in done.stdout
