"""examples/train_lm.py and examples/lm/: reproducible runs, the corpus split,
the report, the command line (in process and as scripts), and the sharded step
(8 virtual CPU devices, root conftest.py).

A tiny configuration on a small corner of the standard library keeps the
whole file near a minute on two cores; most of it is XLA compiling the MoR
step, so the module shares one persistent compilation cache among its runs
(a rerun of the same program loads the executable instead of compiling it).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import gzip
import json
import math
import pathlib
import re
import shutil
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P
from matplotlib.backends.backend_agg import FigureCanvasAgg

from examples import train_lm
from examples.lm import config, data, metrics, report, sharding
from examples.lm import train as training
from examples.lm.model import Transformer
from mor_jax import report as mor_report

ROOT = pathlib.Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("module_compilation_cache")

TINY = config.Config(layers=2, d_model=32, heads=2, d_ff=64, seq_len=16,
                     batch=8, steps=6, warmup=2, log_every=1, stats_every=1,
                     eval_every=3, val_batches=2)
RECIPE = "mor_channel"
MESHES = {"data2_fsdp2_tensor2": dict(data=2, fsdp=2, tensor=2),
          "data8": dict(data=8, fsdp=1, tensor=1)}


@pytest.fixture(scope="module")
def train(corpus, tmp_path_factory):
  """train(name, seed=0, mesh=None) -> the parsed Run, each name run once.

  ``train.files[name]`` is the run's metrics file.
  """
  runs, files = {}, {}

  def run(name: str, seed: int = 0, mesh=None) -> metrics.Run:
    if name not in runs:
      out = tmp_path_factory.mktemp(name)
      assert training.train_recipe(RECIPE, dataclasses.replace(TINY, seed=seed),
                                   corpus, out, progress=False,
                                   mesh_shape=mesh)
      files[name] = out / f"{RECIPE}.jsonl"
      runs[name] = metrics.Run.load(files[name])
    return runs[name]
  run.files = files
  return run


def test_same_seed_same_loss_curve_bit_for_bit(train):
  a, b = train("seed0"), train("seed0_again")
  assert a.steps_done == TINY.steps and a.val["loss"].size == 3
  np.testing.assert_array_equal(a.train["loss"], b.train["loss"])
  np.testing.assert_array_equal(a.val["loss"], b.val["loss"])
  assert a.stats.keys() == b.stats.keys()
  for k in a.stats:
    np.testing.assert_array_equal(a.stats[k], b.stats[k], err_msg=k)


def test_another_seed_gives_another_curve(train):
  a, b = train("seed0"), train("seed1", seed=1)
  assert np.all(a.train["loss"] != b.train["loss"])


def test_statistics_of_every_block_layer_and_role(train):
  run = train("seed0")
  fractions = [k for k in run.stats if k.endswith("/fraction_e4m3")]
  # 2 blocks x 4 layers x 3 GEMMs x 2 operands.
  assert len(fractions) == 48
  labels = {report._row_label(k) for k in fractions}  # pylint: disable=protected-access
  assert {"0 qkv fprop", "1 fc2 dgrad", "1 out wgrad"} <= labels


def test_interrupted_run_resumes_to_the_same_losses_and_decisions(
    train, corpus, tmp_path):
  """A run stopped at its deadline (here: after its first step) and resumed
  from its checkpoint gives the uninterrupted run's rows, bit for bit."""
  assert not training.train_recipe(RECIPE, TINY, corpus, tmp_path,
                                   progress=False, deadline=-math.inf)
  assert len(list(tmp_path.glob("*.ckpt"))) == 1
  assert training.train_recipe(RECIPE, TINY, corpus, tmp_path, progress=False)
  assert not list(tmp_path.glob("*.ckpt"))
  resumed, whole = metrics.Run.load(tmp_path / f"{RECIPE}.jsonl"), train("seed0")
  for k in ("step", "loss", "lr", "grad_norm"):
    np.testing.assert_array_equal(resumed.train[k], whole.train[k], err_msg=k)
  np.testing.assert_array_equal(resumed.val["loss"], whole.val["loss"])
  np.testing.assert_array_equal(resumed.stats_steps, whole.stats_steps)
  assert resumed.stats.keys() == whole.stats.keys()
  for k in resumed.stats:
    np.testing.assert_array_equal(resumed.stats[k], whole.stats[k], err_msg=k)
  rows = metrics.read_jsonl(train.files["seed0"])
  assert not any(r["skipped"] for r in rows if r["kind"] == "train")


