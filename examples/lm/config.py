"""The settings (``Config``), the presets and the MoR recipes to compare."""

from __future__ import annotations

import argparse
import dataclasses
import math

import mor_jax
from mor_jax import report as mor_report

_E4M3 = mor_jax.E4M3
EXECUTIONS = ("auto", "fp8", "emulate")  # mor_jax.Policy.execution
# jax.nn.dot_product_attention's implementations: "xla" everywhere and
# deterministic; "cudnn" (GPUs) fused, without the [T, T] scores in memory.
ATTENTIONS = ("xla", "cudnn")
RECIPES: dict[str, tuple[str, mor_jax.Policy | None]] = {
    "bf16": ("BF16 GEMMs (NoQuant), the baseline",
             mor_jax.Policy.uniform(mor_jax.NoQuant())),
    # MoRDense(policy=None) is lax.dot_general: bf16's numbers bit for bit,
    # without the statistics NoQuant still takes (amax, dynamic range, NaN
    # and Inf counts): the speed baseline, as nn.Dense would run.
    "dense": ("BF16 GEMMs without MoR statistics (plain lax.dot_general), the "
              "speed baseline", None),
    "fp8_tensor": (
        "E4M3 per-tensor current scaling (fp32 scale), no fallback: "
        "Static falls back to BF16 only on a tensor holding NaN/Inf",
        mor_jax.Policy.uniform(mor_jax.Static(_E4M3, block_shape=(None, None),
                                              scaling="fp32"))),
    "mor_tensor": ("MoR tensor-level, E4M3 per-tensor scale, else BF16",
                   mor_jax.Policy.uniform(
                       mor_jax.TensorLevelMoR(block_shape=(None, None)))),
    "mor_channel": ("MoR tensor-level, E4M3 per-channel scales, else BF16",
                    mor_jax.Policy.uniform(
                        mor_jax.TensorLevelMoR(block_shape=(1, None)))),
    "mor_block": ("MoR tensor-level, E4M3 128x128-block scales, else BF16",
                  mor_jax.Policy.uniform(
                      mor_jax.TensorLevelMoR(block_shape=(128, 128)))),
    "mor_sub2": ("MoR sub-tensor two-way: each 128x128 block E4M3 or BF16",
                 mor_jax.Policy.uniform(mor_jax.SubTensorMoR(mode="two_way"))),
    "mor_sub3": ("MoR sub-tensor three-way: each block E4M3, E5M2 or BF16",
                 mor_jax.Policy.uniform(
                     mor_jax.SubTensorMoR(mode="three_way"))),
}


PLAIN = "dense"  # The recipe without MoR.

# A recipe name may switch roles to another recipe's quantizer, for ablations:
# "mor_channel+gradient=bf16" is mor_channel with BF16 output gradients. "+"
# and "=" rather than "/": the name is also a file name (<recipe>.jsonl).
ABLATION_SEP = "+"


def parse_recipe(name: str) -> tuple[str, dict[str, str]]:
  """'mor_channel+gradient=bf16' -> ('mor_channel', {'gradient': 'bf16'}).

  Raises:
    ValueError: naming what is wrong: an unknown recipe or role, a role
      given twice, a part without '='.
  """
  base, *parts = name.split(ABLATION_SEP)
  if base not in RECIPES:
    raise ValueError(f"unknown recipe {base!r}; choose from "
                     f"{', '.join(RECIPES)}.")
  swaps: dict[str, str] = {}
  for part in parts:
    role, eq, other = part.partition("=")
    if not eq or role not in mor_report.ROLES or other not in RECIPES:
      raise ValueError(
          f"{name!r}: {part!r} must be ROLE=RECIPE, ROLE one of "
          f"{', '.join(mor_report.ROLES)}, RECIPE one of {', '.join(RECIPES)}.")
    if role in swaps:
      raise ValueError(f"{name!r}: role {role!r} given twice.")
    if RECIPES[base][1] is None or RECIPES[other][1] is None:
      raise ValueError(f"{name!r}: {PLAIN!r} has no roles to swap.")
    swaps[role] = other
  return base, swaps


def describe(name: str) -> str:
  """The recipe's description; for an ablation, the base's and the swaps."""
  base, swaps = parse_recipe(name)
  return RECIPES[base][0] + "".join(f"; {role} as {other}"
                                    for role, other in swaps.items())


