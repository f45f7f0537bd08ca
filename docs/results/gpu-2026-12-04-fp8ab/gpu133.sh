#!/bin/bash
# Twenty-ninth session, call 1: the GPU tests of kernels/gemm.py since its
# 16-bit loop reads writers' outputs (not run last session), the block
# GEMM's tests of the renamed writer, and what the two writers cost where
# they write nothing (writers.py: chain, one GEMM, the layer).
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
D=docs/results/gpu-2026-12-04-fp8ab
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
stamp test_fp8
PYTHONPATH=$PWD timeout 200 python3 -m pytest -q -m gpu tests/test_fp8.py -k "gemm or chained or fp8_on_gpu" 2>&1 | tee $OUT/r/test_fp8.log | tail -3
stamp test_block_gemm
PYTHONPATH=$PWD timeout 90 python3 -m pytest -q -m gpu tests/test_block_gemm.py -k reads_wide_values 2>&1 | tee $OUT/r/test_block_gemm.log | tail -2
stamp writers
PYTHONPATH=$PWD:$PWD/benchmarks timeout 200 python3 $D/writers.py 2>&1 | tee $OUT/r/writers.log | grep '"section"\|Error'
stamp end
