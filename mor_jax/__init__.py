"""mor_jax: Mixture-of-Representations FP8 training for JAX and Flax.

Users import ``mor_jax`` (numerics, MoR selection, the quantized
dot_general) and ``mor_jax.dense`` (Flax layers). Everything else is private.
"""

from mor_jax._formats import BF16 as BF16
from mor_jax._formats import E4M3 as E4M3
from mor_jax._formats import E5M2 as E5M2
from mor_jax._formats import E8M0 as E8M0
from mor_jax._formats import Representation as Representation
from mor_jax._quantize import QuantizedArray as QuantizedArray
from mor_jax._quantize import compute_scales as compute_scales
from mor_jax._quantize import dequantize as dequantize
from mor_jax._quantize import fake_quantize as fake_quantize
from mor_jax._quantize import quantize as quantize
from mor_jax._quantize import relative_error as relative_error

__version__ = "0.1.0"

__all__ = [
    "BF16",
    "E4M3",
    "E5M2",
    "E8M0",
    "QuantizedArray",
    "Representation",
    "compute_scales",
    "dequantize",
    "fake_quantize",
    "quantize",
    "relative_error",
]
