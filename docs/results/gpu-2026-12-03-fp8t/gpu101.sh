#!/bin/bash
# Twenty-first session, call 4, on the new default (codes pass on 8 warps):
# the dual tests compiled; the layer timed alone with its energy; gpu1b_wide
# trained dense, mor_channel, dense, mor_channel in one process.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
# Not benchmarks/ for pytest: its profile.py would shadow the standard one.
PYTHONPATH=$PWD timeout 100 python3 -m pytest -q tests/test_fp8.py -k dual 2>&1 | tee $OUT/r/test_dual.log | tail -2
export PYTHONPATH=$PWD:$PWD/benchmarks
(cd benchmarks && timeout 120 python3 gemm.py --only dense --power --dense-shapes 16384x8192x8192 --dense-layers bf16,flax_fp8,mor_fp8,mor_rejected --iters 100 2>&1 | grep '{' | tee $OUT/r/dense_power.log)
timeout 330 python3 docs/results/gpu-2026-12-02-fp8s/train_ab.py "dense@default@default;mor_channel@default@default;dense@default@default;mor_channel@default@default" --preset gpu1b_wide --steps 20 --eval-every 20 --val-batches 2 --log-every 5 --stats-every 10 --no-progress --execution fp8 2>&1 | tee $OUT/r/train_ab.log | grep -i "ms/step\|=== run"
