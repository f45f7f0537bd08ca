#!/bin/bash
# Fifteenth session, call 5: gpu1b_wide under "auto", mor_block beside
# mor_channel and dense in one process.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
export PYTHONPATH=$PWD
timeout 215 python3 examples/train_lm.py --preset gpu1b_wide --steps 20 --eval-every 20 \
  --val-batches 1 --log-every 5 --stats-every 10 --no-progress \
  --recipes dense,mor_block,mor_channel --out /tmp/w 2>&1 | tee $OUT/r/train_wide_auto.log | grep "ms/step"
