#!/bin/bash
# Eighteenth session, call 3: is the per-channel GEMM's gap to cuBLAS the
# last, partly empty round of tiles? 128x256 tiles over 132 SMs: M 16384
# gives 31.03 rounds (32 run), 16896 exactly 32, 16128 30.5 (31 run).
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
export PYTHONPATH=$PWD
cd benchmarks
for m in 16384 16896 16128; do
  timeout 150 python3 profile.py --sweep gemm --variants 0,6 --shape ${m}x8192x8192 2>&1 | grep '"sweep"' | tee -a $OUT/r/sweep_rounds.log
done
