#!/bin/bash
# Twenty-second session, call 3: cuBLAS's FP8 GEMM as Flax's fp8_ops pattern
# reaches it (bfloat16 operands dequantized from the codes, a bfloat16 dot)
# beside the other FP8 patterns: which cuBLAS kernel each runs (names.py, near
# boost clocks), then each one's energy at the power limit.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
export PYTHONPATH=$PWD:$PWD/benchmarks
here=docs/results/gpu-2026-12-03-fp8u
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
stamp names
(cd benchmarks && timeout 120 python3 ../$here/names.py 2>&1 | grep -v "^W\|^I\|Deprecation\|into.extend" | tee $OUT/r/names.log)
stamp gemm
(cd benchmarks && timeout 300 python3 gemm.py --only gemm --power --iters 1000 2>&1 | grep -v "^W\|^I" | tee $OUT/r/gemm_power.log)
stamp end
