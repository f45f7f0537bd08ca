#!/bin/bash
# Twenty-eighth session, call 4: the BF16 loop dequantizing W's codes in
# shared memory (dq1: one stage per warpgroup, each wgmma waited for; dq2:
# two, one wgmma in flight) against reading the values written before the
# launch (v0), at 10% (random and column-structured) and 50% BF16 blocks of
# X, and at 100% with the block loops (wide=None: v0n, dq1n, dq2n).
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
D=docs/results/gpu-2026-12-04-fp8aa
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
stamp "variants v0,dq1,dq2"
PYTHONPATH=$PWD:$PWD/benchmarks timeout 220 python3 $D/block_variants.py v0,dq1,dq2 r0.1,c0.1,r0.5 skip 2>&1 | tee -a $OUT/r/variants.log | grep '"case"'
echo "rc=${PIPESTATUS[0]}" | tee -a $OUT/r/variants.log
stamp "variants v0n,dq1n,dq2n"
PYTHONPATH=$PWD:$PWD/benchmarks timeout 180 python3 $D/block_variants.py v0n,dq1n,dq2n r1 skip 2>&1 | tee -a $OUT/r/variants.log | grep '"case"'
echo "rc=${PIPESTATUS[0]}" | tee -a $OUT/r/variants.log
stamp end
