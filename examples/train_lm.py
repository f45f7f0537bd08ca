"""Trains a byte-level language model under MoR FP8 recipes and compares them with BF16.

A decoder-only transformer (pre-LN, causal attention, GELU MLP, learned
positions, tied byte embedding) whose QKV, attention output, FC1 and FC2
layers are ``mor_jax.dense.MoRDense``; the embedding and the head stay plain
BF16. It learns the Python standard library of the running interpreter
(``*.py`` under ``sysconfig.get_paths()["stdlib"]``, site-packages left out),
one byte per token, split into training and validation by file with a hash
of each file's relative path. The corpus is identical on machines with the
same Python build; Python 3.11 and 3.12 ship different files, so losses are
comparable only between runs whose corpus fingerprint (printed, and stored
with the results) agrees.

Each recipe trains from the same initial parameters on the same batches
(AdamW, warmup and cosine decay, gradient clipping). Per recipe it writes
``<out>/<recipe>.jsonl``: loss, learning rate and step time per step, the MoR
statistics of every layer and role every ``--stats-every`` steps, and the
validation loss every ``--eval-every`` steps. The report (after training, or
``--report DIR`` over the files of several runs) prints a summary table and
writes ``summary.md``, ``summary.csv`` and PNG plots to the same directory.

Run:
  python examples/train_lm.py --preset demo
  python examples/train_lm.py --preset gpu --recipes mor_channel --out DIR
  python examples/train_lm.py --report DIR
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import functools
import gzip
import hashlib
import importlib.metadata
import json
import math
import os
import pathlib
import platform
import sys
import sysconfig
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import optax
import tqdm
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import mor_jax
from mor_jax.dense import MoRDense
from mor_jax.dense import flatten_stats

matplotlib.use("Agg")
import matplotlib.colors  # pylint: disable=g-import-not-at-top,wrong-import-position
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

VOCAB = 256  # Bytes are the tokens.
ROLES = ("activation", "weight", "gradient")
GEMMS_OF = {"activation": "fprop, wgrad", "weight": "fprop, dgrad",
            "gradient": "dgrad, wgrad"}
BASELINE = "bf16"
THRESHOLD = 0.045  # TensorLevelMoR's default acceptance bound, marked in plots.

_E4M3 = mor_jax.E4M3
RECIPES: dict[str, tuple[str, mor_jax.Policy]] = {
    "bf16": ("BF16 GEMMs (NoQuant), the baseline",
             mor_jax.Policy.uniform(mor_jax.NoQuant())),
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
  log_every: int = _opt(10, "pull metrics to the host every N steps")
  stats_every: int = _opt(10, "log MoR statistics every N steps")

  def __post_init__(self):
    may_be_zero = ("seed", "warmup", "weight_decay", "min_lr_ratio")
    for f in dataclasses.fields(self):
      value = getattr(self, f.name)
      if not value > 0 and not (f.name in may_be_zero and value == 0):
        raise ValueError(f"--{_flag(f.name)} must be "
                         f"{'>= 0' if f.name in may_be_zero else '> 0'}, got "
                         f"{value}.")
    if self.val_fraction >= 1:
      raise ValueError(f"--val-fraction must be < 1, got {self.val_fraction}.")
    if self.d_model % self.heads:
      raise ValueError(f"--d-model {self.d_model} must be a multiple of "
                       f"--heads {self.heads}.")
    if self.stats_every % self.log_every:
      raise ValueError(f"--stats-every {self.stats_every} must be a multiple "
                       f"of --log-every {self.log_every}.")


PRESETS = {
    # About 1 minute per recipe on 2 CPU cores.
    "demo": (Config(), ("bf16", "mor_channel", "fp8_tensor")),
    # 57M parameters, 8,192 tokens per step.
    "gpu": (Config(layers=8, d_model=768, heads=12, d_ff=3072, seq_len=256,
                   batch=32, steps=2000, lr=1e-3, warmup=100, val_batches=32,
                   eval_every=250, log_every=50, stats_every=50),
            ("bf16", "mor_channel", "mor_block", "fp8_tensor")),
}


def _flag(name: str) -> str:
  return name.replace("_", "-")


# ----------------------------------------------------------------------------
# Data: the standard library's Python sources, split by file.


@dataclasses.dataclass(frozen=True)
class Corpus:
  """Training and validation bytes, each file followed by a NUL separator.

  Attributes:
    root: the directory the files come from.
    train_files: relative paths (POSIX) of the training files, sorted.
    val_files: relative paths of the validation files, sorted.
    train: uint8 bytes of the training files.
    val: uint8 bytes of the validation files.
    fingerprint: first 16 hex digits of the SHA-256 of both splits.
  """

  root: str
  train_files: tuple[str, ...]
  val_files: tuple[str, ...]
  train: np.ndarray
  val: np.ndarray
  fingerprint: str

  def describe(self) -> dict[str, Any]:
    return {"root": self.root, "python": platform.python_version(),
            "train_files": len(self.train_files),
            "val_files": len(self.val_files), "train_bytes": self.train.size,
            "val_bytes": self.val.size, "fingerprint": self.fingerprint}


def stdlib_root() -> pathlib.Path:
  """The running interpreter's standard library directory."""
  return pathlib.Path(sysconfig.get_paths()["stdlib"])


def source_files(root: pathlib.Path) -> list[str]:
  """Sorted POSIX paths, relative to ``root``, of the ``*.py`` files under it.

  Third-party directories (site-packages, dist-packages) are left out;
  symbolic links to directories are not followed, so the list depends only on
  the files installed under ``root``.
  """
  files = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = [d for d in dirnames
                   if d not in ("site-packages", "dist-packages", "__pycache__")]
    rel = pathlib.Path(dirpath).relative_to(root)
    files.extend((rel / f).as_posix() for f in filenames if f.endswith(".py"))
  return sorted(files)


