"""Sharding: a (data, fsdp, tensor) mesh, with MaxText's axis names.

The model code does not change under a mesh: the training loop puts these
``NamedSharding``s on the parameters, the optimizer state and the batch, and
``jax.jit`` propagates them through ``MoRDense``, whose tensor-level
decisions still cover each global tensor.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from .config import Config

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
  """The inverse of ``parse_mesh`` (all axes spelt out); 'none' for no mesh."""
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
