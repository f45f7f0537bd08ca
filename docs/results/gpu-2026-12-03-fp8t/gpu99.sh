#!/bin/bash
# Twenty-first session, call 2: the layer's energy per step (gemm.py
# --power), alone and in turns; GEMM tile orders and the codes pass with 8
# warps timed in turns with their energy.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
export PYTHONPATH=$PWD:$PWD/benchmarks
(cd benchmarks && timeout 120 python3 gemm.py --only dense --power --dense-shapes 16384x8192x8192 --dense-layers bf16,flax_fp8,mor_fp8,mor_rejected --iters 100 2>&1 | grep '{' | tee $OUT/r/dense_power.log)
# Ran on 560aadf: since c5fd41a gemm.py refuses --power with --in-turns.
(cd benchmarks && timeout 170 python3 gemm.py --only dense --power --in-turns --dense-shapes 16384x8192x8192 --dense-layers bf16,mor_fp8 --gemm-configs "default;grid_tile_width=16;grid_tile_width=4" --dual-configs "default;codes.num_warps=8" --iters 10 2>&1 | grep '{' | tee $OUT/r/dense_turns.log)
