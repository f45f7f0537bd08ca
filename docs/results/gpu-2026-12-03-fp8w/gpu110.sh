#!/bin/bash
# Twenty-fourth session, call 2: the block GEMM's default (gemm.py's tiles in
# clusters for its all-BF16 path) against the same tiles unclustered
# (variant 7), which call 1's kernel times favour at 0-50% BF16 blocks: timed
# in a loop twice each in one process, then kernel times in a second process.
# Then the twenty-second session's gpu107.sh: nn.Dense, Flax's FP8 Dense and
# MoRDense at (16384, 8192, 8192), each alone with its energy.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
stamp bench_block
(cd benchmarks && PYTHONPATH=$PWD/..:$PWD timeout 200 python3 gemm.py --only block --block-variants 0,7,0,7 --iters 10 2>&1 | grep -v "^W\|^I\|Deprec" | tee $OUT/r/bench_block.log)
stamp sweep_block
(cd benchmarks && PYTHONPATH=$PWD/..:$PWD timeout 100 python3 profile.py --sweep block --variants 0,7 --steps 5 2>&1 | grep -v "^W\|^I\|Deprec\|into.extend" | tee $OUT/r/sweep_block.log)
stamp dense_power
(cd benchmarks && PYTHONPATH=$PWD/..:$PWD timeout 240 python3 gemm.py --only dense --power --dense-shapes 16384x8192x8192 --dense-layers bf16,flax_fp8,mor_fp8 --iters 100 2>&1 | grep -v "^W\|^I\|Deprec" | tee $OUT/r/dense_power.log)
stamp end
