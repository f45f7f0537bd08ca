#!/bin/bash
# Twenty-second session, call 2: where Flax's FP8 Dense saves energy that
# MoRDense spends. One GEMM at the power limit with cuBLAS's FP8 GEMM on one
# scale per operand (as Flax runs it) beside the cases timed before; then the
# kernels of one step of each layer (bf16, flax_fp8, mor_fp8) at boost clocks.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
export PYTHONPATH=$PWD:$PWD/benchmarks
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
stamp gemm
(cd benchmarks && timeout 240 python3 gemm.py --only gemm --power --iters 1000 2>&1 | grep -v "^W\|^I" | tee $OUT/r/gemm_power.log)
stamp profile
(cd benchmarks && timeout 200 python3 profile.py --layers bf16,flax_fp8,mor_fp8 --shape 16384x8192x8192 --top 20 2>&1 | grep -v "^W\|^I" | tee $OUT/r/kernels.log)
stamp end