def is_validation(rel_path: str, val_fraction: float) -> bool:
  """Whether a file belongs to validation: a stable hash of its path, not of its bytes."""
  digest = hashlib.sha256(rel_path.encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") < val_fraction * 2.0**64


def load_corpus(val_fraction: float, root: pathlib.Path | None = None) -> Corpus:
  """Reads and splits the corpus (the standard library unless ``root`` is given).

  Args:
    val_fraction: expected share of files held out for validation.
    root: a directory to read instead of the standard library.

  Returns:
    The ``Corpus``.
  """
  root = pathlib.Path(root) if root is not None else stdlib_root()
  files = source_files(root)
  val_files = tuple(f for f in files if is_validation(f, val_fraction))
  train_files = tuple(f for f in files if not is_validation(f, val_fraction))
  if not train_files or not val_files:
    raise ValueError(f"{root}: {len(train_files)} training and "
                     f"{len(val_files)} validation files; need both.")

  def join(names):
    return np.frombuffer(b"".join((root / n).read_bytes() + b"\0"
                                  for n in names), np.uint8)

  train, val = join(train_files), join(val_files)
  digest = hashlib.sha256(train.tobytes() + b"\0\0" + val.tobytes())
  return Corpus(str(root), train_files, val_files, train, val,
                digest.hexdigest()[:16])


def sample_batch(tokens: jax.Array, key: jax.Array, batch: int,
                 seq_len: int) -> jax.Array:
  """``batch`` random windows of ``seq_len + 1`` tokens, drawn on the device."""
  starts = jax.random.randint(key, (batch,), 0, tokens.shape[0] - seq_len)
  return jax.vmap(
      lambda s: jax.lax.dynamic_slice(tokens, (s,), (seq_len + 1,)))(starts)


def validation_windows(val: np.ndarray, cfg: Config) -> np.ndarray:
  """Fixed, evenly spaced windows of the validation bytes: [n, batch, seq+1]."""
  n = cfg.val_batches * cfg.batch
  if val.size < cfg.seq_len + 1:
    raise ValueError(f"validation split has {val.size} bytes, fewer than "
                     f"--seq-len + 1 = {cfg.seq_len + 1}.")
  starts = np.linspace(0, val.size - cfg.seq_len - 1, n).astype(np.int64)
  windows = val[starts[:, None] + np.arange(cfg.seq_len + 1)]
  return windows.reshape(cfg.val_batches, cfg.batch, cfg.seq_len + 1)


# ----------------------------------------------------------------------------
# Model: a GPT-style decoder with MoR linear layers.


def mor_linear(cfg: Config, policy: mor_jax.Policy, features: int, *,
               name: str, residual: bool = False) -> MoRDense:
  """A MoRDense with BF16 compute, float32 parameters and GPT-2 initialisation.

  Projections into the residual stream (``residual``) start scaled down by
  sqrt(2 * layers) so that the stream's variance does not grow with depth.
  """
  std = 0.02 / math.sqrt(2 * cfg.layers) if residual else 0.02
  return MoRDense(features, policy=policy, use_bias=True, dtype=jnp.bfloat16,
                  param_dtype=jnp.float32,
                  kernel_init=nn.initializers.normal(std),
                  bias_init=nn.initializers.zeros_init(), precision=None,
                  name=name)


class Attention(nn.Module):
  """Causal multi-head self-attention; QKV and output projections are MoRDense."""

  cfg: Config
  policy: mor_jax.Policy

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, t, d = x.shape
    heads = self.cfg.heads
    qkv = mor_linear(self.cfg, self.policy, 3 * d, name="qkv")(x)
    qkv = qkv.reshape(b, t, 3, heads, d // heads)
    # implementation="xla": otherwise cuDNN's fused attention may be chosen,
    # whose backward pass is not guaranteed to be deterministic.
    y = jax.nn.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2],
                                     is_causal=True, implementation="xla")
    return mor_linear(self.cfg, self.policy, d, name="out",
                      residual=True)(y.reshape(b, t, d))


class MLP(nn.Module):
  """FC1, GELU, FC2; both linear layers are MoRDense."""

  cfg: Config
  policy: mor_jax.Policy

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = nn.gelu(mor_linear(self.cfg, self.policy, self.cfg.d_ff,
                           name="fc1")(x))
    return mor_linear(self.cfg, self.policy, x.shape[-1], name="fc2",
                      residual=True)(h)


class Block(nn.Module):
  """Pre-LN transformer block on a float32 residual stream."""

  cfg: Config
  policy: mor_jax.Policy

  @nn.compact
  def __call__(self, x: jax.Array, _) -> tuple[jax.Array, None]:
    ln = functools.partial(nn.LayerNorm, dtype=jnp.bfloat16)
    x = x + Attention(self.cfg, self.policy, name="attn")(ln(name="ln1")(x))
    return x + MLP(self.cfg, self.policy, name="mlp")(ln(name="ln2")(x)), None


class Transformer(nn.Module):
  """Bytes [batch, time] -> next-byte logits [batch, time, 256], float32.

  Attributes:
    cfg: the sizes.
    policy: the ``mor_jax.Policy`` of every MoRDense layer.
  """

  cfg: Config
  policy: mor_jax.Policy

  @nn.compact
  def __call__(self, tokens: jax.Array) -> jax.Array:
    cfg = self.cfg
    embed = self.param("embed", nn.initializers.normal(0.02),
                       (VOCAB, cfg.d_model)).astype(jnp.bfloat16)
    pos = self.param("pos", nn.initializers.normal(0.02),
                     (cfg.seq_len, cfg.d_model))
    # A one-hot matmul rather than a gather: with 256 tokens it is cheap, and
    # its gradient is a matmul, not a scatter-add, which GPUs run
    # nondeterministically.
    onehot = jax.nn.one_hot(tokens, VOCAB, dtype=jnp.bfloat16)
    x = (onehot @ embed).astype(jnp.float32) + pos[:tokens.shape[1]]
    # Scanned, so that XLA compiles one block rather than ``layers`` copies
    # of its 24 MoR quantizations; parameters and statistics gain a leading
    # layer axis (``flatten_stats`` splits it into "blocks/<i>/...").
    blocks = nn.scan(Block, length=cfg.layers, split_rngs={"params": True},
                     variable_axes={"params": 0, "mor_stats": 0,
                                    "mor_grads": 0})
    x, _ = blocks(cfg, self.policy, name="blocks")(x, None)
    x = nn.LayerNorm(dtype=jnp.bfloat16, name="ln_f")(x)
    return jnp.einsum("btd,vd->btv", x, embed,
                      preferred_element_type=jnp.float32)