def test_profiled_run_writes_a_trace_and_the_same_losses(train, corpus,
                                                        tmp_path):
  cfg = dataclasses.replace(TINY, profile_steps=2)
  assert training.train_recipe(RECIPE, cfg, corpus, tmp_path, progress=False)
  assert list((tmp_path / f"{RECIPE}_profile").rglob("*.xplane.pb"))
  run = metrics.Run.load(tmp_path / f"{RECIPE}.jsonl")
  np.testing.assert_array_equal(run.train["loss"], train("seed0").train["loss"])


def test_a_step_with_non_finite_gradients_is_skipped_and_located(corpus):
  """An infinity in block 1's fc2 kernel: the step is skipped (parameters
  and optimizer moments unchanged) and the statistics name the layer and
  role that saw it."""
  model = Transformer(TINY, config.policy(RECIPE, TINY))
  tx, schedule = training.make_optimizer(TINY)
  variables = model.init(jax.random.key(0),
                         jnp.zeros((1, TINY.seq_len), jnp.int32))
  params, probes = variables["params"], variables["mor_grads"]
  fc2 = params["blocks"]["mlp"]["fc2"]
  params["blocks"]["mlp"]["fc2"] = dict(
      fc2, kernel=fc2["kernel"].at[1, 0, 0].set(jnp.inf))
  state = training.TrainState(jnp.int32(0), params, tx.init(params))
  step = jax.jit(functools.partial(training.train_step, model, tx, schedule,
                                   TINY))
  new, scalars, stats, summary = step(state, probes,
                                      jnp.asarray(corpus.train),
                                      jax.random.key(1))
  assert float(scalars[3]) == 1.0  # skipped
  assert float(summary["nonfinite"]) >= 1  # the dashboard's scalars say so
  assert not np.isfinite(float(scalars[0]))
  chex.assert_trees_all_equal(new.params, state.params)
  chex.assert_trees_all_equal(new.opt_state.inner_state,
                              state.opt_state.inner_state)
  names = training.stat_names(model, TINY, params, probes)
  flags = {k[:-len("/nonfinite")]: float(v) for k, v in zip(names, stats)
           if k.endswith("/nonfinite")}
  # Keys: <module>/<layer>/<gemm>/<role> (flatten_stats splits nn.scan).
  assert flags["blocks/mlp/fc2/1/fprop/weight"] == 1.0
  assert flags["blocks/mlp/fc2/1/fprop/activation"] == 0.0
  layer0 = [v for k, v in flags.items() if "/0/fprop/" in k]
  assert len(layer0) == 8 and not any(layer0)


def test_dense_recipe_is_bf16_without_statistics(corpus, tmp_path):
  """The speed baseline: no MoR statistics, bf16's losses bit for bit."""
  runs = {}
  for recipe in ("bf16", config.PLAIN):
    assert training.train_recipe(recipe, TINY, corpus, tmp_path,
                                 progress=False)
    runs[recipe] = metrics.Run.load(tmp_path / f"{recipe}.jsonl")
  bf16, dense = runs["bf16"], runs[config.PLAIN]
  np.testing.assert_array_equal(dense.train["loss"], bf16.train["loss"])
  np.testing.assert_array_equal(dense.val["loss"], bf16.val["loss"])
  assert bf16.stats and not dense.stats
  report.report(tmp_path)
  assert (tmp_path / "summary.md").read_text().count("| dense ") == 1
  # Without a bf16 run, dense is the losses' baseline: the bf16 run under
  # another name gets ratios of 1 against it, where it would get "-".
  lines = (tmp_path / "bf16.jsonl").read_text().splitlines(keepends=True)
  header = json.loads(lines[0])
  header["recipe"] = "fp8_tensor"
  (tmp_path / "fp8_tensor.jsonl").write_text(json.dumps(header) + "\n" +
                                             "".join(lines[1:]))
  (tmp_path / "bf16.jsonl").unlink()
  rows = {r["recipe"]: r for r in report.summary_rows(
      metrics.load_runs(tmp_path))}
  assert rows["fp8_tensor"]["train / bf16"] == "1.0000"
  assert rows["fp8_tensor"]["val / bf16"] == "1.0000"
  report.report(tmp_path)