def flag(name: str) -> str:
  """The command-line flag of a ``Config`` field: 'd_model' -> 'd-model'."""
  return name.replace("_", "-")


def _opt(default, help_text: str):
  return dataclasses.field(default=default, metadata={"help": help_text})


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
  """Model, data and optimisation settings; every field is a CLI flag."""

  layers: int = _opt(2, "transformer blocks")
  d_model: int = _opt(64, "model width")
  heads: int = _opt(4, "attention heads")
  d_ff: int = _opt(256, "MLP hidden width")
  seq_len: int = _opt(64, "tokens (bytes) per sequence")
  batch: int = _opt(16, "sequences per step")
  steps: int = _opt(150, "optimizer steps")
  lr: float = _opt(3e-3, "peak learning rate")
  warmup: int = _opt(15, "linear warmup steps")
  min_lr_ratio: float = _opt(0.1, "final learning rate / peak")
  weight_decay: float = _opt(0.1, "AdamW weight decay (matrices only)")
  clip: float = _opt(1.0, "global gradient-norm clip")
  seed: int = _opt(0, "seed of the initial parameters and the batches")
  val_fraction: float = _opt(0.05, "share of files held out for validation")
  val_batches: int = _opt(8, "validation batches (fixed windows)")
  eval_every: int = _opt(50, "validation every N steps (and at the end)")
  log_every: int = _opt(10, "pull metrics to the host every N steps (and "
                       "at each validation)")
  stats_every: int = _opt(10, "log MoR statistics every N steps")
  execution: str = _opt("auto", "how MoR's GEMMs run: auto (fp8 on GPUs with "
                        "FP8 tensor cores, else emulate), fp8 or emulate")
  attention: str = _opt("xla", "attention: xla (deterministic) or cudnn "
                        "(NVIDIA GPUs only: fused, its backward not "
                        "bit-reproducible)")
  profile_steps: int = _opt(0, "trace the first N steps with jax.profiler "
                            "into <out>/<recipe>_profile (benchmarks/"
                            "profile.py --trace sums its kernels)")
  outlier_channels: int = _opt(
      0, "stress test: in every QKV and FC1 GEMM this many input channels "
      "multiplied by --outlier-scale and the kernel's rows divided by it: "
      "the same function, BF16 bit for bit, but outlier features for FP8 "
      "(0: none)")
  outlier_scale: float = _opt(262144.0, "the factor of --outlier-channels, "
                              "a power of two (default 2^18)")

  def __post_init__(self):
    if self.execution not in EXECUTIONS:
      raise ValueError(f"--execution must be one of {', '.join(EXECUTIONS)}, "
                       f"got {self.execution!r}.")
    if self.attention not in ATTENTIONS:
      raise ValueError(f"--attention must be one of {', '.join(ATTENTIONS)}, "
                       f"got {self.attention!r}.")
    may_be_zero = ("seed", "warmup", "weight_decay", "min_lr_ratio",
                   "profile_steps", "outlier_channels")
    for f in dataclasses.fields(self):
      value = getattr(self, f.name)
      if isinstance(value, str):
        continue
      if not value > 0 and not (f.name in may_be_zero and value == 0):
        raise ValueError(f"--{flag(f.name)} must be "
                         f"{'>= 0' if f.name in may_be_zero else '> 0'}, got "
                         f"{value}.")
    if self.val_fraction >= 1:
      raise ValueError(f"--val-fraction must be < 1, got {self.val_fraction}.")
    if self.d_model % self.heads:
      raise ValueError(f"--d-model {self.d_model} must be a multiple of "
                       f"--heads {self.heads}.")
    if math.frexp(self.outlier_scale)[0] != 0.5:
      raise ValueError("--outlier-scale must be a power of two (so that BF16 "
                       f"is unchanged), got {self.outlier_scale}.")
    if self.outlier_channels > self.d_model:
      raise ValueError(f"--outlier-channels {self.outlier_channels} must be <= "
                       f"--d-model {self.d_model}.")
    if self.stats_every % self.log_every:
      raise ValueError(f"--stats-every {self.stats_every} must be a multiple "
                       f"of --log-every {self.log_every}.")


