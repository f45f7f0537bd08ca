#!/bin/bash
# Seventeenth session, call 2: chaining per loop (chain_fp8 for the FP8
# loop, chain_wide for the 16-bit one), the layer in turns in one process,
# then gemm.py's own timing (each case's rounds together) in another.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
export PYTHONPATH=$PWD
timeout 200 python3 scratch/layer_ab.py 16384x8192x8192 "mor_fp8:default;mor_fp8:chain_fp8=True;mor_rejected:default;mor_rejected:chain_wide=True" 11 2>&1 | grep -v "Deprec\|^ \|^$" | tee $OUT/r/layer_ab.log | grep '"bits"\|layer_ab'
(cd benchmarks && timeout 200 python3 gemm.py --only dense --dense-shapes 16384x8192x8192 --dense-layers bf16,mor_fp8,mor_rejected \
  --gemm-configs "default;chain_fp8=True,chain_wide=True" --iters 10) 2>&1 | tee $OUT/r/dense_chain.log | grep '"layer"'
cd $OUT && tar czf r.tgz r
