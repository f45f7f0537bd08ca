#!/bin/bash
# Nineteenth session, call 2: gpu1b_wide training on the chained default,
# dense / mor_channel / dense in one process (dense both before and after,
# so that neither recipe alone runs on a cold or a hot GPU); then the
# (16384, 8192, 28672) layer in turns, last timed in the thirteenth session.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
export PYTHONPATH=$PWD
timeout 340 python3 docs/results/gpu-2026-12-02-fp8p/train_ab.py "dense@default;mor_channel@default;dense@default" --preset gpu1b_wide --steps 20 --eval-every 20 --val-batches 2 --log-every 5 --stats-every 10 --no-progress --execution fp8 2>&1 | tee $OUT/r/train_ab.log | grep -i "ms/step\|=== run"
cd benchmarks
timeout 180 python3 gemm.py --only dense --in-turns --dense-shapes 16384x8192x28672 --dense-layers bf16,flax_fp8,mor_fp8,mor_rejected --iters 5 2>&1 | tee $OUT/r/dense_28672_full.log | grep '"dense"' | tee $OUT/r/dense_28672.log
