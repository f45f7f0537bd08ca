#!/bin/bash
# Twenty-eighth session, call 7: kernels/gemm.py with its accepted operand
# dequantized before the launch (kernels/wide.py) where the other is
# rejected: the GPU test that its 16-bit loop takes the emulated operands
# bit for bit (bfloat16), and the four cases timed against cuBLAS BF16.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
D=docs/results/gpu-2026-12-04-fp8aa
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
stamp test
PYTHONPATH=$PWD timeout 90 python3 -m pytest -q -m gpu tests/test_fp8.py -k "gemm_bf16_path_takes_emulated_operands and kernel and bfloat16" 2>&1 | tee $OUT/r/test.log | tail -3
stamp gemm_paths
PYTHONPATH=$PWD:$PWD/benchmarks timeout 100 python3 $D/gemm_paths.py 2>&1 | tee $OUT/r/gemm_paths.log | grep '"case"\|Error'
stamp end