def test_corpus_split_is_by_file_and_deterministic(tmp_path):
  a, b = data.load_corpus(0.05), data.load_corpus(0.05)
  assert (a.train_files, a.val_files, a.fingerprint) == (
      b.train_files, b.val_files, b.fingerprint)
  np.testing.assert_array_equal(a.train, b.train)
  assert not set(a.train_files) & set(a.val_files)
  assert all(data.is_validation(f, 0.05) for f in a.val_files)
  assert not any(data.is_validation(f, 0.05) for f in a.train_files)
  assert not any("site-packages" in f for f in a.train_files + a.val_files)
  assert 0.02 < len(a.val_files) / (len(a.train_files) + len(a.val_files)) < 0.1
  # The split follows the path alone: new contents, same split.
  for i in range(40):
    (tmp_path / f"m{i}.py").write_text(f"x = {i}\n")
  (tmp_path / "notes.txt").write_text("not python")
  first = data.load_corpus(0.3, tmp_path)
  for i in range(40):
    (tmp_path / f"m{i}.py").write_text(f"y = {i * i}\n")
  second = data.load_corpus(0.3, tmp_path)
  assert (first.train_files, first.val_files) == (second.train_files,
                                                 second.val_files)
  assert first.fingerprint != second.fingerprint
  assert len(first.train_files) + len(first.val_files) == 40


@pytest.mark.skipif(jax.device_count() < 8, reason="needs the 8 virtual "
                    "devices of the root conftest.py")
@pytest.mark.parametrize("name", list(MESHES))
def test_mesh_gives_the_one_device_run(train, name):
  """Same losses up to the order of sums; every MoR decision identical."""
  one, sharded = train("seed0"), train(name, mesh=MESHES[name])
  assert sharded.header["mesh"] == MESHES[name]
  assert sharded.mesh == sharding.format_mesh(MESHES[name])
  np.testing.assert_allclose(sharded.train["loss"], one.train["loss"],
                             rtol=1e-4)
  np.testing.assert_allclose(sharded.val["loss"], one.val["loss"], rtol=1e-4)
  fractions = [k for k in one.stats if "/fraction_" in k]
  assert len(fractions) == 96
  for k in fractions:
    np.testing.assert_array_equal(sharded.stats[k], one.stats[k], err_msg=k)


def test_partition_specs_are_megatron_style():
  spec = sharding.partition_spec
  assert spec(("blocks", "attn", "qkv", "kernel"), 3) == P(None, "fsdp",
                                                          "tensor")
  assert spec(("blocks", "mlp", "fc1", "bias"), 2) == P(None, "tensor")
  assert spec(("blocks", "attn", "out", "kernel"), 3) == P(None, "tensor",
                                                          "fsdp")
  assert spec(("blocks", "mlp", "fc2", "bias"), 2) == P()
  assert spec(("mu", "embed"), 2) == P()
  assert spec((), 0) == P()


