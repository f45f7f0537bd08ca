#!/bin/bash
# Twenty-fourth session, call 1: where the block GEMM's time goes at 0-100%
# BF16 blocks (its kernel apart from the XLA work before it, against cuBLAS
# BF16's kernel), then the GPU tests of kernels/gemm.py's K loops that the
# twenty-third session's refactor (1ac20eb) touched and did not finish.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
stamp sweep_block
(cd benchmarks && PYTHONPATH=$PWD/..:$PWD timeout 150 python3 profile.py --sweep block --variants 0,6,7 --steps 5 2>&1 | grep -v "^W\|^I\|Deprec" | tee $OUT/r/sweep_block.log)
stamp test_gemm_kernel
PYTHONPATH=$PWD timeout 230 python3 -m pytest -q -m gpu tests/test_fp8.py -k "gemm_kernel_equals_reference or chained_tiles" 2>&1 | tee $OUT/r/test_fp8_gemm.log | tail -4
stamp test_bf16_path
PYTHONPATH=$PWD timeout 150 python3 -m pytest -q -m gpu tests/test_fp8.py -k "gemm_bf16_path" 2>&1 | tee $OUT/r/test_fp8_bf16_path.log | tail -4
stamp end