def count_params(params) -> int:
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))


def flops_per_step(cfg: Config, n_params: int) -> float:
  """6 N per token for the weights plus the attention scores (causal: half)."""
  attention = 6 * cfg.layers * cfg.seq_len * cfg.d_model
  return (6 * n_params + attention) * cfg.batch * cfg.seq_len


# ----------------------------------------------------------------------------
# Sharding: a (data, fsdp, tensor) mesh, with MaxText's axis names.

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")  # The batch is split over both.
# Megatron-style tensor parallelism: QKV and FC1 split their output features
# over "tensor" (column-parallel), attention output and FC2 their input
# features (row-parallel), so the pair needs one reduction; FSDP splits the
# other dimension of each kernel. Everything else is replicated.
_KERNEL_AXES = {"qkv": ("fsdp", "tensor"), "fc1": ("fsdp", "tensor"),
                "out": ("tensor", "fsdp"), "fc2": ("tensor", "fsdp")}
_BIAS_AXES = {"qkv": ("tensor",), "fc1": ("tensor",)}


def format_mesh(shape: dict[str, int] | None) -> str:
  return ",".join(f"{k}={v}" for k, v in shape.items()) if shape else "none"


def parse_mesh(text: str) -> dict[str, int]:
  """'data=2,tensor=4' -> {'data': 2, 'fsdp': 1, 'tensor': 4}."""
  shape = dict.fromkeys(MESH_AXES, 1)
  seen = set()
  for item in text.split(","):
    name, sep, size = (part.strip() for part in item.partition("="))
    if name not in MESH_AXES or not sep or name in seen:
      raise argparse.ArgumentTypeError(
          f"{item.strip()!r} in {text!r}: expected comma-separated AXIS=SIZE, "
          f"each AXIS once, AXIS one of {', '.join(MESH_AXES)}; e.g. "
          "data=2,fsdp=2,tensor=2.")
    if not size.isdigit() or int(size) < 1:
      raise argparse.ArgumentTypeError(
          f"{item.strip()!r}: the size of {name} must be a positive integer.")
    seen.add(name)
    shape[name] = int(size)
  return shape


def check_mesh(shape: dict[str, int], cfg: Config, devices: int) -> None:
  """Raises ValueError, naming the flags, if ``cfg`` cannot run on the mesh."""
  n = math.prod(shape.values())
  mesh = format_mesh(shape)
  if n != devices:
    raise ValueError(
        f"--mesh {mesh} spans {n} devices, but JAX sees {devices} "
        f"({jax.default_backend()}); on a CPU, XLA_FLAGS="
        f"--xla_force_host_platform_device_count={n} makes {n}.")
  split = shape["data"] * shape["fsdp"]
  for flag, value, axes, size in (
      ("--batch", cfg.batch, "data x fsdp", split),
      ("--d-model", cfg.d_model, "fsdp", shape["fsdp"]),
      ("--d-model", cfg.d_model, "tensor", shape["tensor"]),
      ("--d-ff", cfg.d_ff, "tensor", shape["tensor"])):
    if value % size:
      raise ValueError(f"{flag} {value} must be a multiple of {axes} = {size} "
                       f"for --mesh {mesh}.")


def make_mesh(shape: dict[str, int]) -> jax.sharding.Mesh:
  """The mesh over all devices (of every process), axes in ``MESH_AXES`` order."""
  auto = jax.sharding.AxisType.Auto  # Shardings propagate as in GSPMD.
  return jax.make_mesh(tuple(shape[a] for a in MESH_AXES), MESH_AXES,
                       axis_types=(auto,) * len(MESH_AXES))


def partition_spec(names: Sequence[str], ndim: int) -> P:
  """The PartitionSpec of a parameter (or optimizer moment) by its path.

  Args:
    names: the path, e.g. ("blocks", "attn", "qkv", "kernel"); optimizer
      moments end in the path of their parameter.
    ndim: its rank; leading axes (the scan's layer axis) are not split.

  Returns:
    ``_KERNEL_AXES``/``_BIAS_AXES`` on the trailing axes, else replicated.
  """
  layer, leaf = (["", ""] + list(names))[-2:]
  axes = {"kernel": _KERNEL_AXES, "bias": _BIAS_AXES}.get(leaf, {}).get(
      layer, ())
  return P(*(None,) * (ndim - len(axes)), *axes) if axes else P()


def shardings(mesh: jax.sharding.Mesh, tree) -> Any:
  """A NamedSharding for every leaf of ``tree``, from ``partition_spec``."""
  def one(path, leaf):
    names = [str(getattr(k, "key", getattr(k, "name", k))) for k in path]
    return NamedSharding(mesh, partition_spec(names, np.ndim(leaf)))
  return jax.tree_util.tree_map_with_path(one, tree)


# ----------------------------------------------------------------------------
# Training.


class TrainState(NamedTuple):
  step: jax.Array
  params: Any
  opt_state: Any


def make_optimizer(cfg: Config) -> tuple[optax.GradientTransformation,
                                         optax.Schedule]:
  """AdamW with warmup and cosine decay, after global-norm clipping."""
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, cfg.lr, cfg.warmup, max(cfg.steps, cfg.warmup + 1),
      end_value=cfg.lr * cfg.min_lr_ratio)
  # Weight decay on matrices (kernels, embedding, positions), not on biases
  # and norms.
  mask = functools.partial(jax.tree.map, lambda p: p.ndim >= 2)
  tx = optax.chain(
      optax.clip_by_global_norm(cfg.clip),
      optax.adamw(schedule, b1=0.9, b2=0.95, weight_decay=cfg.weight_decay,
                  mask=mask))
  return tx, schedule


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits,
                                                         targets).mean()


