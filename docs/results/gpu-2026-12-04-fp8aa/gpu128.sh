#!/bin/bash
# Twenty-eighth session, call 3: the BF16 loop on K tiles of 128 (w128)
# against 64 (v0) at 10% and 50% BF16 blocks, and with the block loops at
# 100% (v0n, w128n: wide=None); the planar snake's band width at every
# share (profile.py's block variants 0, 4, 5: 8, 4, 16).
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
D=docs/results/gpu-2026-12-04-fp8aa
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
stamp "variants v0,w128"
PYTHONPATH=$PWD:$PWD/benchmarks timeout 200 python3 $D/block_variants.py v0,w128 r0.1,r0.5 skip 2>&1 | tee -a $OUT/r/variants.log | grep '"case"'
stamp "variants v0n,w128n"
PYTHONPATH=$PWD:$PWD/benchmarks timeout 200 python3 $D/block_variants.py v0n,w128n r1 skip 2>&1 | tee -a $OUT/r/variants.log | grep '"case"'
stamp sweep_block
(cd benchmarks && PYTHONPATH=$PWD/..:$PWD timeout 200 python3 profile.py --sweep block --variants 0,4,5 --steps 5 2>&1 | grep -v "^W\|^I\|Deprec\|into.extend" | tee $OUT/r/sweep_block.log)
stamp end
