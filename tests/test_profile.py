"""The benchmarks' own logic off a GPU: profile.py's attribution of device
kernels to HLO ops on synthetic events (a GPU trace's reading is exercised on
the GPU only), timing.py's turns on a fake clock, gemm.py's --gemm-configs
and its layers timed in turns, power.py's meters on a fake GPU."""

import dataclasses
import importlib.util
import pathlib
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))  # profile.py imports gemm.py beside it
# A file name of its own: "profile" is also a standard-library module.
_spec = importlib.util.spec_from_file_location("profile_benchmark",
                                               BENCH / "profile.py")
profile = sys.modules[_spec.name] = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(profile)  # its dataclass looks itself up by name
Event = profile.Event


def _memcpy(start, dur, size, **stats):
  details = f"kind_src:device kind_dst:device size:{size} dest:0 async:1"
  return Event("MemcpyD2D", start, dur, dict(memcpy_details=details, **stats))


OPS = [  # "XLA Ops", out of order: op_times sorts them.
    Event("copy.3", 100, 50, dict(hlo_module="jit_step", shape="f32[4,8]")),
    Event("fusion.1", 0, 100, dict(hlo_module="jit_step")),
    Event("dynamic-slice.7", 200, 40, dict(hlo_module="jit_step",
                                           long_name="bf16[1,64]")),
]


def test_kernels_go_to_the_op_around_them_with_times_counts_and_bytes():
  kernels = [
      Event("loop_fusion_kernel", 5, 90),   # inside fusion.1
      _memcpy(110, 10, 128),                # inside copy.3
      _memcpy(130, 15, 128),                # inside copy.3, again
      _memcpy(205, 20, 4096),               # inside dynamic-slice.7
      _memcpy(160, 5, 64),                  # between ops: unattributed
  ]
  got = profile.op_times(kernels, OPS)
  assert got == {
      ("loop_fusion_kernel", "jit_step", "fusion.1", "", ""): [90, 1, 0],
      ("MemcpyD2D", "jit_step", "copy.3", "", "f32[4,8]"): [25, 2, 256],
      ("MemcpyD2D", "jit_step", "dynamic-slice.7", "", "bf16[1,64]"):
          [20, 1, 4096],
      ("MemcpyD2D", "", "?", "", ""): [5, 1, 64],
  }


def test_the_kernels_hlo_op_stat_wins_over_the_op_around_it():
  # The stat names another op than the one whose span holds the kernel: the
  # kernel goes to the stat's op, without the other op's module or shape.
  kernels = [_memcpy(110, 10, 32, hlo_op="custom-call.4", op_name="jit(f)/x",
                     hlo_module="jit_f"),
             _memcpy(120, 10, 32, hlo_op="copy.3", name="scan/y")]
  got = profile.op_times(kernels, OPS)
  assert got == {
      ("MemcpyD2D", "jit_f", "custom-call.4", "jit(f)/x", ""): [10, 1, 32],
      ("MemcpyD2D", "jit_step", "copy.3", "scan/y", "f32[4,8]"): [10, 1, 32],
  }


def test_match_keeps_only_the_named_kernels():
  kernels = [Event("loop_fusion_kernel", 5, 90), _memcpy(110, 10, 128),
             Event("MemcpyH2D", 120, 3)]
  got = profile.op_times(kernels, OPS, match="MemcpyD2D")
  assert list(got) == [("MemcpyD2D", "jit_step", "copy.3", "", "f32[4,8]")]
  assert profile.op_times(kernels, OPS, match="Memcpy").keys() == {
      ("MemcpyD2D", "jit_step", "copy.3", "", "f32[4,8]"),
      ("MemcpyH2D", "jit_step", "copy.3", "", "f32[4,8]")}


def test_timed_interleaved_reports_medians_and_ratios_to_the_first_case(
    monkeypatch):
  import timing  # benchmarks/timing.py, on the path above
  clock = [0.0]
  monkeypatch.setattr(timing.time, "perf_counter", lambda: clock[0])
  calls = []

  def case(name, cost):
    def fn(x):
      calls.append(name)
      # In the third round "slow" drifts in an untimed call (23), which is
      # not counted, and in a timed one (25), which the median ignores.
      clock[0] += cost * (10 if len(calls) in (23, 25) else 1)
      return x
    return fn

  got = timing.timed_interleaved(
      {"base": (case("base", 1.0), (0,)), "slow": (case("slow", 2.0), (0,))},
      iters=2, rounds=3)
  assert got == {"base": (1.0, 1.0), "slow": (2.0, 2.0)}
  # A warm-up call each, then rounds that take every case in turn, its
  # untimed calls and then its timed ones, each round starting one case
  # further on.
  base_first = ["base"] * 4 + ["slow"] * 4
  assert calls == ["base", "slow"] + base_first + base_first[::-1] + base_first


def test_gemm_configs_parse_as_the_benchmark_takes_them():
  import gemm  # benchmarks/gemm.py, on the path above
  from mor_jax import kernels
  assert gemm.gemm_config("default") == kernels.GemmConfig()
  assert gemm.gemm_config("cluster=None,grid_tile_width=4") == (
      kernels.GemmConfig(cluster=None, grid_tile_width=4))
  with pytest.raises(ValueError, match="cluster must be None, 'm' or 'n'"):
    gemm.gemm_config("cluster=k")
  with pytest.raises(TypeError, match="tile_q"):
    gemm.gemm_config("tile_q=4")


