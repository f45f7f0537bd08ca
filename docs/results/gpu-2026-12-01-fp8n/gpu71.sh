#!/bin/bash
# Fifteenth session, call 1: where gpu1b_wide's mor_block step goes, through
# the block GEMM ("fp8") and emulated (kernel times, command buffers off).
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
export PYTHONPATH=$PWD
for ex in fp8 emulate; do
  XLA_FLAGS=--xla_gpu_enable_command_buffer= timeout 200 python3 examples/train_lm.py \
    --preset gpu1b_wide --steps 6 --eval-every 100 --val-batches 1 --log-every 5 \
    --stats-every 10 --no-progress --execution $ex --profile-steps 5 \
    --recipes mor_block --out /tmp/p_$ex 2>&1 | tee $OUT/r/train_$ex.log | grep "ms/step"
  (cd benchmarks && timeout 60 python3 profile.py --trace /tmp/p_$ex/mor_block_profile --steps 5 --top 60) \
    2>&1 | grep -v Deprec > $OUT/r/profile_$ex.log
  (cd benchmarks && timeout 60 python3 profile.py --trace /tmp/p_$ex/mor_block_profile --steps 5 --by-op --top 80) \
    2>&1 | grep -v Deprec > $OUT/r/ops_$ex.log
  head -3 $OUT/r/profile_$ex.log
done
cd $OUT && tar czf r.tgz r
