#!/bin/bash
# Thirty-first session, call 1: the thirtieth session's final code, not run
# on a GPU before: the block GEMM's values writer after kernels/wide.py's
# simplification, and the wide preset's training (dense, mor_channel,
# mor_block) with the dequantizing loop in place.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
stamp test_block
PYTHONPATH=$PWD timeout 130 python3 -m pytest -q -m gpu tests/test_block_gemm.py -k "reads_wide_values or values_kernel_compiled" 2>&1 | tee $OUT/r/test_block.log | tail -3
stamp train
PYTHONPATH=$PWD timeout 380 python3 examples/train_lm.py --preset gpu1b_wide --steps 20 --eval-every 20 --val-batches 2 --log-every 5 --stats-every 10 --no-progress --recipes dense,mor_channel,mor_block --out /tmp/w 2>&1 | tee $OUT/r/train.log | grep "ms/step"
stamp end
