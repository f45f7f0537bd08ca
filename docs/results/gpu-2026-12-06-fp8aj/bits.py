"""The block GEMM's outputs on a set of cases, saved so that two versions of
the kernel can be compared bit for bit (each run in its own process, with
its own mor_jax first on PYTHONPATH), and each against the jnp twin.

  python3 bits.py --out new.npz
  PYTHONPATH=old:. python3 bits.py --out old.npz
  python3 bits.py --compare new.npz old.npz
"""

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np

import mor_jax
from mor_jax.kernels import block_gemm as bg
from tests.blocks import TWO_WAY, data, operand, stored_transposed

TILES = mor_jax.SubTensorMoR(block_shape=(1, 128))
# name: (m, k, n, share of X's and W's blocks BF16, X's recipe, W's recipe,
# X's wide values stored [K, rows], BlockGemmConfig's stages or None).
CASES = {
    "ragged_0": (300, 520, 260, 0.0, TWO_WAY, TWO_WAY, False, None),
    "ragged_10": (300, 520, 260, 0.1, TWO_WAY, TWO_WAY, False, None),
    "ragged_50": (300, 520, 260, 0.5, TWO_WAY, TWO_WAY, False, None),
    "all_bf16": (512, 1024, 512, 1.0, TWO_WAY, TWO_WAY, False, None),
    "tiles_x_50": (200, 300, 130, 0.5, TILES, TWO_WAY, False, None),
    "tiles_w_50": (200, 300, 130, 0.5, TWO_WAY, TILES, False, None),
    "tiles_both_10": (200, 300, 130, 0.1, TILES, TILES, False, None),
    # 256 tiles on 132 blocks: steps go on across a block's tiles.
    "many_tiles_10": (2048, 2048, 2048, 0.1, TWO_WAY, TWO_WAY, False, None),
    "many_tiles_50_xt": (2048, 2048, 2048, 0.5, TWO_WAY, TWO_WAY, True, None),
    "deep_50_stages2": (1024, 4096, 1024, 0.5, TWO_WAY, TWO_WAY, False, 2),
    "deep_10_stages3": (1024, 4096, 1024, 0.1, TWO_WAY, TWO_WAY, True, 3),
}


def run(path: str, only: list[str]) -> None:
  got = {}
  for name, (m, k, n, share, rx, rw, xt, stages) in CASES.items():
    if only and name not in only:
      continue
    x, w = data(m, k, n, share)
    a, _ = operand(jnp.asarray(x, jnp.bfloat16), rx)
    b, _ = operand(jnp.asarray(w.T, jnp.bfloat16), rw)
    if xt:
      a = stored_transposed(a)
    cfg = bg.BlockGemmConfig() if stages is None else bg.BlockGemmConfig(
        stages=stages)
    y = np.asarray(bg.block_gemm(a, b, out_dtype=jnp.float32, config=cfg))
    want = np.asarray(bg.block_gemm_reference(
        a, b, out_dtype=jnp.float32, precision=jax.lax.Precision.HIGHEST),
        np.float64)
    rel = float(np.linalg.norm(y - want) / np.linalg.norm(want))
    print(json.dumps(dict(case=name, rel_to_twin=rel,
                          bf16_pairs=float(np.mean(np.asarray(a.rep) ==
                                                   bg.REP_BF16)))),
          flush=True)
    got[name] = y
  np.savez(path, **got)


def compare(new: str, old: str) -> None:
  a, b = np.load(new), np.load(old)
  for name in a.files:
    same = np.array_equal(a[name].view(np.uint32), b[name].view(np.uint32))
    print(f"{name}: {'bit for bit' if same else 'DIFFERENT'}"
          + ("" if same else f" ({np.mean(a[name] != b[name]):.2e} of "
             f"elements)"), flush=True)


if __name__ == "__main__":
  ap = argparse.ArgumentParser()
  ap.add_argument("--out")
  ap.add_argument("--compare", nargs=2)
  ap.add_argument("--only", default="", help="comma-separated cases")
  args = ap.parse_args()
  if args.compare:
    compare(*args.compare)
  else:
    run(args.out, [c for c in args.only.split(",") if c])
