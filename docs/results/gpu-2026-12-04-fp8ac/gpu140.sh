#!/bin/bash
# Thirtieth session, call 3: call 2's dequantizing loop loaded the loading
# warpgroup's rows (wrong values) and used a deprecated transpose; fixed,
# and its codes converted while the previous wgmma runs (delay_release 1)
# against waiting for each (0): the GEMM's GPU tests and its four cases.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
D=docs/results/gpu-2026-12-04-fp8ac
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
stamp test_fp8_mixed
PYTHONPATH=$PWD timeout 170 python3 -m pytest -q -m gpu tests/test_fp8.py -k "gemm_bf16_path and kernel or one_accepted" 2>&1 | tee $OUT/r/test_fp8_mixed.log | tail -3
stamp gemm_paths
PYTHONPATH=$PWD:$PWD/benchmarks timeout 120 python3 $D/gemm_paths.py default delay_release=0 2>&1 | tee $OUT/r/gemm_paths.log | grep '"case"\|Error'
stamp test_fp8_reference
PYTHONPATH=$PWD timeout 170 python3 -m pytest -q -m gpu tests/test_fp8.py -k "gemm_kernel_equals_reference or fp8_on_gpu_equals_emulation and mixed" 2>&1 | tee $OUT/r/test_fp8_reference.log | tail -3
stamp end
