#!/bin/bash
# Twenty-fifth session, call 2: issue 15's training figure on today's code:
# gpu1b_wide, dense / mor_block / mor_sub2 / mor_channel in one process,
# execution "auto" (the block GEMM for the block recipes, the per-channel
# kernels for mor_channel).
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
stamp train
PYTHONPATH=$PWD timeout 540 python3 examples/train_lm.py --preset gpu1b_wide --steps 20 --eval-every 20 \
  --val-batches 2 --log-every 5 --stats-every 10 --no-progress \
  --recipes dense,mor_block,mor_sub2,mor_channel --out /tmp/w 2>&1 | tee $OUT/r/train_wide_auto.log | grep "ms/step"
grep -A8 "^| recipe" $OUT/r/train_wide_auto.log
stamp end