def loss_and_grads(model: Transformer, params, probes, batch: jax.Array):
  """Loss, parameter gradients and the MoR statistics of one batch.

  Returns:
    (loss, grads, ``flatten_stats`` of the forward and backward statistics).
  """
  def loss_fn(params, probes):
    logits, mutated = model.apply({"params": params, "mor_grads": probes},
                                  batch[:, :-1], mutable=["mor_stats"])
    return cross_entropy(logits, batch[:, 1:]), mutated["mor_stats"]

  (loss, fwd), (grads, g_probes) = jax.value_and_grad(
      loss_fn, argnums=(0, 1), has_aux=True)(params, probes)
  return loss, grads, flatten_stats(fwd, g_probes)


def train_step(model: Transformer, tx: optax.GradientTransformation,
               schedule: optax.Schedule, cfg: Config, state: TrainState,
               probes, tokens: jax.Array, data_key: jax.Array, *,
               batch_sharding: NamedSharding | None = None):
  """One AdamW step on a batch drawn from ``tokens`` by (data_key, step).

  With ``batch_sharding`` the batch (the same one) is split over the mesh's
  batch axes; the rest follows from the parameters' shardings.

  Returns:
    (new state, [loss, lr, grad_norm], the MoR statistics as one vector in
    the sorted order of their names).
  """
  batch = sample_batch(tokens, jax.random.fold_in(data_key, state.step),
                       cfg.batch, cfg.seq_len)
  if batch_sharding is not None:
    batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
  loss, grads, stats = loss_and_grads(model, state.params, probes, batch)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  scalars = jnp.stack([loss, schedule(state.step), optax.tree.norm(grads)])
  # One stacked vector rather than thousands of scalar outputs per step.
  stats = jnp.stack([stats[k] for k in sorted(stats)])
  return TrainState(state.step + 1, params, opt_state), scalars, stats


def eval_loss(model: Transformer, params, windows: jax.Array) -> jax.Array:
  """Mean next-byte loss over [n, batch, seq+1] windows (the recipe's forward)."""
  def one(w):
    return cross_entropy(model.apply({"params": params}, w[:, :-1]), w[:, 1:])
  return jnp.mean(jax.lax.map(one, windows))


def versions() -> dict[str, str]:
  dev = jax.devices()[0]
  return {"python": platform.python_version(), "jax": jax.__version__,
          "jaxlib": importlib.metadata.version("jaxlib"), "flax": flax.__version__,
          "optax": optax.__version__, "mor_jax": mor_jax.__version__,
          "backend": jax.default_backend(), "device": dev.device_kind,
          "devices": str(jax.device_count())}


class _Writer:
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


def _resume_point(path: pathlib.Path, ckpt: pathlib.Path,
                  header: dict[str, Any]) -> int:
  """The step to resume ``path`` from (0: start afresh); trims later rows."""
  if not ckpt.exists() or not path.exists():
    return 0
  rows = _read_jsonl(path)
  old = {k: rows[0].get(k) for k in ("config", "corpus", "recipe")}
  new = {k: header[k] for k in old}
  if old != new:
    raise SystemExit(
        f"{path} holds a run with other settings than this one; use another "
        f"--out or delete {path.name} and {ckpt.name}.\n old: {old}\n new: {new}")
  step = int(ckpt.name.split(".")[-2])
  keep = [r for r in rows if r["kind"] in ("config", "resume") or
          r.get("step", 0) < step or (r["kind"] == "val" and r["step"] <= step)]
  path.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n"
                          for r in keep))
  return step


def _read_jsonl(path: pathlib.Path) -> list[dict[str, Any]]:
  """The rows of a metrics file; a last line cut off by a killed run is skipped.

  ``path`` may be gzip-compressed (``*.jsonl.gz``), as committed results are.
  """
  if path.name.endswith(".gz"):
    with gzip.open(path, "rt", encoding="utf-8") as f:
      lines = f.read().splitlines()
  else:
    lines = path.read_text(encoding="utf-8").splitlines()
  rows = [json.loads(line) for line in lines[:-1]]
  try:
    rows.append(json.loads(lines[-1]))
  except json.JSONDecodeError:
    pass
  return rows


