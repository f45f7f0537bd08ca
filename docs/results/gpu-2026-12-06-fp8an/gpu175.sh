#!/bin/bash
# Forty-fourth session, call 1: issue 14's layer at (16384, 8192, 8192) by
# parts (decompose.py: MoRDense with its GEMMs as per-tensor or per-row
# cuBLAS, its codes pass without the error terms, in turns and alone with
# NVML's energy counter).
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
ROOT=$PWD
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,power.limit --format=csv | tee -a $OUT/r/phases.log
stamp decompose
PYTHONPATH=$ROOT:$ROOT/benchmarks timeout 360 python3 docs/results/gpu-2026-12-06-fp8an/decompose.py --variants mor_fp8,mor_cublas_tensor,mor_cublas_rows,mor_noerr --power-iters 40 --turns 2 2>&1 | tee $OUT/r/decompose.log | grep '^{\|Error\|error'
stamp end
