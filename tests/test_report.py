"""mor_jax.summarize and mor_jax.report: scalars checked against hand-computed
values, the per-layer table, the CSV writer and the plots."""

from __future__ import annotations

import builtins
import csv

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import mor_jax
from mor_jax import report
from mor_jax.dense import MoRDense, flatten_stats


def _stats(names, fractions, chosen, nonfinite=0.0):
  """NamedMoRStats with the given fractions ([..., k]) and chosen_error ([...])."""
  f = jnp.asarray(fractions, jnp.float32)
  c = jnp.asarray(chosen, jnp.float32)
  return mor_jax.NamedMoRStats(
      fraction_blocks=f, fraction_elements=f, error=jnp.zeros_like(f),
      chosen_error=c, amax=jnp.ones_like(c), dynamic_range=jnp.ones_like(c),
      nonfinite=jnp.full_like(c, nonfinite), names=names)


E4_BF = ("E4M3", "BF16")
THREE = ("E4M3", "E5M2", "BF16")
# Layer "a" plain, layer "b" stacked twice (as nn.scan stacks), with a
# three-way recipe for activations and NoQuant for weights.
FWD = {
    "a": {"fprop": {"activation": _stats(E4_BF, [1.0, 0.0], 0.02),
                    "weight": _stats(E4_BF, [0.0, 1.0], 0.0)}},
    "b": {"fprop": {
        "activation": _stats(THREE, [[0.5, 0.25, 0.25], [1.0, 0.0, 0.0]],
                             [0.03, 0.05]),
        "weight": _stats(("BF16",), [[1.0], [1.0]], [0.0, 0.0])}},
}
BWD = {"a": {"dgrad": {"gradient": _stats(E4_BF, [0.0, 1.0], 0.0, 1.0)},
             "wgrad": {"gradient": _stats(E4_BF, [1.0, 0.0], 0.04)}}}
# By hand: activations a, b/0, b/1; weights a, b/0, b/1; gradients a twice.
EXPECTED = {
    "e4m3_share/activation": (1 + 0.5 + 1) / 3,
    "e5m2_share/activation": 0.25 / 3,
    "bf16_share/activation": 0.25 / 3,
    "e4m3_share/weight": 0.0, "e5m2_share/weight": 0.0,
    "bf16_share/weight": 1.0,
    "e4m3_share/gradient": 0.5, "e5m2_share/gradient": 0.0,
    "bf16_share/gradient": 0.5,
    "e4m3_share/all": 3.5 / 8, "e5m2_share/all": 0.25 / 8,
    "bf16_share/all": 4.25 / 8,
    "worst_error": 0.05,
    # a/fprop/weight, b/0's BF16 quarter, a/dgrad/gradient; not NoQuant's.
    "bf16_fallbacks": 2.25,
    "quantizations": 8.0,
    "nonfinite": 1.0,
}


@pytest.mark.parametrize("jit", [False, True])
def test_summarize_matches_hand_computed_values(jit):
  fn = jax.jit(mor_jax.summarize) if jit else mor_jax.summarize
  s = fn(FWD, BWD)
  assert isinstance(s, mor_jax.Summary)
  got = s.as_dict()
  assert got.pop("worst_error_at") == "b/1/fprop/activation"
  assert got.keys() == EXPECTED.keys()
  for k, v in EXPECTED.items():
    np.testing.assert_allclose(got[k], v, rtol=1e-6, err_msg=k)
  assert s["worst_error_at"].dtype == jnp.int32
  assert s.format() == (
      "E4M3 act 83.3% wgt 0.0% grad 50.0% | worst error 0.0500 at "
      "b/1/fprop/activation | BF16 fallbacks 2.25/8 | nonfinite 1")


# Layer "c" not applied in the step (init's zeros), and "a" applied twice
# in the backward pass (its probes' cotangents sum).
NOT_RUN = jax.tree.map(jnp.zeros_like, FWD["a"])
TWICE = jax.tree.map(lambda a: 2 * a, BWD)


