#!/bin/bash
# Twenty-fifth session, call 3: where gpu1b_wide's mor_block step goes on
# today's code (kernels by name and by HLO op, command buffers off), as the
# twenty-first session took dense's and mor_channel's (fp8t, gpu98.sh).
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
export PYTHONPATH=$PWD:$PWD/benchmarks
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
stamp train_mor_block
XLA_FLAGS=--xla_gpu_enable_command_buffer= timeout 220 python3 examples/train_lm.py --preset gpu1b_wide --steps 6 --eval-every 100 --val-batches 1 --log-every 5 --stats-every 10 --no-progress --profile-steps 5 --recipes mor_block --out /tmp/p > /tmp/train_mor_block.log 2>&1; grep -i "ms/step\|error" /tmp/train_mor_block.log | tail -8 | tee -a $OUT/r/phases.log
stamp sum_mor_block
(cd benchmarks && python3 profile.py --trace /tmp/p/mor_block_profile --steps 5 --top 40 > $OUT/r/kernels_mor_block.log 2>&1; python3 profile.py --trace /tmp/p/mor_block_profile --steps 5 --by-op --top 60 >> $OUT/r/kernels_mor_block.log 2>&1)
stamp end
