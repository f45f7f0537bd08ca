#!/bin/bash
# Nineteenth session, call 5: the 72-GEMM chain on the chained default, in a
# second process (the eighteenth session's call 4 gave +0.57%).
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
export PYTHONPATH=$PWD
cd benchmarks
timeout 150 python3 gemm.py --only chain --iters 9 2>&1 | grep '"chain"' | tee $OUT/r/chain.log
