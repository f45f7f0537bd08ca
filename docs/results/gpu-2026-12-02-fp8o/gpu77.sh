#!/bin/bash
# Sixteenth session, call 2: the output stored from registers straight to
# GMEM ("direct") against through shared memory and TMA ("smem"): the GEMM
# kernel alone, the 8192 layer, the block GEMM.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
export PYTHONPATH=$PWD
cd benchmarks
for s in 16384x8192x8192 16384x4096x4096; do
  timeout 100 python3 profile.py --sweep gemm --variants 0,6 --shape $s --steps 5 2>&1 | grep sweep | tee -a $OUT/r/sweep_epilogue.log
done
timeout 150 python3 gemm.py --only dense --dense-shapes 16384x8192x8192 --dense-layers bf16,mor_fp8,mor_rejected \
  --gemm-configs "default;epilogue=direct" --iters 10 2>&1 | tee $OUT/r/dense_epilogue.log | grep '"layer"'
timeout 170 python3 gemm.py --only block --block-variants 0,6 --iters 10 2>&1 | tee $OUT/r/block_epilogue.log | grep block_kernel
cd $OUT && tar czf r.tgz r