def test_report_reads_plain_and_gzip_files(train, tmp_path, capsys):
  run1 = train("seed1", seed=1)
  train("seed0")  # Run here too, so that the test also passes on its own.
  # A stand-in baseline: the seed-1 run under the name bf16, gzip-compressed
  # as committed results are; and the seed-0 run plain, which shadows a .gz
  # file of the same recipe (here the seed-1 one).
  lines = train.files["seed1"].read_text().splitlines(keepends=True)
  header = json.loads(lines[0])
  header["recipe"] = "bf16"
  with gzip.open(tmp_path / "bf16.jsonl.gz", "wt", encoding="utf-8") as f:
    f.writelines([json.dumps(header) + "\n"] + lines[1:])
  shutil.copy(train.files["seed0"], tmp_path)
  with gzip.open(tmp_path / f"{RECIPE}.jsonl.gz", "wt", encoding="utf-8") as f:
    f.writelines(lines)
  train_lm.main(["--report", str(tmp_path)])
  printed = capsys.readouterr().out
  runs = metrics.load_runs(tmp_path)
  assert [r.recipe for r in runs] == ["bf16", RECIPE]
  np.testing.assert_array_equal(runs[0].train["loss"], run1.train["loss"])
  # mor_jax.summarize of every stats step, through the CSV writer.
  with open(tmp_path / f"{RECIPE}_summary.csv", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  assert [int(r["step"]) for r in rows] == runs[1].stats_steps.tolist()
  np.testing.assert_allclose(
      [float(r["e4m3_share/all"]) for r in rows],
      np.mean([v for k, v in runs[1].stats.items()
               if k.endswith("/fraction_e4m3")], axis=0), rtol=1e-6)
  for name in ("summary.md", "summary.csv"):
    assert (tmp_path / name).read_text().startswith("| recipe" if
                                                    name.endswith("md") else
                                                    "recipe")
  for name in ("loss.png", "fp8_share.png", f"error_heatmap_{RECIPE}.png",
               "error_heatmap_bf16.png"):
    assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
  table = (tmp_path / "summary.md").read_text()
  assert table in printed
  header, _, bf16, mor = table.splitlines()[:4]
  assert "E4M3 all" in header and "tokens/s" in header
  assert "1.0000" in bf16 and "100.0%" in mor


def test_heatmap_panels_do_not_overlap(train, monkeypatch, tmp_path):
  figures = []
  monkeypatch.setattr(mor_report, "_save",
                      lambda fig, path, tight=True: figures.append(fig))
  assert report.plot_error_heatmap(train("seed0"), tmp_path / "h.png")
  (fig,) = figures
  canvas = FigureCanvasAgg(fig)  # report draws without pyplot: no canvas yet.
  canvas.draw()
  renderer = canvas.get_renderer()
  panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"][:3]
  boxes = [ax.get_tightbbox(renderer) for ax in panels]  # With tick labels.
  for left, right in zip(boxes, boxes[1:]):
    assert left.x1 < right.x0
  labels = [t.get_text() for t in panels[1].get_yticklabels()]
  assert labels[:3] == ["0 qkv fprop", "0 qkv dgrad", "0 out fprop"]


@pytest.mark.parametrize("argv, message", [
    (["--recipes", "bf16,foo"], "unknown recipe 'foo'"),
    (["--recipes", "mor_channel+grad=bf16"], "'grad=bf16' must be ROLE=RECIPE"),
    (["--recipes", "dense+gradient=bf16"], "'dense' has no roles to swap"),
    (["--recipes", "mor_channel+weight=dense"], "'dense' has no roles to swap"),
    (["--steps", "0"], "--steps must be > 0, got 0"),
    (["--d-model", "30", "--heads", "4"], "--d-model 30 must be a multiple of "
     "--heads 4"),
    (["--stats-every", "15"], "--stats-every 15 must be a multiple of "
     "--log-every"),
    (["--attention", "flash"], "--attention must be one of xla, cudnn"),
    (["--mesh", "data=2,pipe=4"], "AXIS one of data, fsdp, tensor"),
    (["--mesh", "data=0"], "must be a positive integer"),
    (["--mesh", "data=3"], "spans 3 devices, but JAX sees"),
    (["--coordinator", "h:1234"], "need --distributed"),
    (["--report", "/nonexistent/dir"], "is not a directory"),
    (["--out", __file__], f"--out must be a directory; {__file__} is a file"),
])
def test_bad_command_lines_fail_with_a_clear_message(argv, message, capsys):
  with pytest.raises(SystemExit) as e:
    train_lm.main(argv)
  assert e.value.code != 0
  assert message in str(e.value.code) + capsys.readouterr().err


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="cuDNN may run")
def test_cudnn_attention_off_gpus_is_refused_up_front(tmp_path, capsys):
  """--attention cudnn, or a gpu1b preset (which chooses it), where JAX has
  no GPU: refused before the corpus is read or anything is traced, naming
  the option and what to use instead; a study's command too."""
  from examples import study as study_cli  # pylint: disable=g-import-not-at-top
  for main, argv in (
      (train_lm.main, ["--attention", "cudnn"]),
      (train_lm.main, ["--preset", "gpu1b"]),
      (study_cli.main, ["--attention", "cudnn", "--seeds", "0"])):
    with pytest.raises(SystemExit) as e:
      main(argv + ["--out", str(tmp_path), "--no-progress"])
    message = str(e.value.code)
    assert message.startswith("error: --attention cudnn (cuDNN's fused "
                              "attention, the gpu1b presets' choice) needs "
                              "an NVIDIA GPU, but JAX's backend here is "
                              f"{jax.default_backend()!r}"), message
    assert message.endswith("use --attention xla instead."), message
  assert not list(tmp_path.iterdir())
  assert "corpus" not in capsys.readouterr().out


