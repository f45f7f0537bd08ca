#!/bin/bash
# Thirty-first session, call 5: the 72-GEMM chain and the 8192 layer on the
# final kernel (the dequantizing loop's plain tiles change no FP8 or BF16
# loop; this checks that nothing else moved).
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
cd benchmarks
export PYTHONPATH=$PWD/..:$PWD
stamp chain
timeout 100 python3 gemm.py --only chain --iters 10 2>&1 | tee $OUT/r/chain.log | grep '"chain"\|Error'
stamp dense
timeout 140 python3 gemm.py --only dense --dense-shapes 16384x8192x8192 --dense-layers bf16,flax_fp8,mor_fp8,mor_rejected --iters 10 2>&1 | tee $OUT/r/dense.log | grep '"dense"\|Error'
stamp end
