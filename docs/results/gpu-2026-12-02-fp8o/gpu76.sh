#!/bin/bash
# Sixteenth session, call 1: where kernels/gemm.py's FP8 path loses time
# against cuBLAS: a K sweep at M=16384, N=8192 (per-tile fixed cost against
# per-K-step cost) and gpu1b_wide's GEMM shapes.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
export PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.draw,temperature.gpu --format=csv | tee $OUT/r/smi.txt
cd benchmarks
for s in 16384x2048x8192 16384x4096x8192 16384x8192x8192 16384x16384x8192 \
         16384x4096x4096 16384x4096x16384 16384x16384x4096 4096x16384x16384; do
  timeout 120 python3 profile.py --sweep gemm --variants 0 --shape $s --steps 5 2>&1 | grep sweep | tee -a $OUT/r/ksweep.log
done
cd $OUT && tar czf r.tgz r
