#!/bin/bash
# Twenty-fifth session, call 4: is the all-E4M3 block GEMM slower than on
# 2026-12-01? The fourteenth session's bench had it at 0.640x cuBLAS BF16's
# time on 8acf9c6 (docs/results/gpu-2026-12-01-fp8m), this session's at
# 0.680-0.710x. 8acf9c6's tree (git archive into old8acf/, untracked) and
# this one, each against cuBLAS BF16 in turns in its own process, twice.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
for t in . old8acf; do [ -e $t/mor_jax/kernels ] || ln -s ../kernels $t/mor_jax/kernels; done
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
for t in . old8acf . old8acf; do
  stamp $t
  timeout 110 python3 docs/results/gpu-2026-12-04-fp8x/ab_block.py $t 2>&1 | grep '^{' | tee -a $OUT/r/ab_block.log
done
stamp end
