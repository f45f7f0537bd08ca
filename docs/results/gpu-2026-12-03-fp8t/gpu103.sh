#!/bin/bash
# Twenty-first session, call 6: each GEMM of (16384, 8192) x (8192, 8192)^T
# alone with its energy per GEMM: cuBLAS BF16 and FP8 against
# kernels/gemm.py's FP8 and BF16 paths.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
export PYTHONPATH=$PWD:$PWD/benchmarks
(cd benchmarks && timeout 230 python3 gemm.py --only gemm --power --iters 1000 2>&1 | grep '{\|Error' | tee $OUT/r/gemm_power.log)
