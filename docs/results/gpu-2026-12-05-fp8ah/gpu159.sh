#!/bin/bash
# Thirty-eighth session, call 2: 8cf5143's off-mesh path on one GPU, the
# export tests (the 1-ulp float32 bound among them: the thirty-seventh
# session's step ran out of time), and gpu1b_wide training, mor_channel
# "fp8" against dense in one process.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
git log --oneline -1 | tee $OUT/r/head.txt
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee $OUT/r/gpu.txt
stamp offmesh
PYTHONPATH=$PWD timeout 90 python3 docs/results/gpu-2026-12-05-fp8ah/offmesh.py 2>&1 | tee $OUT/r/offmesh.log | grep "FAIL\|bit for bit\|Error"
stamp test_export
PYTHONPATH=$PWD timeout 200 python3 -m pytest -q tests/test_export.py 2>&1 | tee $OUT/r/test_export.log | grep "FAIL\|passed\|failed\|^E .*Error"
stamp train
PYTHONPATH=$PWD timeout 260 python3 examples/train_lm.py --preset gpu1b_wide --steps 20 --eval-every 20 \
  --val-batches 2 --log-every 5 --stats-every 10 --no-progress --execution fp8 \
  --recipes dense,mor_channel --out /tmp/w 2>&1 | tee $OUT/r/train_wide.log | grep "ms/step"
grep -A4 "^| recipe" $OUT/r/train_wide.log
stamp end