def train_recipe(recipe: str, cfg: Config, corpus: Corpus, out: pathlib.Path,
                 *, deadline: float = math.inf, progress: bool = True,
                 mesh_shape: dict[str, int] | None = None) -> bool:
  """Trains one recipe and writes ``out/<recipe>.jsonl``.

  At ``deadline`` (a ``time.monotonic()`` value), checked every
  ``cfg.log_every`` steps, it saves ``out/<recipe>.<step>.ckpt`` and stops;
  the same call later resumes from it, bit for bit as if never stopped.

  With ``mesh_shape`` the step runs on a ``make_mesh`` mesh over all devices
  (every process's): the batch split over data and fsdp, the MoRDense
  kernels as ``partition_spec`` says. The initial parameters and the batches
  are those of the one-device run, and so are the results up to the order
  of floating-point sums. With several processes (``jax.distributed``) only
  process 0 writes, and ``deadline`` must stay infinite.

  Args:
    recipe: a key of ``RECIPES``.
    cfg: the settings.
    corpus: the data.
    out: the output directory (created if missing).
    deadline: when to checkpoint and stop.
    progress: whether to show a progress bar.
    mesh_shape: sizes of the ``MESH_AXES`` (``parse_mesh``), or None for one
      device.

  Returns:
    True if training finished, False if it stopped at the deadline.
  """
  out.mkdir(parents=True, exist_ok=True)
  path = out / f"{recipe}.jsonl"
  model = Transformer(cfg, RECIPES[recipe][1])
  tx, schedule = make_optimizer(cfg)
  key = jax.random.key(cfg.seed)
  init_key, data_key = jax.random.split(key)
  variables = model.init(init_key, jnp.zeros((1, cfg.seq_len), jnp.int32))
  params, probes = variables["params"], variables["mor_grads"]
  n_params = count_params(params)
  state = TrainState(jnp.int32(0), params, tx.init(params))
  header = dict(
      kind="config", recipe=recipe, description=RECIPES[recipe][0],
      policy=repr(RECIPES[recipe][1]), config=dataclasses.asdict(cfg),
      corpus=corpus.describe(), params=n_params,
      tokens_per_step=cfg.batch * cfg.seq_len,
      flops_per_step=flops_per_step(cfg, n_params), versions=versions(),
      mesh=mesh_shape, command=" ".join([os.path.basename(sys.executable)] + sys.argv),
      date=datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec="seconds"))

  # Several processes neither checkpoint nor resume (main refuses
  # --time-limit there).
  ckpts = (sorted(out.glob(f"{recipe}.*.ckpt")) if jax.process_count() == 1
           else [])
  start = _resume_point(path, ckpts[-1], header) if ckpts else 0
  if start:
    state = flax.serialization.from_bytes(state, ckpts[-1].read_bytes())
    writer = _Writer(path, "a")
    writer.write(kind="resume", step=start)
  else:
    writer = _Writer(path, "w")
    writer.write(**header)
  for c in ckpts:
    c.unlink()

  if mesh_shape is None:
    tokens = jnp.asarray(corpus.train)
    windows = jnp.asarray(validation_windows(corpus.val, cfg))
    step_fn = jax.jit(functools.partial(train_step, model, tx, schedule, cfg),
                      donate_argnums=0)
    eval_fn = jax.jit(functools.partial(eval_loss, model))
  else:
    mesh = make_mesh(mesh_shape)
    replicated = NamedSharding(mesh, P())
    state_shardings = shardings(mesh, state)
    windows_sharding = NamedSharding(mesh, P(None, BATCH_AXES))
    # Every process holds the same host values (same seed, same corpus), the
    # condition for device_put onto devices of other processes.
    state = jax.device_put(state, state_shardings)
    probes, data_key, tokens = jax.device_put(
        (probes, data_key, corpus.train), replicated)
    windows = jax.device_put(validation_windows(corpus.val, cfg),
                             windows_sharding)
    step_fn = jax.jit(
        functools.partial(train_step, model, tx, schedule, cfg,
                          batch_sharding=NamedSharding(mesh, P(BATCH_AXES))),
        in_shardings=(state_shardings, replicated, replicated, replicated),
        out_shardings=(state_shardings, replicated, replicated),
        donate_argnums=0)
    eval_fn = jax.jit(functools.partial(eval_loss, model),
                      in_shardings=(state_shardings.params, windows_sharding),
                      out_shardings=replicated)
  t0 = time.perf_counter()
  step_fn = step_fn.lower(state, probes, tokens, data_key).compile()
  eval_fn = eval_fn.lower(state.params, windows).compile()
  compile_s = time.perf_counter() - t0
  stat_names = sorted(jax.eval_shape(
      functools.partial(loss_and_grads, model), params, probes,
      jnp.zeros((1, cfg.seq_len + 1), jnp.int32))[2])

  def validate(step: int) -> float:
    loss = float(eval_fn(state.params, windows))
    writer.write(kind="val", step=step, loss=loss)
    return loss

  if start == 0:
    validate(0)
  bar = tqdm.tqdm(total=cfg.steps, initial=start, desc=f"{recipe:12}",
                  unit="step", disable=not progress or jax.process_index(),
                  dynamic_ncols=True)
  pending: list[tuple[int, jax.Array, jax.Array | None]] = []
  train_s, step = 0.0, start
  t_window = time.perf_counter()
  while step < cfg.steps:
    state, scalars, stats = step_fn(state, probes, tokens, data_key)
    keep = stats if step % cfg.stats_every == 0 else None
    pending.append((step, scalars, keep))
    step += 1
    if step % cfg.log_every and step != cfg.steps:
      continue
    fetched = jax.device_get(pending)  # The only host sync of the window.
    window_s = time.perf_counter() - t_window
    train_s += window_s
    for s, (loss, lr, gnorm), st in fetched:
      writer.write(kind="train", step=s, loss=float(loss), lr=float(lr),
                   grad_norm=float(gnorm), step_time=window_s / len(fetched))
      if st is not None:
        writer.write(kind="stats", step=s,
                     stats=dict(zip(stat_names, map(float, st))))
    postfix = {"loss": f"{float(fetched[-1][1][0]):.3f}"}
    if step % cfg.eval_every == 0 or step == cfg.steps:
      postfix["val"] = f"{validate(step):.3f}"
    pending = []
    writer.flush()
    bar.set_postfix(postfix, refresh=False)
    bar.update(len(fetched))
    if step < cfg.steps and time.monotonic() > deadline:
      ckpt = out / f"{recipe}.{step:07d}.ckpt"
      ckpt.with_suffix(".tmp").write_bytes(flax.serialization.to_bytes(state))
      ckpt.with_suffix(".tmp").rename(ckpt)
      break
    t_window = time.perf_counter()
  bar.close()
  done = step == cfg.steps
  writer.write(kind="done" if done else "stopped", step=step,
               compile_s=compile_s, train_s=train_s)
  writer.close()
  return done


