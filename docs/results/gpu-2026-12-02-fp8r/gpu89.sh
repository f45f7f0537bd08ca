#!/bin/bash
# Nineteenth session, call 1: the GPU tests the eighteenth session's last call
# ran out of time for, on the chained default (FP8 against emulation, the
# block GEMM's recipes, float32's accurate mode); then the first GPU run of
# gemm.py --only dense --in-turns: the layers timed in rotating turns, MoR
# chained (default) against a pipeline per tile, with a bit check.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
export PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv > $OUT/r/smi.txt 2>&1
timeout 300 python3 -m pytest -q -m gpu tests/test_fp8.py -k "fp8_on_gpu_equals or block_fp8_on_gpu or float32_accurate" 2>&1 | tee $OUT/r/test_gpu.log | tail -3
cd benchmarks
timeout 230 python3 gemm.py --only dense --in-turns --dense-shapes 16384x8192x8192 --dense-layers bf16,flax_fp8,mor_fp8,mor_rejected --gemm-configs "default;chain_fp8=False" --iters 10 2>&1 | tee $OUT/r/dense_turns_full.log | grep '"dense"' | tee $OUT/r/dense_turns.log
