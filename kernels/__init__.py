"""Pallas GPU kernels, shipped as ``mor_jax.kernels``.

The directory lives at the repository's top level (``kernels/``) and is
installed inside the package: pyproject.toml maps the package
``mor_jax.kernels`` to it (``[tool.setuptools.package-dir]``), so code imports
``mor_jax.kernels.quantize``, never ``kernels.quantize``. The kernels import
mor_jax's private modules for the numerics they share with the XLA
reference; ``mor_jax._dispatch`` is the only place that calls them.

- ``quantize``: the two quantization passes (Triton backend).
- ``dual``: both GEMM orientations of a matrix from one read (Triton).
- ``gemm``: the FP8 GEMM that falls back to BF16 on the device, reading
  each operand of its BF16 path as it came or its codes dequantized in
  registers (Mosaic GPU).
- ``block_gemm``: a GEMM of 128x128 blocks (or 1x128 tiles) each in FP8 or
  BF16, as sub-tensor MoR chose (Mosaic GPU); what execution "fp8" runs
  for 128x128-block recipes (``mor_jax._block``).
- ``transpose``: the transpose of one-byte FP8 codes, for the block GEMM's
  operands of transposed views (Triton).
- ``wide``: the block GEMM's 16-bit values, written only in the blocks its
  BF16 loop reads (Triton).
- ``sharding``: the kernels per shard under ``jit`` (custom_partitioning).
- ``KernelConfig``: their tuning, a hashable value that is part of every
  cache key, so two tunings never share a compiled kernel.
"""

from __future__ import annotations

import dataclasses

from mor_jax.kernels import block_gemm as block_gemm
from mor_jax.kernels import dual as dual
from mor_jax.kernels import gemm as gemm
from mor_jax.kernels import quantize as quantize
from mor_jax.kernels import sharding as sharding
from mor_jax.kernels import transpose as transpose
from mor_jax.kernels import wide as wide
from mor_jax.kernels.dual import DualConfig as DualConfig
from mor_jax.kernels.dual import PassTiling as PassTiling
from mor_jax.kernels.gemm import GemmConfig as GemmConfig
from mor_jax.kernels.quantize import TileConfig as TileConfig


@dataclasses.dataclass(frozen=True, kw_only=True)
class KernelConfig:
  """The tuning of every kernel (pass it to ``mor_jax.use_implementation``).

  Attributes:
    quantize: tile sizes and warps of the quantization passes.
    dual: tiles of the two-orientation passes.
    gemm: tiles of the GEMM.

  Examples:
    >>> import mor_jax
    >>> from mor_jax.kernels import KernelConfig, TileConfig
    >>> config = KernelConfig(quantize=TileConfig(tile_elements=8192))
    >>> with mor_jax.use_implementation("pallas", config):
    ...   mor_jax.implementation()
    'pallas'
  """

  quantize: TileConfig = TileConfig()
  dual: DualConfig = DualConfig()
  gemm: GemmConfig = GemmConfig()

  def __post_init__(self):
    for f in dataclasses.fields(self):
      value, want = getattr(self, f.name), type(f.default)
      if not isinstance(value, want):
        raise TypeError(f"KernelConfig.{f.name} must be a "
                        f"mor_jax.kernels.{want.__name__}, got {value!r}.")
