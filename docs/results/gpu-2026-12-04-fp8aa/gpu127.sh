#!/bin/bash
# Twenty-eighth session, call 2: the turns variants with plain mbarriers
# (call 1's asked the barrier to order tensor-core work, which lowers to a
# Blackwell-only fence), and the kernel at 10% and 50% BF16 blocks of X
# chosen at random per block (as the bench) or the same K blocks in every
# row block (every tile takes its K steps in one order).
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
D=docs/results/gpu-2026-12-04-fp8aa
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
stamp "variants v0,t1,t2"
PYTHONPATH=$PWD:$PWD/benchmarks timeout 250 python3 $D/block_variants.py v0,t1,t2 2>&1 | tee -a $OUT/r/variants.log | grep '"case"'
echo "rc=${PIPESTATUS[0]}" | tee -a $OUT/r/variants.log
stamp "patterns"
PYTHONPATH=$PWD:$PWD/benchmarks timeout 250 python3 $D/block_variants.py v0 r0.1,c0.1,r0.5,c0.5 2>&1 | tee -a $OUT/r/patterns.log | grep '"case"'
echo "rc=${PIPESTATUS[0]}" | tee -a $OUT/r/patterns.log
stamp end