def test_an_out_in_use_is_refused_before_training(tmp_path, monkeypatch,
                                                  capsys):
  """A second process on one --out: refused; once free, main goes on."""
  trained = []
  monkeypatch.setattr(train_lm, "train_recipe",
                      lambda recipe, cfg, corpus, out, **_: trained.append(
                          (recipe, out)))  # None: as if stopped at a limit.
  argv = ["--recipes", "bf16", "--out", str(tmp_path), "--no-progress"]
  with metrics.lock_directory(tmp_path):
    with pytest.raises(SystemExit, match=re.escape(f"error: {tmp_path} is in "
                                                   "use: process ")):
      train_lm.main(argv)
  assert not trained and "corpus:" not in capsys.readouterr().out
  train_lm.main(argv)
  assert trained == [("bf16", tmp_path)]
  assert "stopped at --time-limit" in capsys.readouterr().out


@pytest.mark.skipif(jax.device_count() != 8, reason="needs exactly 8 devices")
def test_mesh_must_divide_the_batch_and_widths(capsys):
  for argv, message in [
      (["--mesh", "data=8", "--batch", "12"],
       "--batch 12 must be a multiple of data x fsdp = 8"),
      (["--mesh", "data=2,tensor=4", "--d-ff", "66"],
       "--d-ff 66 must be a multiple of tensor = 4")]:
    with pytest.raises(SystemExit) as e:
      train_lm.main(argv)
    assert message in str(e.value.code) + capsys.readouterr().err


def test_lean_steps_change_nothing_logged(train, corpus, tmp_path):
  """--lean-steps: the steps between logged ones take no statistics; the
  losses and the logged statistics are those of a run that takes them all."""
  full = train("seed0")
  cfg = dataclasses.replace(TINY, stats_every=3)
  assert training.train_recipe(RECIPE, cfg, corpus, tmp_path, progress=False,
                               lean=True)
  lean = metrics.Run.load(tmp_path / f"{RECIPE}.jsonl")
  assert lean.header["lean_steps"] and not full.header["lean_steps"]
  np.testing.assert_array_equal(lean.train["loss"], full.train["loss"])
  np.testing.assert_array_equal(lean.val["loss"], full.val["loss"])
  assert lean.stats_steps.tolist() == [0, 3]
  for name, values in lean.stats.items():
    np.testing.assert_array_equal(values, full.stats[name][[0, 3]], name)
  # Without MoR there are no statistics to leave out: one program.
  assert training.train_recipe("dense", cfg, corpus, tmp_path, progress=False,
                               lean=True)
  dense = metrics.Run.load(tmp_path / "dense.jsonl")
  assert not dense.header["lean_steps"] and dense.stats_steps.size == 0


def test_validation_every_eval_every_steps_whatever_log_every(train, corpus,
                                                               tmp_path):
  """--eval-every 3 with --log-every 4: validation at 0, 3 (not a logging
  step) and 6 (the last), each on its own step's parameters; every train and
  statistics row as with --log-every 1."""
  every = train("seed0")  # TINY: log_every 1, eval_every 3, 6 steps.
  cfg = dataclasses.replace(TINY, log_every=4, stats_every=4)
  assert training.train_recipe(RECIPE, cfg, corpus, tmp_path, progress=False)
  run = metrics.Run.load(tmp_path / f"{RECIPE}.jsonl")
  assert run.val["step"].tolist() == [0, 3, 6] == every.val["step"].tolist()
  np.testing.assert_array_equal(run.val["loss"], every.val["loss"])
  assert run.train["step"].tolist() == list(range(TINY.steps))
  np.testing.assert_array_equal(run.train["loss"], every.train["loss"])
  assert np.all(run.train["step_time"] > 0)
  assert run.stats_steps.tolist() == [0, 4]
  for name, values in run.stats.items():
    np.testing.assert_array_equal(values, every.stats[name][[0, 4]], name)


def test_an_empty_metrics_file_is_named_not_a_crash(train, tmp_path, capsys):
  """A run killed while compiling leaves an empty file: a report over its
  directory leaves it out and says so; compare_runs refuses it by name."""
  from examples import compare_runs  # pylint: disable=g-import-not-at-top
  train("seed0")
  shutil.copy(train.files["seed0"], tmp_path)
  empty = tmp_path / "mor_sub2.jsonl"
  empty.write_text("")
  with pytest.raises(metrics.EmptyRunError, match="mor_sub2.jsonl is empty"):
    metrics.Run.load(empty)
  train_lm.main(["--report", str(tmp_path)])
  assert [r.recipe for r in metrics.load_runs(tmp_path)] == [RECIPE]
  err = capsys.readouterr().err
  assert "note: left out mor_sub2:" in err and "killed before" in err
  with pytest.raises(SystemExit, match="error: .*mor_sub2.jsonl is empty"):
    compare_runs.main([str(train.files["seed0"]), str(empty)])


