#!/bin/bash
# Fifteenth session, call 3: the codes' transposes through kernels/transpose.py
# (tests, the block bench's transposes and transposed-wide GEMM), then
# gpu1b_wide's mor_block step profiled, and dense / mor_block / mor_sub2
# timed in one process, emulated mor_block in another.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
export PYTHONPATH=$PWD
timeout 150 python3 -m pytest -q tests/test_block_gemm.py -k "transpose or stored" 2>&1 | tee $OUT/r/test_block_gemm.log | tail -2
timeout 150 python3 -m pytest -q -m gpu tests/test_fp8.py -k block 2>&1 | tee $OUT/r/test_fp8_block.log | tail -2
(cd benchmarks && timeout 120 python3 gemm.py --only block --block-variants 0 --iters 10) 2>&1 | grep -v Deprec | tee $OUT/r/bench_block.log | grep -v "^{\"bench\": \"block\", \"case\": \"block_kernel\", \"bf16_blocks\": 0.[15]"
XLA_FLAGS=--xla_gpu_enable_command_buffer= timeout 120 python3 examples/train_lm.py \
  --preset gpu1b_wide --steps 6 --eval-every 100 --val-batches 1 --log-every 5 \
  --stats-every 10 --no-progress --execution fp8 --profile-steps 5 \
  --recipes mor_block --out /tmp/p_fp8 2>&1 | tee $OUT/r/train_profile.log | grep "ms/step"
(cd benchmarks && timeout 40 python3 profile.py --trace /tmp/p_fp8/mor_block_profile --steps 5 --top 60) \
  2>&1 | grep -v Deprec > $OUT/r/profile_fp8.log
head -3 $OUT/r/profile_fp8.log
timeout 200 python3 examples/train_lm.py --preset gpu1b_wide --steps 20 --eval-every 20 \
  --val-batches 2 --log-every 5 --stats-every 10 --no-progress --execution fp8 \
  --recipes dense,mor_block,mor_sub2 --out /tmp/w 2>&1 | tee $OUT/r/train_wide_fp8.log | grep "ms/step"
timeout 70 python3 examples/train_lm.py --preset gpu1b_wide --steps 20 --eval-every 20 \
  --val-batches 2 --log-every 5 --stats-every 10 --no-progress --execution emulate \
  --recipes mor_block --out /tmp/e 2>&1 | tee $OUT/r/train_wide_emulate.log | grep "ms/step"
mkdir -p $OUT/r/w && cp /tmp/w/*.jsonl /tmp/e/*.jsonl $OUT/r/w/ 2>/dev/null
cd $OUT && tar czf r.tgz r
