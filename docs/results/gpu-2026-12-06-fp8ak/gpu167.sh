#!/bin/bash
# Forty-first session, call 6: the block GEMM's tiles paired along N in
# clusters of two with X's tiles multicast (BlockGemmConfig(cluster_n=True),
# gemm.py's BLOCK_VARIANTS 8 and 9) against the default (0) and the block
# loops alone (6): outputs (paired.py), then kernel times in one process.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
ROOT=$PWD
D=docs/results/gpu-2026-12-06-fp8ak
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
grep -c cluster_n kernels/block_gemm.py | tee -a $OUT/r/phases.log
stamp paired
PYTHONPATH=$ROOT timeout 100 python3 $D/paired.py 2>&1 | tee $OUT/r/paired.log | grep '^{\|Error'
stamp sweep
PYTHONPATH=$ROOT:$ROOT/benchmarks timeout 110 python3 benchmarks/profile.py --sweep block --variants 0,8 --shares 0,0.1,0.5 2>&1 | tee $OUT/r/sweep.log | grep '^{\|Error'
stamp sweep_all_bf16
PYTHONPATH=$ROOT:$ROOT/benchmarks timeout 70 python3 benchmarks/profile.py --sweep block --variants 6,9 --shares 1 2>&1 | tee -a $OUT/r/sweep.log | grep '^{\|Error'
stamp end
