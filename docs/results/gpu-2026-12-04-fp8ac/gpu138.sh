#!/bin/bash
# Thirtieth session, call 1: what the twenty-ninth session's last code
# (89a62a9) had not run on the GPU: the block GEMM's writer tests, and the
# wide preset's training with mor_channel and mor_block against dense.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
stamp test_block_gemm
PYTHONPATH=$PWD timeout 150 python3 -m pytest -q -m gpu tests/test_block_gemm.py -k "reads_wide_values or values_kernel_compiled" 2>&1 | tee $OUT/r/test_block_gemm.log | tail -3
stamp train
PYTHONPATH=$PWD timeout 380 python3 examples/train_lm.py --preset gpu1b_wide --steps 20 --eval-every 20 --val-batches 2 --log-every 5 --stats-every 10 --no-progress --recipes dense,mor_channel,mor_block --out /tmp/w 2>&1 | tee $OUT/r/train.log | grep "ms/step"
grep -A6 "^| recipe" $OUT/r/train.log
stamp end
