#!/bin/bash
# Nineteenth session, call 3: the (16384, 8192, 8192) layer in turns again in
# a second process, the GEMM configurations in the other order (call 1 had
# the pipeline per tile 0.7% ahead of the chained default); then the layer's
# kernels per step on the chained default (profile.py), accepted and rejected.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
export PYTHONPATH=$PWD
cd benchmarks
timeout 230 python3 gemm.py --only dense --in-turns --dense-shapes 16384x8192x8192 --dense-layers bf16,flax_fp8,mor_fp8,mor_rejected --gemm-configs "chain_fp8=False;default" --iters 10 2>&1 | tee $OUT/r/dense_turns_full.log | grep '"dense"' | tee $OUT/r/dense_turns.log
timeout 150 python3 profile.py --layers bf16,mor_fp8,mor_rejected --top 12 2>&1 | grep '"run"' | tee $OUT/r/profile_layers.log | grep busy_ms
