#!/bin/bash
# Twenty-fifth session, call 1: the block GEMM's all-BF16 path without
# clusters by default (BlockGemmConfig.wide). Its GPU tests (the default and
# the clustered configuration), the kernel times at 0-100% BF16 blocks
# (variant 0: the default; 7: gemm.py's tiles in clusters, the old
# default), then the looped bench with the variants in turn.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
stamp test_block_gemm
PYTHONPATH=$PWD timeout 280 python3 -m pytest -q -m gpu tests/test_block_gemm.py 2>&1 | tee $OUT/r/test_block_gemm.log | tail -3
stamp test_fp8_block
PYTHONPATH=$PWD timeout 90 python3 -m pytest -q -m gpu tests/test_fp8.py -k block 2>&1 | tee $OUT/r/test_fp8_block.log | tail -3
stamp sweep_block
(cd benchmarks && PYTHONPATH=$PWD/..:$PWD timeout 100 python3 profile.py --sweep block --variants 0,7 --steps 5 2>&1 | grep -v "^W\|^I\|Deprec\|into.extend" | tee $OUT/r/sweep_block.log)
stamp bench_block
(cd benchmarks && PYTHONPATH=$PWD/..:$PWD timeout 110 python3 gemm.py --only block --block-variants 0,7,0,7 --iters 10 2>&1 | grep -v "^W\|^I\|Deprec" | tee $OUT/r/bench_block.log)
stamp end