def test_summarize_leaves_out_layers_not_run_and_averages_repeats():
  s = mor_jax.summarize({**FWD, "c": NOT_RUN}, TWICE).as_dict()
  assert s.pop("worst_error_at") == "b/1/fprop/activation"
  for k, v in EXPECTED.items():
    # Both applications of a/dgrad met the NaN.
    np.testing.assert_allclose(s[k], 2.0 if k == "nonfinite" else v,
                               rtol=1e-6, err_msg=k)
  table = report.layer_table(flatten_stats({**FWD, "c": NOT_RUN}, TWICE))
  rows = {r.split("|")[1].strip(): [c.strip() for c in r.split("|")[2:-1]]
          for r in table.splitlines()[2:]}
  assert rows["a"] == ["E4M3 2.00%", "BF16 0.00%", "BF16 0.00%", "E4M3 4.00%"]
  assert rows["c"] == ["not run", "not run", "-", "-"]


def test_summarize_forward_only_and_errors():
  s = mor_jax.summarize(FWD)
  assert float(s["quantizations"]) == 6
  assert "e4m3_share/gradient" not in s
  with pytest.raises(ValueError, match="no statistics"):
    mor_jax.summarize({})
  with pytest.raises(TypeError, match="summarize expects"):
    mor_jax.summarize({"a": {"fprop": {"weight": 1.0}}})


def _model_step():
  layer = MoRDense(4)
  x = jax.random.normal(jax.random.key(0), (8, 16))
  v = jax.jit(layer.init)(jax.random.key(1), x)  # Eager init is slow too.

  def loss_fn(params, probes):
    y, state = layer.apply({"params": params, "mor_grads": probes}, x,
                           mutable=["mor_stats"])
    return jnp.mean(y ** 2), state["mor_stats"]

  # Jitted: eager MoR dispatches hundreds of small ops, far slower on a CPU.
  (_, fwd), (_, g_probes) = jax.jit(jax.value_and_grad(
      loss_fn, argnums=(0, 1), has_aux=True))(v["params"], v["mor_grads"])
  return fwd, g_probes


def test_summarize_agrees_with_flatten_stats_of_a_layer():
  fwd, bwd = _model_step()
  flat = {k: float(v) for k, v in flatten_stats(fwd, bwd).items()}
  s = mor_jax.summarize(fwd, bwd).as_dict()
  for role, mean in report.role_mean(flat, "fraction_e4m3").items():
    np.testing.assert_allclose(s[f"e4m3_share/{role}"], mean, rtol=1e-6)
  errors = {k.rsplit("/", 1)[0]: v for k, v in flat.items()
            if k.endswith("/chosen_error")}
  assert s["worst_error"] == max(errors.values())
  assert errors[s["worst_error_at"]] == s["worst_error"]
  assert s["quantizations"] == 6


def test_layer_table_cells():
  metrics = flatten_stats(FWD, BWD)
  table = report.layer_table(metrics).splitlines()
  assert table[0].split("|")[1:-1] == [
      " layer ", " fprop/activation ", " fprop/weight ", " dgrad/gradient ",
      " wgrad/gradient "]
  rows = {r.split("|")[1].strip(): [c.strip() for c in r.split("|")[2:-1]]
          for r in table[2:]}
  assert rows["a"] == ["E4M3 2.00%", "BF16 0.00%", "BF16 0.00%", "E4M3 4.00%"]
  # b/0: half the blocks in E4M3, the rest split; no backward statistics.
  assert rows["b/0"] == ["E4M3 50% 3.00%", "BF16 0.00%", "-", "-"]
  assert rows["b/1"][0] == "E4M3 5.00%"


