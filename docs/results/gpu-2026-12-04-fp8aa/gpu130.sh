#!/bin/bash
# Twenty-eighth session, call 5: kernels/gemm.py's four K loops, by kernel
# time, at (16384, 8192, 8192): FP8, BF16 on both operands as they came,
# and the two loops that dequantize one operand's codes in the kernel (one
# accepted, one rejected), which no sweep had timed.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
stamp sweep_gemm
(cd benchmarks && PYTHONPATH=$PWD/..:$PWD timeout 200 python3 profile.py --sweep gemm --variants 0,1 --steps 5 2>&1 | grep -v "^W\|^I\|Deprec\|into.extend" | tee $OUT/r/sweep_gemm.log)
stamp end