# ----------------------------------------------------------------------------
# Report: summary table and plots from the metrics files.


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

  @classmethod
  def load(cls, path: pathlib.Path) -> Run:
    rows = _read_jsonl(path)
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
        end=(by_kind.get("done") or by_kind.get("stopped") or [{}])[-1])

  @property
  def steps_done(self) -> int:
    return int(self.train["step"][-1]) + 1 if self.train["step"].size else 0

  def final_train_loss(self) -> float:
    """Mean training loss over the last 5% of the steps run."""
    n = max(1, self.steps_done // 20)
    return float(np.mean(self.train["loss"][-n:])) if n else math.nan

  def final_val_loss(self) -> float:
    return float(self.val["loss"][-1]) if self.val["loss"].size else math.nan

  def role_series(self, metric: str) -> dict[str, np.ndarray]:
    """Per role: ``metric`` averaged over layers and both GEMMs, per stats step."""
    out = {}
    for role in ROLES:
      cols = [v for k, v in self.stats.items()
              if _split_key(k)[2] == role and _split_key(k)[3] == metric]
      if cols:
        out[role] = np.mean(cols, axis=0)
    return out

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


def _split_key(key: str) -> tuple[str, str, str, str]:
  """'<layer path>/<gemm>/<role>/<metric>' -> its four parts."""
  layer, gemm, role, metric = key.rsplit("/", 3)
  return layer, gemm, role, metric


def metrics_files(directory: pathlib.Path) -> list[pathlib.Path]:
  """``directory``'s ``*.jsonl`` and ``*.jsonl.gz``; where a recipe has both,
  the uncompressed one (a run in progress writes it)."""
  files = {p.name: p for p in sorted(directory.glob("*.jsonl.gz"))}
  files.update((p.name + ".gz", p) for p in sorted(directory.glob("*.jsonl")))
  return [files[k] for k in sorted(files)]


def load_runs(directory: pathlib.Path) -> list[Run]:
  """Every metrics file in ``directory`` (``metrics_files``), in ``RECIPES`` order."""
  if not directory.is_dir():
    raise SystemExit(f"error: {directory} is not a directory.")
  runs = [Run.load(p) for p in metrics_files(directory)]
  if not runs:
    raise SystemExit(f"error: no *.jsonl or *.jsonl.gz metrics files in "
                     f"{directory}.")
  order = list(RECIPES)
  return sorted(runs, key=lambda r: (order.index(r.recipe)
                                     if r.recipe in order else len(order),
                                     r.recipe))


def summary_rows(runs: Sequence[Run]) -> list[dict[str, str]]:
  """One row of formatted cells per run."""
  base = next((r for r in runs if r.recipe == BASELINE), None)
  rows = []
  for r in runs:
    train, val = r.final_train_loss(), r.final_val_loss()
    share = {role: float(np.mean(v))
             for role, v in r.role_series("fraction_e4m3").items()}
    row = {
        "recipe": r.recipe,
        "steps": f"{r.steps_done}/{r.header['config']['steps']}",
        "train loss": f"{train:.4f}",
        "train / bf16": (f"{train / base.final_train_loss():.4f}"
                         if base else "-"),
        "val loss": f"{val:.4f}",
        "val / bf16": f"{val / base.final_val_loss():.4f}" if base else "-",
    }
    for role in ROLES:
      row[f"E4M3 {role}"] = f"{share[role]:.1%}" if role in share else "-"
    # Every role has the same number of quantizations (two GEMMs per layer),
    # so the mean of the three is the share of all of them.
    row["E4M3 all"] = (f"{np.mean(list(share.values())):.1%}"
                       if len(share) == len(ROLES) else "-")
    row["ms/step"] = f"{r.step_ms():.1f}"
    row["tokens/s"] = f"{r.tokens_per_s():,.0f}"
    rows.append(row)
  return rows


def markdown_table(rows: Sequence[dict[str, str]]) -> str:
  cols = list(rows[0])
  widths = [max(len(c), *(len(r[c]) for r in rows)) for c in cols]
  lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(cols, widths)) + " |",
           "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
  lines += ["| " + " | ".join(r[c].rjust(w) if i else r[c].ljust(w)
                              for i, (c, w) in enumerate(zip(cols, widths)))
            + " |" for r in rows]
  return "\n".join(lines)


def _smooth(x: np.ndarray, n: int) -> np.ndarray:
  """Trailing moving average over n points (fewer at the start)."""
  c = np.cumsum(np.insert(x, 0, 0.0))
  idx = np.arange(1, x.size + 1)
  lo = np.maximum(idx - n, 0)
  return (c[idx] - c[lo]) / (idx - lo)


def _recipe_colors(runs: Sequence[Run]) -> dict[str, str]:
  """One colour per recipe in every plot, though some panels skip bf16."""
  cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  return {r.recipe: cycle[k % len(cycle)] for k, r in enumerate(runs)}


