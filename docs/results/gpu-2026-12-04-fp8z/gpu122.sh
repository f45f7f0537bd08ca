#!/bin/bash
# Twenty-seventh session, call 2: the FP8 step's variants v4-v6 against v0
# (block_variants.py), then GPU tests of the block GEMM's FP8 loop.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
D=docs/results/gpu-2026-12-04-fp8z
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
stamp variants
PYTHONPATH=$PWD:$PWD/benchmarks timeout 300 python3 $D/block_variants.py v0,v4,v5,v6 2>&1 | tee $OUT/r/variants.log | grep '"case"'
tail -3 $OUT/r/variants.log
stamp end
