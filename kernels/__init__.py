"""Pallas GPU kernels, shipped as ``mor_jax.kernels``.

The directory lives at the repository's top level (``kernels/``) and is
installed inside the package: pyproject.toml maps the package
``mor_jax.kernels`` to it (``[tool.setuptools.package-dir]``), so code imports
``mor_jax.kernels.quantize``, never ``kernels.quantize``. The kernels import
mor_jax's private modules for the numerics they share with the XLA
reference; ``mor_jax._dispatch`` is the only place that calls them.

- ``quantize``: the two quantization passes (Triton backend).
- ``sharding``: the passes per shard under ``jit`` (custom_partitioning).
- ``KernelConfig``: their tuning, a hashable value that is part of every
  cache key, so two tunings never share a compiled kernel.
"""

from __future__ import annotations

import dataclasses

from mor_jax.kernels import quantize as quantize
from mor_jax.kernels import sharding as sharding
from mor_jax.kernels.quantize import TileConfig as TileConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class KernelConfig:
  """The tuning of every kernel (pass it to ``mor_jax.use_implementation``).

  Attributes:
    quantize: tile sizes and warps of the quantization passes.

  Examples:
    >>> import mor_jax
    >>> from mor_jax.kernels import KernelConfig, TileConfig
    >>> config = KernelConfig(quantize=TileConfig(tile_elements=8192))
    >>> with mor_jax.use_implementation("pallas", config):
    ...   mor_jax.implementation()
    'pallas'
  """

  quantize: TileConfig = TileConfig()

  def __post_init__(self):
    if not isinstance(self.quantize, TileConfig):
      raise TypeError("quantize must be a mor_jax.kernels.TileConfig, got "
                      f"{self.quantize!r}.")
