#!/bin/bash
# Sixteenth session, call 3: GemmConfig(chain_tiles=True), one pipeline
# across each block's tiles (without delayed release), against the default:
# bit for bit, the kernel alone at K=4096, the 8192 layer.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
export PYTHONPATH=$PWD
timeout 120 python3 scratch/chain_check.py 2>&1 | tee $OUT/r/chain_check.log | grep -v "^{" | tail -5
grep -c '"bit_equal": true' $OUT/r/chain_check.log
cd benchmarks
timeout 120 python3 profile.py --sweep gemm --variants 0,6 --shape 16384x4096x4096 --steps 5 2>&1 | grep sweep | tee -a $OUT/r/sweep_chain.log
timeout 170 python3 gemm.py --only dense --dense-shapes 16384x8192x8192 --dense-layers bf16,mor_fp8,mor_rejected \
  --gemm-configs "default;chain_tiles=True" --iters 10 2>&1 | tee $OUT/r/dense_chain.log | grep '"layer"'
cd $OUT && tar czf r.tgz r
