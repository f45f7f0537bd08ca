#!/bin/bash
# Thirty-ninth session, call 2, on 355b8da: gpu1b_wide training, mor_channel
# "fp8" against dense in one process (issue 14's 1.3x tokens/s).
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee $OUT/r/gpu.txt
stamp train
PYTHONPATH=$PWD timeout 280 python3 examples/train_lm.py --preset gpu1b_wide --steps 20 --eval-every 20 \
  --val-batches 2 --log-every 5 --stats-every 10 --no-progress --execution fp8 \
  --recipes dense,mor_channel --out /tmp/w 2>&1 | tee $OUT/r/train_wide.log | grep "ms/step"
grep -A4 "^| recipe" $OUT/r/train_wide.log
stamp end