PRESETS = {
    # About 1 minute per recipe on 2 CPU cores.
    "demo": (Config(), ("bf16", "mor_channel", "fp8_tensor")),
    # The demo with 4 of the 64 input channels of QKV and FC1 2^18 times the
    # rest (BF16 unchanged, bit for bit): per-tensor E4M3 flushes the rest.
    "stress": (Config(outlier_channels=4, outlier_scale=2.0**18),
               ("bf16", "fp8_tensor", "mor_channel")),
    # 57M parameters, 8,192 tokens per step.
    "gpu": (Config(layers=8, d_model=768, heads=12, d_ff=3072, seq_len=256,
                   batch=32, steps=2000, lr=1e-3, warmup=100, val_batches=32,
                   eval_every=250, log_every=50, stats_every=50),
            ("bf16", "mor_channel", "mor_block", "fp8_tensor")),
    # About 1.0B parameters, 16,384 tokens per step: GEMMs large enough to
    # dominate the step, as in the training FP8 is meant for. Fused attention:
    # XLA's keeps [T, T] scores per head, which took most of the step and
    # 100 GiB (docs/results/gpu-2026-11-30-fp8b).
    "gpu1b": (Config(layers=20, d_model=2048, heads=16, d_ff=8192,
                     seq_len=1024, batch=16, steps=200, lr=3e-4, warmup=50,
                     val_batches=8, eval_every=100, log_every=10,
                     stats_every=10, attention="cudnn"),
              ("bf16", "mor_channel")),
    # The same 1.0B parameters and tokens in 5 blocks of d_model 4096: each
    # GEMM has twice the K and N, so GEMMs take a larger share of the step
    # (attention and the quantizers' memory traffic grow with d_model, the
    # GEMMs with its square).
    "gpu1b_wide": (Config(layers=5, d_model=4096, heads=32, d_ff=16384,
                          seq_len=1024, batch=16, steps=200, lr=3e-4,
                          warmup=50, val_batches=8, eval_every=100,
                          log_every=10, stats_every=10, attention="cudnn"),
                   ("bf16", "mor_channel")),
}


def check_backend(cfg: Config, backend: str) -> None:
  """Refuses settings that JAX's ``backend`` cannot run, before any work.

  Raises:
    ValueError: for --attention cudnn off GPUs, where
      jax.nn.dot_product_attention would fail deep inside tracing the model
      ("cuDNN is not detected").
  """
  if cfg.attention == "cudnn" and backend != "gpu":
    raise ValueError(
        "--attention cudnn (cuDNN's fused attention, the gpu1b presets' "
        f"choice) needs an NVIDIA GPU, but JAX's backend here is {backend!r}; "
        "use --attention xla instead.")


def policy(recipe: str, cfg: Config) -> mor_jax.Policy | None:
  """The recipe's Policy (``parse_recipe``), with the configured execution.

  An ablation's swapped roles take the other recipe's quantizer for that
  role ("bf16": ``mor_jax.NoQuant``). None for ``PLAIN``: no MoR at all.
  """
  base, swaps = parse_recipe(recipe)
  if RECIPES[base][1] is None:
    return None
  return dataclasses.replace(
      RECIPES[base][1], execution=cfg.execution,
      **{role: getattr(RECIPES[other][1], role)
         for role, other in swaps.items()})


def recipe_list(text: str) -> tuple[str, ...]:
  """--recipes: comma-separated names (``parse_recipe``), or 'all'."""
  names = tuple(RECIPES) if text == "all" else tuple(
      n.strip() for n in text.split(",") if n.strip())
  if not names:
    raise argparse.ArgumentTypeError("no recipe given.")
  for n in names:
    try:
      parse_recipe(n)
    except ValueError as e:
      raise argparse.ArgumentTypeError(str(e)) from None
  return names


def add_config_flags(parser: argparse.ArgumentParser) -> None:
  """A flag per ``Config`` field, None unless given (the preset's then)."""
  group = parser.add_argument_group("settings (override the preset)")
  for f in dataclasses.fields(Config):
    group.add_argument(f"--{flag(f.name)}", type=type(f.default),
                       default=None, metavar=f.name.upper(),
                       help=f.metadata["help"])


def config_from_args(args: argparse.Namespace) -> Config:
  """``args.preset``'s Config with the flags ``add_config_flags`` gave."""
  base, _ = PRESETS[args.preset]
  overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config)
               if getattr(args, f.name) is not None}
  try:
    return dataclasses.replace(base, **overrides)
  except ValueError as e:
    raise SystemExit(f"error: {e}") from None