def plot_losses(runs: Sequence[Run], path: pathlib.Path) -> None:
  """Training (smoothed) and validation loss, and their ratio to bf16."""
  base = next((r for r in runs if r.recipe == BASELINE), None)
  fig, axes = plt.subplots(2, 2, figsize=(12, 7), sharex="col",
                           height_ratios=(2, 1), squeeze=False)
  colors = _recipe_colors(runs)
  for r in runs:
    n = max(1, r.steps_done // 50)
    train = _smooth(r.train["loss"], n)
    style = dict(label=r.recipe, color=colors[r.recipe])
    axes[0, 0].plot(r.train["step"], train, lw=1, **style)
    axes[0, 1].plot(r.val["step"], r.val["loss"], "o-", ms=3, **style)
    if base is not None and r is not base:
      m = min(train.size, base.train["loss"].size)
      axes[1, 0].plot(r.train["step"][:m],
                      train[:m] / _smooth(base.train["loss"], n)[:m], lw=1,
                      **style)
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
    ax.set_ylabel(f"ratio to {BASELINE}")
    ax.set_xlabel("step")
    ax.legend(fontsize="small")
  _save(fig, path)


def plot_fp8_share(runs: Sequence[Run], path: pathlib.Path) -> None:
  """Share of quantizations in E4M3 per role over steps, one line per recipe."""
  fig, axes = plt.subplots(1, 3, figsize=(14, 4), sharey=True)
  colors = _recipe_colors(runs)
  for ax, role in zip(axes, ROLES):
    for r in runs:
      series = r.role_series("fraction_e4m3").get(role)
      if series is not None:
        ax.plot(r.stats_steps, 100 * series, label=r.recipe, lw=1,
                color=colors[r.recipe])
    ax.set_title(f"{role}s ({GEMMS_OF[role]})")
    ax.set_xlabel("step")
    ax.set_ylim(-2, 102)
  axes[0].set_ylabel("quantizations in E4M3 (%)")
  axes[-1].legend()
  _save(fig, path)


def plot_error_heatmap(run: Run, path: pathlib.Path) -> bool:
  """Relative error of E4M3 per layer and GEMM, per role, over steps.

  Returns:
    False (and writes nothing) if the recipe has no E4M3 candidate.
  """
  rows_by_role = {role: sorted(
      (k for k in run.stats if _split_key(k)[2] == role
       and _split_key(k)[3] == "error_e4m3"), key=_layer_order)
      for role in ROLES}
  if not any(rows_by_role.values()) or run.stats_steps.size == 0:
    return False
  vmax = max(2 * THRESHOLD, max(float(np.max(run.stats[k]))
                                for keys in rows_by_role.values()
                                for k in keys))
  norm = matplotlib.colors.TwoSlopeNorm(vmin=0.0, vcenter=THRESHOLD, vmax=vmax)
  n_rows = max(len(keys) for keys in rows_by_role.values())
  # Constrained layout reserves room for each panel's own row labels, which
  # differ between panels (the GEMMs of the role), so none overlaps the
  # panel to its left.
  fig, axes = plt.subplots(1, 3, figsize=(15, 1.8 + 0.15 * n_rows),
                           squeeze=False, layout="constrained")
  fig.get_layout_engine().set(wspace=0.04)
  image = None
  for ax, role in zip(axes[0], ROLES):
    keys = rows_by_role[role]
    data = np.array([run.stats[k] for k in keys])
    step = run.stats_steps
    half = (step[1] - step[0]) / 2 if step.size > 1 else 0.5
    image = ax.imshow(data, aspect="auto", cmap="RdBu_r", norm=norm,
                      interpolation="nearest",
                      extent=(step[0] - half, step[-1] + half,
                              len(keys) - 0.5, -0.5))
    ax.set_yticks(range(len(keys)), [_row_label(k) for k in keys],
                  fontsize=6 if len(keys) > 24 else 8)
    ax.set_title(f"{role}s ({GEMMS_OF[role]})")
    ax.set_xlabel("step")
  axes[0, 0].set_ylabel("block, layer, GEMM")
  cbar = fig.colorbar(image, ax=axes[0].tolist(), fraction=0.02, pad=0.01)
  cbar.set_label(f"relative error in E4M3 (threshold {THRESHOLD:.1%})")
  fig.suptitle(f"{run.recipe}: relative error of each quantization had it "
               "been E4M3 (red: above the MoR threshold, kept in BF16 by MoR)")
  _save(fig, path, tight=False)
  return True


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
  layer, gemm, _, _ = _split_key(key)
  block, name = _layer_parts(layer)
  return f"{block} {name} {gemm}"


def _layer_order(key: str) -> tuple:
  """Sort by block number (numerically), then position in the block, then GEMM."""
  layer, gemm, _, _ = _split_key(key)
  order = ("qkv", "out", "fc1", "fc2")
  block, name = _layer_parts(layer)
  return (block, order.index(name) if name in order else len(order), layer,
          ("fprop", "dgrad", "wgrad").index(gemm))


def _save(fig, path: pathlib.Path, tight: bool = True) -> None:
  if tight:
    fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


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
  notes = [
      f"Model: {h['params'] / 1e6:.1f}M parameters, {h['config']['layers']} "
      f"layers, d_model {h['config']['d_model']}; "
      f"{h['tokens_per_step']:,} tokens/step; corpus {h['corpus']['root']} "
      f"(Python {h['corpus']['python']}, fingerprint "
      f"{h['corpus']['fingerprint']}); {h['versions']['device']}, jax "
      f"{h['versions']['jax']}.",
      "train loss: mean over the last 5% of steps; val loss: at the last "
      "step, with the recipe's own forward pass; E4M3: share of "
      "quantizations (tensors, or blocks for sub-tensor recipes) in E4M3 "
      "over all layers, both GEMMs of the role and every logged step; "
      "E4M3 all: the same over all three roles (six quantizations per "
      "layer); ms/step: median, excluding compilation and validation; "
      "tokens/s: at that median.",
  ]
  meshes = {r.recipe: r.mesh for r in runs}
  if set(meshes.values()) != {"none"}:
    notes.append("Mesh (" + ", ".join(MESH_AXES) + "): " + "; ".join(
        f"{k} {v} over {runs[i].header['versions']['devices']} devices"
        if v != "none" else f"{k} one device"
        for i, (k, v) in enumerate(meshes.items())) + ".")
  if len(corpora) > 1:
    notes.append(f"WARNING: the runs used different corpora {sorted(corpora)};"
                 " their losses are not comparable.")
  text = markdown_table(rows) + "\n\n" + "\n\n".join(notes) + "\n"
  (directory / "summary.md").write_text(text)
  plot_losses(runs, directory / "loss.png")
  plot_fp8_share(runs, directory / "fp8_share.png")
  for r in runs:
    plot_error_heatmap(r, directory / f"error_heatmap_{r.recipe}.png")
  return text


# ----------------------------------------------------------------------------
# Command line.


def _recipe_list(text: str) -> tuple[str, ...]:
  names = tuple(RECIPES) if text == "all" else tuple(
      n.strip() for n in text.split(",") if n.strip())
  unknown = [n for n in names if n not in RECIPES]
  if unknown or not names:
    raise argparse.ArgumentTypeError(
        f"unknown recipe(s) {unknown}; choose from {', '.join(RECIPES)} or "
        "'all'.")
  return names


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  recipes = "\n".join(f"  {name:12} {desc}"
                      for name, (desc, _) in RECIPES.items())
  presets = "\n".join(
      f"  {name:5} {c.layers} layers, d_model {c.d_model}, seq {c.seq_len}, "
      f"batch {c.batch}, {c.steps} steps; recipes {','.join(r)}"
      for name, (c, r) in PRESETS.items())
  parser = argparse.ArgumentParser(
      prog="train_lm.py",
      description=__doc__.split("\n\n")[0] + "\n\n" + __doc__.split(
          "\n\n", 1)[1].rsplit("\n\nRun:", 1)[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog=f"recipes (every GEMM operand: activations, weights, gradients):\n"
             f"{recipes}\n\npresets:\n{presets}\n\n"
             "A GPU run one recipe per command (resumable after "
             "--time-limit):\n"
             "  python examples/train_lm.py --preset gpu --recipes bf16 "
             "--out DIR --time-limit 540\n"
             "  ... one command per recipe, then:\n"
             "  python examples/train_lm.py --report DIR")
  parser.add_argument("--preset", choices=list(PRESETS), default="demo",
                      help="settings and recipes to start from (default demo)")
  parser.add_argument("--recipes", type=_recipe_list, default=None,
                      help="comma-separated recipes, or 'all' (default: the "
                      "preset's)")
  parser.add_argument("--out", type=pathlib.Path, default=None,
                      help="output directory (default runs/train_lm/<preset>);"
                      " the report covers every recipe's file in it")
  parser.add_argument("--report", type=pathlib.Path, metavar="DIR",
                      help="only build the summary and plots from DIR/*.jsonl "
                      "(or *.jsonl.gz)")
  parser.add_argument("--time-limit", type=float, default=math.inf,
                      metavar="SECONDS",
                      help="checkpoint and stop once this much time has "
                      "passed since start; the same command resumes")
  parser.add_argument("--no-progress", action="store_true",
                      help="no progress bar")
  scale = parser.add_argument_group(
      "scaling out (the same results up to the order of sums)")
  scale.add_argument(
      "--mesh", type=parse_mesh, default=None, metavar="data=D,fsdp=F,tensor=T",
      help="shard over a mesh of all devices: the batch over data and fsdp, "
      "QKV/FC1 kernels column- and attention-output/FC2 kernels row-parallel "
      "over tensor and split over fsdp on their other axis; omitted axes are "
      "1 (default: one device, no mesh)")
  scale.add_argument(
      "--distributed", action="store_true",
      help="call jax.distributed.initialize() first: one process per host "
      "(or per GPU), all running the same command; the cluster (SLURM, Open "
      "MPI, ...) is detected unless the next three flags are given")
  scale.add_argument("--coordinator", metavar="HOST:PORT",
                     help="with --distributed: process 0's address")
  scale.add_argument("--num-processes", type=int, metavar="N",
                     help="with --distributed: the number of processes")
  scale.add_argument("--process-id", type=int, metavar="I",
                     help="with --distributed: this process's index, 0..N-1")
  group = parser.add_argument_group("settings (override the preset)")
  for f in dataclasses.fields(Config):
    group.add_argument(f"--{_flag(f.name)}", type=type(f.default),
                       default=None, metavar=f.name.upper(),
                       help=f.metadata["help"])
  return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> Config:
  base, _ = PRESETS[args.preset]
  overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(Config)
               if getattr(args, f.name) is not None}
  try:
    return dataclasses.replace(base, **overrides)
  except ValueError as e:
    raise SystemExit(f"error: {e}") from None


def main(argv: Sequence[str] | None = None) -> None:
  start = time.monotonic()
  args = parse_args(argv)
  if args.report is not None:
    print(report(args.report))
    print(f"plots and summary in {args.report}")
    return
  cfg = config_from_args(args)
  cluster = (args.coordinator, args.num_processes, args.process_id)
  if not args.distributed and any(v is not None for v in cluster):
    raise SystemExit("error: --coordinator, --num-processes and --process-id "
                     "need --distributed.")
  if args.distributed:
    jax.distributed.initialize(*cluster)
    if jax.process_count() > 1 and math.isfinite(args.time_limit):
      raise SystemExit("error: --time-limit (checkpoint and resume) runs in "
                       "one process only, not with several.")
  if args.mesh is not None:
    try:
      check_mesh(args.mesh, cfg, jax.device_count())
    except ValueError as e:
      raise SystemExit(f"error: {e}") from None
  # Every process trains; process 0 alone prints and writes.
  say = print if jax.process_index() == 0 else lambda *_, **__: None
  recipes = args.recipes or PRESETS[args.preset][1]
  out = args.out or pathlib.Path("runs", "train_lm", args.preset)
  corpus = load_corpus(cfg.val_fraction)
  c = corpus.describe()
  say(f"corpus: {c['root']} (Python {c['python']}): {c['train_files']} "
      f"training files ({c['train_bytes'] / 1e6:.1f} MB), {c['val_files']} "
      f"validation files ({c['val_bytes'] / 1e6:.1f} MB), fingerprint "
      f"{c['fingerprint']}")
  shapes = jax.eval_shape(
      Transformer(cfg, RECIPES[recipes[0]][1]).init, jax.random.key(0),
      jnp.zeros((1, cfg.seq_len), jnp.int32))
  n_params = count_params(shapes["params"])
  say(f"model: {n_params / 1e6:.2f}M parameters; {cfg.batch * cfg.seq_len:,}"
      f" tokens/step ({cfg.steps * cfg.batch * cfg.seq_len / 1e6:.1f}M in "
      f"{cfg.steps} steps); {flops_per_step(cfg, n_params) / 1e12:.3f} "
      f"TFLOP/step; {versions()['device']} ({jax.default_backend()})")
  say(f"devices: {format_mesh(args.mesh) if args.mesh else 'one'} of "
      f"{jax.device_count()} ({jax.process_count()} process(es))")
  for recipe in recipes:
    if not train_recipe(recipe, cfg, corpus, out,
                        deadline=start + args.time_limit,
                        progress=not args.no_progress, mesh_shape=args.mesh):
      say(f"stopped at --time-limit {args.time_limit:g} s during {recipe}; "
          "run the same command again to resume.")
      return
    if jax.process_index() == 0:
      run = Run.load(out / f"{recipe}.jsonl")
      say(f"{recipe}: {run.steps_done} steps, median {run.step_ms():.1f} "
          f"ms/step, {run.tokens_per_s():,.0f} tokens/s on mesh {run.mesh}; "
          f"compiled in {run.end.get('compile_s', math.nan):.1f} s")
  if jax.process_index() == 0:
    print()
    print(report(out))
    print(f"metrics, summary and plots in {out}")


if __name__ == "__main__":
  main()
