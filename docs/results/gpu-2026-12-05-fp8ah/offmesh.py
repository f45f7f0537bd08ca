"""Thirty-eighth session: 8cf5143's path on one GPU. Under jax.set_mesh (a
1x1 mesh of Explicit axes), tests/test_dense_sharding.py's OFF_MESH
functions on arrays never put on the mesh give their results without the
mesh, bit for bit, eagerly and under jit, with the GPU's kernels (the
test itself needs 8 devices).

Run from the repository root: PYTHONPATH=$PWD python3 <this>
"""

import chex
import jax
from jax.sharding import AxisType

from tests import test_dense_sharding as t

x = t._outliers((64, 128), 3, axis=0)  # pylint: disable=protected-access
mesh = jax.make_mesh((1, 1), ("data", "model"), devices=jax.devices()[:1],
                     axis_types=(AxisType.Explicit,) * 2)
failed = 0
for name, fn in t.OFF_MESH.items():
  want = jax.jit(fn)(x)
  try:
    with jax.set_mesh(mesh):
      for got in (fn(x), jax.jit(fn)(x)):
        chex.assert_trees_all_equal(got, want)
    print("ok  ", name, flush=True)
  except Exception as e:  # pylint: disable=broad-except
    failed += 1
    print("FAIL", name, type(e).__name__, str(e)[:300], flush=True)
print(f"{len(t.OFF_MESH) - failed} of {len(t.OFF_MESH)} bit for bit")
