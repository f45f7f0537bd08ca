#!/bin/bash
# Forty-third session, call 3: gpu1b_wide training, 20 steps, dense then
# mor_channel "fp8" with --lean-steps (statistics only on the logged steps;
# the same decisions and losses, tested), one process.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
ROOT=$PWD
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee -a $OUT/r/phases.log
stamp train_lean
PYTHONPATH=$ROOT timeout 540 python3 examples/train_lm.py --preset gpu1b_wide --steps 20 --eval-every 20 \
  --val-batches 2 --log-every 5 --stats-every 10 --no-progress --execution fp8 --lean-steps \
  --recipes dense,mor_channel --out /tmp/w 2>&1 | tee $OUT/r/train_lean.log | grep "ms/step"
grep -A4 "^| recipe" $OUT/r/train_lean.log
stamp end
