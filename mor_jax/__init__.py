"""mor_jax: Mixture-of-Representations FP8 training for JAX and Flax.

Users import ``mor_jax`` (numerics, MoR selection, the quantized
dot_general, ``describe``, ``summarize`` and ``split_variables``),
``mor_jax.dense`` (Flax linen layers and ``convert``) and ``mor_jax.nnx``
(Flax NNX layers and ``convert``), both reachable as attributes after
``import mor_jax``, and ``mor_jax.report`` (tables, a CSV writer, plots).
Everything else is private.
"""

from mor_jax._dispatch import implementation as implementation
from mor_jax._dispatch import set_implementation as set_implementation
from mor_jax._dispatch import use_implementation as use_implementation
from mor_jax._dot import dot_general as dot_general
from mor_jax._dot import dot_general_with_stats as dot_general_with_stats
from mor_jax._dot import zero_probes as zero_probes
from mor_jax._formats import BF16 as BF16
from mor_jax._formats import E4M3 as E4M3
from mor_jax._formats import E5M2 as E5M2
from mor_jax._formats import E8M0 as E8M0
from mor_jax._formats import Representation as Representation
from mor_jax._mor import Measurements as Measurements
from mor_jax._mor import mor_codes as mor_codes
from mor_jax._mor import mor_quantize as mor_quantize
from mor_jax._mor import MoRCodes as MoRCodes
from mor_jax._mor import MoRResult as MoRResult
from mor_jax._mor import MoRStats as MoRStats
from mor_jax._policy import Policy as Policy
from mor_jax._policy import PolicyRules as PolicyRules
from mor_jax._quantize import compute_scales as compute_scales
from mor_jax._quantize import dequantize as dequantize
from mor_jax._quantize import fake_quantize as fake_quantize
from mor_jax._quantize import quantize as quantize
from mor_jax._quantize import QuantizedArray as QuantizedArray
from mor_jax._quantize import relative_error as relative_error
from mor_jax._recipes import Always as Always
from mor_jax._recipes import DynamicRangeWithin as DynamicRangeWithin
from mor_jax._recipes import ErrorBelow as ErrorBelow
from mor_jax._recipes import ErrorNotAbove as ErrorNotAbove
from mor_jax._recipes import NoQuant as NoQuant
from mor_jax._recipes import Recipe as Recipe
from mor_jax._recipes import Static as Static
from mor_jax._recipes import SubTensorMoR as SubTensorMoR
from mor_jax._recipes import TensorLevelMoR as TensorLevelMoR
from mor_jax._stats import NamedMoRStats as NamedMoRStats
from mor_jax._summary import summarize as summarize
from mor_jax._summary import Summary as Summary
from mor_jax._variables import split_variables as split_variables
# The Flax modules last: they build on the names above.
from mor_jax import dense as dense  # pylint: disable=g-bad-import-order
from mor_jax import nnx as nnx  # pylint: disable=g-bad-import-order
from mor_jax._describe import describe as describe

__version__ = "0.1.0"

__all__ = [
    "Always",
    "BF16",
    "E4M3",
    "E5M2",
    "E8M0",
    "DynamicRangeWithin",
    "ErrorBelow",
    "ErrorNotAbove",
    "Measurements",
    "MoRCodes",
    "MoRResult",
    "MoRStats",
    "NamedMoRStats",
    "NoQuant",
    "Policy",
    "PolicyRules",
    "QuantizedArray",
    "Recipe",
    "Representation",
    "Static",
    "Summary",
    "SubTensorMoR",
    "TensorLevelMoR",
    "compute_scales",
    "dense",
    "dequantize",
    "describe",
    "dot_general",
    "dot_general_with_stats",
    "fake_quantize",
    "implementation",
    "mor_codes",
    "mor_quantize",
    "nnx",
    "quantize",
    "relative_error",
    "set_implementation",
    "split_variables",
    "summarize",
    "use_implementation",
    "zero_probes",
]
