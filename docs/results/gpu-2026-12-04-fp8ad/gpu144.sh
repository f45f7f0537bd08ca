#!/bin/bash
# Thirty-first session, call 2: why one backward GEMM per layer of
# gpu1b_wide's step ran ~20% slower than its peers (twenty-first session's
# trace): each GEMM launch of a traced training step, and of MoRDense's
# step alone at each of the preset's layer shapes.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
here=$PWD/docs/results/gpu-2026-12-04-fp8ad
stamp train
PYTHONPATH=$PWD timeout 200 python3 examples/train_lm.py --preset gpu1b_wide --steps 5 --eval-every 100 --val-batches 1 --log-every 5 --stats-every 100 --no-progress --recipes dense,mor_channel --profile-steps 3 --out /tmp/p 2>&1 | tee $OUT/r/train.log | grep "ms/step"
stamp launches
cd benchmarks
export PYTHONPATH=$PWD/..:$PWD
timeout 60 python3 $here/launches.py --trace /tmp/p/mor_channel_profile 2>&1 | grep "^{" | tee $OUT/r/launches_mor.log | tail -12
timeout 60 python3 $here/launches.py --trace /tmp/p/dense_profile --match sm90 2>&1 | grep "^{" > $OUT/r/launches_dense.log
stamp layers
timeout 200 python3 $here/launches.py --layer 16384x4096x16384,16384x16384x4096,16384x4096x12288,16384x4096x4096 2>&1 | grep "^{" | tee $OUT/r/launches_layers.log | grep "layer\|mean"
stamp end
