#!/bin/bash
# Twenty-eighth session, call 6: benchmarks/gemm.py's GEMM cases, now with
# kernels/gemm.py's two dequantizing loops (one operand accepted, one
# rejected), timed in a loop (call 5's profiler trace of them exceeded 2 GB).
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
stamp bench_gemm
(cd benchmarks && PYTHONPATH=$PWD/..:$PWD timeout 240 python3 gemm.py --only gemm 2>&1 | grep -v "^W\|^I\|Deprec\|into.extend" | tee $OUT/r/bench_gemm.log)
stamp end