def test_ratios_only_against_a_baseline_at_the_same_steps(train, tmp_path):
  """A bf16 run killed before its first training row is no baseline, and one
  stopped early has no loss at the steps of the others' final losses: their
  ratios are '-', not NaN nor losses of other steps, and the report says
  why, naming the file. A dense run that finished is the baseline then."""
  train("seed0")
  rows = metrics.read_jsonl(train.files["seed0"])

  def write(recipe, kept):
    kept = [dict(r, recipe=recipe) if r["kind"] == "config" else r
            for r in kept]
    (tmp_path / f"{recipe}.jsonl").write_text(
        "".join(json.dumps(r) + "\n" for r in kept))

  def table():
    text = report.report(tmp_path)
    lines = {r["recipe"]: r for r in report.summary_rows(
        metrics.load_runs(tmp_path))}
    return text, lines

  write(RECIPE, rows)
  bf16 = tmp_path / "bf16.jsonl"
  write("bf16", rows[:2])  # Killed: the header and step 0's validation.
  text, lines = table()
  assert [rows[0]["kind"], rows[1]["kind"]] == ["config", "val"]
  for name in ("bf16", RECIPE):
    assert lines[name]["train / bf16"] == lines[name]["val / bf16"] == "-"
  assert lines["bf16"]["train loss"] == lines["bf16"]["ms/step"] == "-"
  assert "nan" not in text
  assert f"{bf16} holds no training step" in text
  # Stopped by --time-limit after step 2 (its validation at step 3 done).
  write("bf16", [r for r in rows if r.get("step", 0) < 3 or
                 r["kind"] == "val" and r["step"] == 3])
  text, lines = table()
  assert lines[RECIPE]["train / bf16"] == lines[RECIPE]["val / bf16"] == "-"
  assert (lines["bf16"]["train / bf16"] == lines["bf16"]["val / bf16"]
          == "1.0000")
  assert (f"Ratios to bf16: '-' for {RECIPE}: {bf16} has no loss at the "
          "steps of their final losses") in text
  # A finished dense run (here: the same rows) stands in for the killed bf16.
  write("bf16", rows[:2])
  write(config.PLAIN, rows)
  _, lines = table()
  assert (lines[RECIPE]["train / bf16"] == lines[RECIPE]["val / bf16"]
          == "1.0000")


@pytest.mark.skipif(jax.device_count() < 8, reason="needs the 8 virtual "
                    "devices of the root conftest.py")
def test_compare_runs_reports_equal_decisions(train, capsys):
  from examples import compare_runs  # pylint: disable=g-import-not-at-top
  diff = compare_runs.compare(train("seed0"), train("data8", mesh=MESHES["data8"]))
  assert diff["steps"] == TINY.steps
  assert diff["decisions_compared"] == 48 * TINY.steps  # 2 x 4 layers x 6
  assert diff["decisions_differing"] == 0
  assert diff["train_loss_max_rel_diff"] < 1e-4
  assert compare_runs.main([str(train.files["seed0"]),
                            str(train.files["data8"])]) == 0
  assert "decisions_differing: 0" in capsys.readouterr().out


def test_compare_runs_counts_each_decision_once_and_finds_the_first(train):
  """A quantization logs a fraction per candidate; it is one decision."""
  import dataclasses  # pylint: disable=g-import-not-at-top
  from examples import compare_runs  # pylint: disable=g-import-not-at-top
  one = train("seed0")
  names = sorted({k.rsplit("/fraction_", 1)[0] for k in one.stats
                  if "/fraction_" in k})
  m = one.stats_steps.size
  assert m >= 2 and compare_runs.compare(one, one)["first_differing_step"] is None
  flipped = {k: v.copy() for k, v in one.stats.items()}
  for k in flipped:  # Both fractions of one decision, at the second logged step.
    if k.startswith(names[0] + "/fraction_"):
      flipped[k][1] = 1.0 - flipped[k][1]
  losses = dict(one.train, loss=one.train["loss"] * (1 + 0.01 * (
      one.train["step"] >= one.stats_steps[1])))
  diff = compare_runs.compare(
      one, dataclasses.replace(one, stats=flipped, train=losses))
  assert diff["decisions_compared"] == len(names) * m
  assert diff["decisions_differing"] == 1
  assert diff["first_differing_step"] == one.stats_steps[1]
  assert diff["train_loss_max_rel_diff_before"] == 0.0
  assert diff["train_loss_max_rel_diff"] == pytest.approx(0.01)


