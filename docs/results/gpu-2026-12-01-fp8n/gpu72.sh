#!/bin/bash
# Fifteenth session, call 2: the block GEMM reading wide values stored
# [K, rows] (tests), then gpu1b_wide's mor_block step profiled again, and
# dense / mor_block / mor_sub2 timed in one process.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
export PYTHONPATH=$PWD
timeout 200 python3 -m pytest -q -m gpu tests/test_block_gemm.py 2>&1 | tee $OUT/r/test_block_gemm.log | tail -4
XLA_FLAGS=--xla_gpu_enable_command_buffer= timeout 150 python3 examples/train_lm.py \
  --preset gpu1b_wide --steps 6 --eval-every 100 --val-batches 1 --log-every 5 \
  --stats-every 10 --no-progress --execution fp8 --profile-steps 5 \
  --recipes mor_block --out /tmp/p_fp8 2>&1 | tee $OUT/r/train_profile.log | grep "ms/step"
(cd benchmarks && timeout 60 python3 profile.py --trace /tmp/p_fp8/mor_block_profile --steps 5 --top 60) \
  2>&1 | grep -v Deprec > $OUT/r/profile_fp8.log
(cd benchmarks && timeout 60 python3 profile.py --trace /tmp/p_fp8/mor_block_profile --steps 5 --by-op --top 80) \
  2>&1 | grep -v Deprec > $OUT/r/ops_fp8.log
head -3 $OUT/r/profile_fp8.log
timeout 230 python3 examples/train_lm.py --preset gpu1b_wide --steps 20 --eval-every 20 \
  --val-batches 2 --log-every 5 --stats-every 10 --no-progress --execution fp8 \
  --recipes dense,mor_block,mor_sub2 --out /tmp/w 2>&1 | tee $OUT/r/train_wide_fp8.log | grep "ms/step"
mkdir -p $OUT/r/w && cp /tmp/w/*.jsonl* $OUT/r/w/ 2>/dev/null
cd $OUT && tar czf r.tgz r