def test_layer_table_refuses_what_is_not_flat_and_sorts_any_name():
  for bad in (FWD, mor_jax.summarize(FWD)):
    with pytest.raises(TypeError, match="flat dict.*flatten_stats"):
      report.layer_table(bad)
  # "²" is a digit that int() refuses; "Block_10" sorts after "Block_2".
  table = report.layer_table(flatten_stats(
      {"fc1²": FWD["a"], "Block_10": FWD["a"], "Block_2": FWD["a"]}))
  assert [r.split("|")[1].strip() for r in table.splitlines()[2:]] == [
      "Block_2", "Block_10", "fc1²"]


def test_layer_table_of_no_quantization_is_its_header():
  # A model without MoR layers: flatten_stats gives {}.
  assert report.layer_table({}).splitlines() == ["| layer |", "|-------|"]


def test_csv_writer_appends_and_keeps_columns(tmp_path):
  path = tmp_path / "m.csv"
  summary = jax.jit(mor_jax.summarize)(FWD, BWD)
  with report.CsvWriter(path) as w:
    w.write(0, summary)
    w.write(1, {"e4m3_share/all": jnp.float32(0.25)})
  with report.CsvWriter(path) as w:  # Appends under the existing header.
    w.write(2, {"worst_error": 0.5})
    with pytest.raises(ValueError, match=r"no column for \['new'\]"):
      w.write(3, {"new": 1.0})
  rows = list(csv.DictReader(path.open()))
  assert [r["step"] for r in rows] == ["0", "1", "2"]
  assert rows[0]["worst_error_at"] == "b/1/fprop/activation"
  assert float(rows[0]["e4m3_share/all"]) == pytest.approx(3.5 / 8)
  assert rows[1]["e4m3_share/all"] == "0.25" and rows[1]["worst_error"] == ""
  assert rows[2]["worst_error"] == "0.5"


def _series(steps):
  """Flat statistics over ``steps``: two layers, E4M3 error rising."""
  t = np.linspace(0.0, 0.08, steps)
  return {f"blocks/{i}/fc/{g}/{r}/{m}": (t if m == "error_e4m3" else
                                         (t < 0.045).astype(float))
          for i in (0, 1) for g, r in (("fprop", "activation"),
                                       ("dgrad", "gradient"))
          for m in ("error_e4m3", "fraction_e4m3")}


def test_plots_write_png(tmp_path):
  pytest.importorskip("matplotlib", reason="plots need the 'report' extra")
  steps, stats = np.arange(5), _series(5)
  report.plot_fp8_share({"mor": (steps, stats)}, tmp_path / "share.png")
  assert report.plot_error_heatmap(steps, stats, tmp_path / "heat.png",
                                   title="mor")
  assert not report.plot_error_heatmap(steps, {}, tmp_path / "none.png")
  for name in ("share.png", "heat.png"):
    assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
  assert not (tmp_path / "none.png").exists()


def test_plots_without_matplotlib_name_the_extra(monkeypatch, tmp_path):
  real_import = builtins.__import__

  def no_matplotlib(name, *args, **kwargs):
    if name.split(".")[0] == "matplotlib":
      raise ImportError(f"No module named {name!r}")
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, "__import__", no_matplotlib)
  with pytest.raises(ImportError, match=r"mor_jax\[report\]"):
    report.plot_fp8_share({"mor": (np.arange(3), _series(3))},
                          tmp_path / "share.png")


def test_csv_writer_checks_its_directory_when_made(tmp_path):
  with pytest.raises(FileNotFoundError, match="no directory"):
    report.CsvWriter(tmp_path / "missing" / "m.csv")
  with pytest.raises(IsADirectoryError):
    report.CsvWriter(tmp_path)
  report.CsvWriter(tmp_path / "m.csv").close()  # Created at the first write.
  assert not (tmp_path / "m.csv").exists()


def test_stats_functions_refuse_the_collections_passed_whole():
  for fn in (mor_jax.summarize, flatten_stats):
    with pytest.raises(ValueError, match="holds the collection 'mor_stats'"):
      fn({"mor_stats": FWD})
    with pytest.raises(ValueError, match="holds the collection 'mor_grads'"):
      fn(FWD, {"mor_grads": BWD})
