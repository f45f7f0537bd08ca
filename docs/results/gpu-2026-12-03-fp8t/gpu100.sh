#!/bin/bash
# Twenty-first session, call 3: gpu1b_wide's training with the codes pass
# on 8 warps against the default, dense first, in one process.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
export PYTHONPATH=$PWD:$PWD/benchmarks
timeout 540 python3 docs/results/gpu-2026-12-02-fp8s/train_ab.py "dense@default@default;mor_channel@default@default;mor_channel@default@codes.num_warps=8" --preset gpu1b_wide --steps 20 --eval-every 20 --val-batches 2 --log-every 5 --stats-every 10 --no-progress --execution fp8 2>&1 | tee $OUT/r/train_ab.log | grep -i "ms/step\|=== run"
