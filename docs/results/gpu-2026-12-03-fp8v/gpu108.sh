#!/bin/bash
# Twenty-third session, call 1: the block GEMM's all-BF16 path (gemm.py's
# 16-bit loop when no block pair runs in FP8). The block bench with the
# default, the block loops alone (wide=None) and gemm.py's tiles without
# clusters, cuBLAS BF16 in the same run; then the GPU tests of both kernels.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
stamp block
(cd benchmarks && PYTHONPATH=$PWD/..:$PWD timeout 230 python3 gemm.py --only block --block-variants 0,6,7 --iters 10 2>&1 | grep -v "^W\|^I\|Deprec" | tee $OUT/r/bench_block.log)
stamp test_block_gemm
PYTHONPATH=$PWD timeout 200 python3 -m pytest -q -m gpu tests/test_block_gemm.py 2>&1 | tee $OUT/r/test_block_gemm.log | tail -4
stamp test_fp8
PYTHONPATH=$PWD timeout 120 python3 -m pytest -q -m gpu tests/test_fp8.py -k "gemm_kernel_equals_reference" 2>&1 | tee $OUT/r/test_fp8_gemm.log | tail -3
stamp end
