#!/bin/bash
# Twentieth session, call 4: the GPU's power and clocks (nvidia-smi dmon,
# once a second) while nn.Dense, MoRDense and nn.Dense run back to back.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
export PYTHONPATH=$PWD:$PWD/benchmarks
cd benchmarks
nvidia-smi dmon -s pc -d 1 -o T > $OUT/r/dmon.log 2>&1 &
timeout 130 python3 gemm.py --only dense --dense-shapes 16384x8192x8192 --dense-layers bf16,mor_fp8,bf16 --iters 200 2>&1 | grep '{' | while read l; do echo "$(date +%T) $l"; done | tee $OUT/r/dense_power.log
kill %1
