#!/bin/bash
# Twentieth session, call 3: the new DualConfig defaults (statistics loaded a
# step ahead, codes in 32 x 64 tiles): the dual tests compiled, more codes
# tilings, the layer in turns against the old defaults, gpu1b_wide's
# training (dense, then mor_channel, in one process).
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
# Not benchmarks/ for pytest: its profile.py would shadow the standard one.
PYTHONPATH=$PWD timeout 80 python3 -m pytest -q tests/test_fp8.py -k dual 2>&1 | tee $OUT/r/test_dual.log | tail -2
export PYTHONPATH=$PWD:$PWD/benchmarks
(cd benchmarks && timeout 70 python3 profile.py --sweep dual --shape 16384x8192 --variants 16,17,22,23 2>&1 | grep sweep | tee $OUT/r/sweep_dual.log)
(cd benchmarks && timeout 170 python3 gemm.py --only dense --in-turns --dense-shapes 16384x8192x8192 --dense-layers bf16,flax_fp8,mor_fp8,mor_rejected --dual-configs "default;stats.prefetch=False,codes.tile_rows=16,codes.row_steps=16" --iters 10 2>&1 | grep '{' | tee $OUT/r/dense_turns.log)
timeout 200 python3 docs/results/gpu-2026-12-02-fp8s/train_ab.py "dense@default@default;mor_channel@default@default" --preset gpu1b_wide --steps 20 --eval-every 20 --val-batches 2 --log-every 5 --stats-every 10 --no-progress --execution fp8 2>&1 | tee $OUT/r/train_ab.log | grep -i "ms/step\|=== run"
