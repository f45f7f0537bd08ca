#!/bin/bash
# Seventeenth session, call 4: timing.timed_interleaved now runs each case
# untimed before timing it in every round; the layer in turns in both orders
# (the order decided calls 1-3's figures), the chained-tiles GPU tests on
# the per-loop flags, and the 72-GEMM chain with the new timing.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
export PYTHONPATH=$PWD
timeout 100 python3 -m pytest -q -m gpu tests/test_fp8.py -k "chained_tiles" 2>&1 | tee $OUT/r/test_chain.log | tail -2
timeout 120 python3 scratch/layer_ab.py 16384x8192x8192 "mor_fp8:default;mor_fp8:chain_fp8=True" 9 2>&1 | grep -v "Deprec\|^ \|^$" | tee $OUT/r/layer_ab_a.log | grep 'layer_ab'
timeout 120 python3 scratch/layer_ab.py 16384x8192x8192 "mor_fp8:chain_fp8=True;mor_fp8:default" 9 2>&1 | grep -v "Deprec\|^ \|^$" | tee $OUT/r/layer_ab_b.log | grep 'layer_ab'
(cd benchmarks && timeout 100 python3 gemm.py --only chain --iters 9) 2>&1 | grep '"chain"' | tee $OUT/r/chain.log
cd $OUT && tar czf r.tgz r