def test_compare_runs_aligns_rows_on_steps(train, tmp_path, capsys):
  """Runs logged at other steps (--stats-every 2 and --eval-every 6, then
  killed after step 4) are compared at the steps both logged, and the rows
  left out are named; runs with no training step in common are refused."""
  from examples import compare_runs  # pylint: disable=g-import-not-at-top
  train("seed0")
  rows = metrics.read_jsonl(train.files["seed0"])
  # A decision that differs only at step 1, which the other run never logged.
  flip = next(k for r in rows if r["kind"] == "stats" for k in r["stats"]
              if "/fraction_" in k)
  one = [dict(r, stats=dict(r["stats"], **{flip: 1 - r["stats"][flip]}))
         if r["kind"] == "stats" and r["step"] == 1 else r for r in rows]
  # --stats-every 2 and --eval-every 6, killed after step 4 (no "done" row).
  other = [r for r in rows if not (
      r["kind"] == "stats" and r["step"] % 2 or
      r["kind"] == "val" and r["step"] == 3 or
      r["kind"] in ("train", "stats") and r["step"] > 4 or r["kind"] == "done")]
  # Killed before its first training row: the header and step 0's validation.
  killed = [r for r in rows if r["kind"] in ("config", "val")][:2]
  files = {}
  for name, kept in (("one", one), ("other", other), ("killed", killed)):
    files[name] = tmp_path / f"{name}.jsonl"
    files[name].write_text("".join(json.dumps(r) + "\n" for r in kept))
  assert compare_runs.main([str(files["one"]), str(files["other"])]) == 0
  printed = capsys.readouterr().out
  for line in ("steps: 5", "val_steps: 2", "stats_steps: 3",
               f"decisions_compared: {48 * 3}", "decisions_differing: 0",
               "first_differing_step: None", "train_loss_max_rel_diff: 0",
               "val_loss_max_rel_diff: 0"):
    assert f"\n{line}\n" in printed, line
  for kind, steps in (("train", "step 5"), ("val", "step 3"),
                      ("stats", "steps 1, 3, 5")):
    assert (f"note: left out the {kind} rows of {files['one']} at "
            f"{steps}: {files['other']} has none there.") in printed
  with pytest.raises(SystemExit, match="no training step in common"):
    compare_runs.main([str(files["one"]), str(files["killed"])])


def _fake_run(path: pathlib.Path, recipe: str = RECIPE, mesh=None,
              devices: int = 1, **settings) -> pathlib.Path:
  """Writes a metrics file of TINY with ``settings``, without training: the
  header fields the report reads, a row of each kind per step."""
  cfg = dataclasses.replace(TINY, **settings)
  header = dict(kind="config", recipe=recipe, config=dataclasses.asdict(cfg),
                corpus={"root": "email", "python": "3", "fingerprint": "f"},
                params=1000, tokens_per_step=cfg.batch * cfg.seq_len,
                versions={"device": "cpu", "jax": "0", "devices": str(devices)},
                mesh=mesh)
  key = "blocks/attn/qkv/0/fprop/activation/fraction_e4m3"
  rows = [header] + [row for s in range(cfg.steps) for row in (
      dict(kind="train", step=s, loss=5.0, lr=1e-3, grad_norm=1.0,
           step_time=0.01), dict(kind="stats", step=s, stats={key: 1.0}))]
  rows += [dict(kind="val", step=cfg.steps, loss=4.0),
           dict(kind="done", step=cfg.steps)]
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  return path