def test_dual_configs_parse_as_the_benchmark_takes_them():
  import gemm  # benchmarks/gemm.py, on the path above
  from mor_jax import kernels
  assert gemm.dual_config("default") == kernels.DualConfig()
  got = gemm.dual_config("prefetch=False,num_warps=8")
  for tiling, default in ((got.stats, kernels.DualConfig().stats),
                          (got.codes, kernels.DualConfig().codes)):
    assert tiling == dataclasses.replace(default, prefetch=False, num_warps=8)
  got = gemm.dual_config("codes.prefetch=True,stats.row_steps=4,num_warps=2")
  assert got.codes == dataclasses.replace(kernels.DualConfig().codes,
                                          prefetch=True, num_warps=2)
  assert got.stats == dataclasses.replace(kernels.DualConfig().stats,
                                          row_steps=4, num_warps=2)
  with pytest.raises(ValueError, match="num_warps must be a positive power"):
    gemm.dual_config("num_warps=3")


def test_dense_layers_timed_in_turns_report_each_run(capsys):
  # A small shape on any machine: every run's row, with its ratio to the
  # first run's time per round (the first's own is 1), MoR's decisions, and
  # whether another GemmConfig or DualConfig gives the first's bits (off a
  # Hopper GPU all run XLA's dot and passes: the same bits).
  import json

  import gemm  # benchmarks/gemm.py, on the path above
  gemm.bench_dense([(32, 64, 32)], iters=1, kinds=("bf16", "mor_fp8"),
                   gemm_configs=("default", "chain_fp8=False"),
                   dual_configs=(gemm.dual_config("default"),
                                 gemm.dual_config("prefetch=False")),
                   in_turns=True)
  rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert [(r["layer"], r.get("gemm"), "dual" in r) for r in rows] == [
      ("bf16", None, False), ("mor_fp8", "default", False),
      ("mor_fp8", "default", True), ("mor_fp8", "chain_fp8=False", False),
      ("mor_fp8", "chain_fp8=False", True)]
  assert rows[2]["dual"]["codes"]["prefetch"] is False
  assert rows[0]["time_ratio_to_first_per_round"] == 1.0
  assert rows[0]["speedup_vs_bf16"] == 1.0
  assert all(r["ms"] > 0 for r in rows)
  assert rows[1]["fprop_e4m3"] == [1.0, 1.0]
  assert "same_bits_as_first_config" not in rows[1]
  assert all(r["same_bits_as_first_config"] is True for r in rows[2:])


def test_same_bits_tells_bits_apart():
  import gemm  # benchmarks/gemm.py, on the path above
  import jax.numpy as jnp
  a = {"w": jnp.array([0.0, 1.0], jnp.float32), "x": jnp.ones(3, jnp.bfloat16)}
  assert gemm.same_bits(a, dict(a))
  # -0.0 == 0.0 as values, not as bits; a NaN is its own bits.
  assert not gemm.same_bits(a, {**a, "w": jnp.array([-0.0, 1.0], jnp.float32)})
  nan = {**a, "x": jnp.full(3, jnp.nan, jnp.bfloat16)}
  assert gemm.same_bits(nan, nan)


class _FakeGpu:
  """NVML's readings on a fake clock: 500 W while a window runs."""

  def __init__(self, clock):
    self.clock = clock

  def energy_mj(self):
    return int(self.clock[0] * 500e3)

  def sm_mhz(self):
    return 1500 if self.clock[0] < 10 else 1400


def test_meter_sums_energy_time_and_calls_over_its_windows(monkeypatch):
  import power  # benchmarks/power.py, on the path above
  clock = [0.0]
  monkeypatch.setattr(power.time, "perf_counter", lambda: clock[0])
  meter = power.Meter(_FakeGpu(clock))
  with pytest.raises(ValueError, match="no window"):
    meter.report()
  for seconds, calls in ((2.0, 4), (8.0, 6), (10.0, 10)):
    with meter.window(calls):
      clock[0] += seconds
    clock[0] += 100.0  # between windows: not counted
  # 20 s at 500 W over 20 calls; clocks 1500, 1400, 1400 at the ends.
  assert meter.report() == dict(j_per_call=500.0, watts=500.0, sm_mhz=1400)


def test_timed_rounds_run_inside_the_meters_windows(monkeypatch):
  import power
  import timing
  clock = [0.0]
  monkeypatch.setattr(timing.time, "perf_counter", lambda: clock[0])
  monkeypatch.setattr(power.time, "perf_counter", lambda: clock[0])

  def fn():
    clock[0] += 2.0
    return 0

  meter = power.Meter(_FakeGpu(clock))
  timing.timed(fn, iters=3, rounds=2, meter=meter)
  # The timed rounds' 6 calls, not the first (compiling) one.
  assert (meter.calls, meter.seconds) == (6, 12.0)
  assert meter.report()["j_per_call"] == 1000.0


def test_dense_rows_carry_the_meters_report(capsys):
  import json

  import gemm

  class Steady:
    def energy_mj(self):
      self.mj = getattr(self, "mj", 0) + 1000  # 1 J per window
      return self.mj

    def sm_mhz(self):
      return 1980

  gemm.bench_dense([(32, 64, 32)], iters=1, kinds=("bf16", "mor_fp8"),
                   gpu=Steady())
  rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
  assert [r["layer"] for r in rows] == ["bf16", "mor_fp8"]
  assert all(r["j_per_call"] == 1.0 and r["sm_mhz"] == 1980 and
             r["watts"] > 0 for r in rows)
  # In turns a case's windows last about 0.1 s: too short for the counter.
  with pytest.raises(ValueError, match="timed alone"):
    gemm.bench_dense([(32, 64, 32)], iters=1, in_turns=True, gpu=Steady())


def test_power_without_nvml_says_why():
  import power
  with pytest.raises(SystemExit, match="needs NVML.*no_such_nvml"):
    power.open_gpu(0, lib="libmor_jax_no_such_nvml.so")
  with pytest.raises(SystemExit, match="no hardware id"):
    power.open_gpu(None)
