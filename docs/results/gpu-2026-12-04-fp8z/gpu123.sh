#!/bin/bash
# Twenty-seventh session, call 3: the FP8 step with its factors loaded
# before the wgmma and four stages (the new default): the block GEMM's GPU
# tests, its kernel at 0-100% BF16 blocks (default and three stages), and
# the looped bench.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
stamp test_block_gemm
PYTHONPATH=$PWD timeout 240 python3 -m pytest -q -m gpu tests/test_block_gemm.py 2>&1 | tee $OUT/r/test_block_gemm.log | tail -3
stamp sweep_block
(cd benchmarks && PYTHONPATH=$PWD/..:$PWD timeout 120 python3 profile.py --sweep block --variants 0,2 --steps 5 2>&1 | grep -v "^W\|^I\|Deprec\|into.extend" | tee $OUT/r/sweep_block.log)
stamp bench_block
(cd benchmarks && PYTHONPATH=$PWD/..:$PWD timeout 120 python3 gemm.py --only block --block-variants 0,2 2>&1 | grep -v "^W\|^I\|Deprec\|into.extend" | tee $OUT/r/bench_block.log)
stamp end
