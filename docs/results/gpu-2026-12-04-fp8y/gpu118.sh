#!/bin/bash
# Twenty-sixth session, call 2: the block path under a Policy (its third
# test timed out in call 1), the block GEMM's kernel apart from the work
# before it (now the values kernel), then the training figure with the
# values written only where read: gpu1b_wide, dense / mor_block / mor_sub2
# in one process, execution "auto", as fp8x's call 2 (gpu113.sh) ran them.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
stamp test_fp8_block
PYTHONPATH=$PWD timeout 110 python3 -m pytest -q -m gpu tests/test_fp8.py -k block 2>&1 | tee $OUT/r/test_fp8_block.log | tail -3
stamp sweep_block
(cd benchmarks && PYTHONPATH=$PWD/..:$PWD timeout 70 python3 profile.py --sweep block --variants 0 --steps 5 2>&1 | grep -v "^W\|^I\|Deprec\|into.extend" | tee $OUT/r/sweep_block.log)
stamp train
PYTHONPATH=$PWD timeout 390 python3 examples/train_lm.py --preset gpu1b_wide --steps 20 --eval-every 20 \
  --val-batches 2 --log-every 5 --stats-every 10 --no-progress \
  --recipes dense,mor_block,mor_sub2 --out /tmp/w 2>&1 | tee $OUT/r/train_wide_auto.log | grep "ms/step"
grep -A8 "^| recipe" $OUT/r/train_wide_auto.log
stamp end
