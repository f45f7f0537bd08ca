#!/bin/bash
# Thirtieth session, call 2: kernels/gemm.py dequantizes an accepted
# operand's codes in registers where the other is rejected (no writer
# launch): the GEMM's GPU tests, its four cases' speed, the 72-GEMM chain;
# the block GEMM's tests that call 1 failed (its epilogue's tiles).
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
D=docs/results/gpu-2026-12-04-fp8ac
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
stamp test_fp8_mixed
PYTHONPATH=$PWD timeout 150 python3 -m pytest -q -m gpu tests/test_fp8.py -k "gemm_bf16_path and kernel or one_accepted" 2>&1 | tee $OUT/r/test_fp8_mixed.log | tail -3
stamp gemm_paths
PYTHONPATH=$PWD:$PWD/benchmarks timeout 100 python3 $D/gemm_paths.py 2>&1 | tee $OUT/r/gemm_paths.log | grep '"case"\|Error'
stamp chain
(cd benchmarks && PYTHONPATH=$PWD/..:$PWD timeout 120 python3 gemm.py --only chain --iters 10 2>&1 | tee $OUT/r/chain.log | grep '"chain"\|Error')
stamp test_block_gemm
PYTHONPATH=$PWD timeout 100 python3 -m pytest -q -m gpu tests/test_block_gemm.py -k "reads_wide_values or values_kernel_compiled" 2>&1 | tee $OUT/r/test_block_gemm.log | tail -3
stamp test_fp8_reference
PYTHONPATH=$PWD timeout 150 python3 -m pytest -q -m gpu tests/test_fp8.py -k "gemm_kernel_equals_reference" 2>&1 | tee $OUT/r/test_fp8_reference.log | tail -3
stamp end
