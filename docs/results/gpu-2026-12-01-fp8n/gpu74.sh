#!/bin/bash
# Fifteenth session, call 4: "auto" takes the block GEMM on Hopper: the
# wired GPU tests, then gpu1b_wide with the default execution ("auto"),
# dense / mor_block / mor_sub2 / mor_sub3 in one process.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
export PYTHONPATH=$PWD
timeout 150 python3 -m pytest -q -m gpu tests/test_fp8.py -k block 2>&1 | tee $OUT/r/test_fp8_block.log | tail -2
timeout 330 python3 examples/train_lm.py --preset gpu1b_wide --steps 20 --eval-every 20 \
  --val-batches 2 --log-every 5 --stats-every 10 --no-progress \
  --recipes dense,mor_block,mor_sub2,mor_sub3 --out /tmp/w 2>&1 | tee $OUT/r/train_wide_auto.log | grep "ms/step"
grep -A8 "^| recipe" $OUT/r/train_wide_auto.log
cd $OUT && tar czf r.tgz r