def test_report_warns_of_runs_with_other_settings(tmp_path):
  """Ratios against a baseline of another model, seed, ... say so; how the
  GEMMs ran and when rows were logged may differ."""
  _fake_run(tmp_path / "bf16.jsonl", "bf16")
  _fake_run(tmp_path / f"{RECIPE}.jsonl", execution="emulate", eval_every=2,
            attention="cudnn")
  assert "WARNING" not in report.report(tmp_path)
  _fake_run(tmp_path / "fp8_tensor.jsonl", "fp8_tensor", d_model=64, seed=1)
  text = report.report(tmp_path)
  assert ("WARNING: the runs used different settings (d_model: 32 (bf16, "
          f"{RECIPE}), 64 (fp8_tensor); seed: 0 (bf16, {RECIPE}), 1 "
          "(fp8_tensor)); their losses are not comparable.") in text
  assert "Model (of bf16): " in text


def test_compare_runs_warns_of_other_settings(tmp_path, capsys):
  """A sharded run's header differs in its mesh and devices only; a run of
  another seed or recipe is named, not silently compared."""
  from examples import compare_runs  # pylint: disable=g-import-not-at-top
  one = _fake_run(tmp_path / "one.jsonl")
  sharded = _fake_run(tmp_path / "sharded.jsonl", mesh=MESHES["data8"],
                      devices=8, stats_every=2, log_every=2)
  assert compare_runs.main([str(one), str(sharded)]) == 0
  assert "WARNING" not in capsys.readouterr().out
  other = _fake_run(tmp_path / "other.jsonl", "bf16", seed=1, lr=1e-3)
  assert compare_runs.main([str(one), str(other)]) == 0
  assert (f"WARNING: the runs used different settings (recipe: {RECIPE} vs "
          "bf16; lr: 0.003 vs 0.001; seed: 0 vs 1); their losses and "
          "decisions are not comparable.\n") in capsys.readouterr().out


def test_compare_runs_names_what_is_no_run_log(tmp_path, capsys):
  """Another file (a CSV, a script), a directory or a missing path: a
  one-line error, and the advice to delete a damaged file only for a bad
  line after a run's header."""
  from examples import compare_runs  # pylint: disable=g-import-not-at-top
  one = _fake_run(tmp_path / "one.jsonl")
  csv_file = tmp_path / "summary.csv"
  csv_file.write_text("recipe,steps\nbf16,6/6\n")
  damaged = tmp_path / "damaged.jsonl"
  lines = one.read_text().splitlines(keepends=True)
  damaged.write_text(lines[0] + '{"kind":"tr' + "".join(lines[1:]))
  for path in (csv_file, pathlib.Path(__file__)):
    with pytest.raises(SystemExit) as e:
      compare_runs.main([str(one), str(path)])
    assert str(e.value.code).startswith(
        f"error: {path} is not a train_lm.py run log: its first line is not "
        "a JSON row"), e.value.code
    assert "damaged" not in str(e.value.code)
  with pytest.raises(SystemExit, match="line 2 of .* The file is damaged"):
    compare_runs.main([str(one), str(damaged)])
  for path, message in ((tmp_path, "is a directory"),
                        (tmp_path / "none.jsonl", "does not exist")):
    with pytest.raises(SystemExit) as e:
      compare_runs.main([str(path), str(one)])
    assert e.value.code == 2
    assert f"error: {path} {message}" in capsys.readouterr().err


def _script(*argv: str, cwd: pathlib.Path) -> str:
  """Runs ``python *argv`` in ``cwd``; its stdout (fails with its stderr)."""
  done = subprocess.run([sys.executable, *argv], cwd=cwd, capture_output=True,
                        text=True, timeout=120, check=False)
  assert done.returncode == 0, done.stderr
  return done.stdout


def test_train_lm_runs_as_a_script_from_anywhere(tmp_path):
  """`python examples/train_lm.py` finds examples.lm from any directory."""
  printed = _script(str(ROOT / "examples" / "train_lm.py"), "--help",
                    cwd=tmp_path)
  assert printed.startswith("usage: train_lm.py")
  assert "--time-limit SECONDS" in printed and "mor_channel" in printed


def test_compare_runs_runs_as_a_script_and_as_a_module(train, tmp_path):
  """Both spellings of its docstring's command line, on two real runs."""
  train("seed0"), train("seed1", seed=1)  # Their metrics files, once.
  files = [str(train.files["seed0"]), str(train.files["seed1"])]
  script = _script(str(ROOT / "examples" / "compare_runs.py"), *files,
                   cwd=tmp_path)
  module = _script("-m", "examples.compare_runs", *files, cwd=ROOT)
  assert script == module
  assert f"steps: {TINY.steps}\n" in script
  assert f"decisions_compared: {48 * TINY.steps}\n" in script
