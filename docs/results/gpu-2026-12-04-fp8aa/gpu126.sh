#!/bin/bash
# Twenty-eighth session, call 1: the block GEMM's FP8 loop with the compute
# warpgroups taking turns at the tensor cores (t1, t2), and the cost of a
# pipeline's start and stop (f2), against the kernel as it is (v0). Each
# turns variant in its own process: a deadlock ends in its timeout alone.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
D=docs/results/gpu-2026-12-04-fp8aa
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv | tee $OUT/r/smi.txt
for v in v0,f2 v0,t1 v0,t2; do
  stamp "variants $v"
  PYTHONPATH=$PWD:$PWD/benchmarks timeout 200 python3 $D/block_variants.py $v 2>&1 | tee -a $OUT/r/variants.log | grep '"case"'
  echo "rc=${PIPESTATUS[0]}" | tee -a $OUT/r/variants.log
done
stamp end
