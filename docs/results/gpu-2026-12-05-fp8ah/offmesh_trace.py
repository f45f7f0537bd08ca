"""Thirty-eighth session, call 3: the tracebacks of offmesh.py's failures
on one GPU (arrays off the mesh, then on it), and under XLA's quantizers."""
import traceback
import jax
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
import mor_jax
from tests import test_dense_sharding as t

x = t._outliers((64, 128), 3, axis=0)  # pylint: disable=protected-access
mesh = jax.make_mesh((1, 1), ("data", "model"), devices=jax.devices()[:1],
                     axis_types=(AxisType.Explicit,) * 2)
for impl in ("pallas", "xla"):
  for where in ("off", "on"):
    for name in ("dequantize", "mor_quantize, sub-tensor"):
      fn = t.OFF_MESH[name]
      try:
        with mor_jax.use_implementation(impl), jax.set_mesh(mesh):
          a = x if where == "off" else jax.device_put(
              x, NamedSharding(mesh, P("data", "model")))
          jax.block_until_ready(jax.jit(fn)(a))
        print("ok  ", impl, where, name, flush=True)
      except Exception:  # pylint: disable=broad-except
        print("FAIL", impl, where, name, flush=True)
        if impl == "pallas" and name == "dequantize":
          traceback.print_exc()
