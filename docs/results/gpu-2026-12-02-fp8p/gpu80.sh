#!/bin/bash
# Seventeenth session, call 1: chain_tiles's GPU tests (now with more tiles
# than blocks), the layer with and without it in turns in one process, and
# the GEMM's kernel times with and without it.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
export PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.draw,temperature.gpu --format=csv > $OUT/r/smi.txt
timeout 150 python3 -m pytest -q -m gpu tests/test_fp8.py -k "chained_tiles or (gemm_kernel_equals_reference and chain)" 2>&1 | tee $OUT/r/test_chain.log | tail -3
timeout 170 python3 scratch/layer_ab.py 16384x8192x8192 "default;chain_tiles=True" 9 2>&1 | grep -v "Deprec\|^ \|^$" | tee $OUT/r/layer_ab.log | grep '"bits"\|layer_ab'
(cd benchmarks && timeout 100 python3 profile.py --sweep gemm --variants 0,6 --shape 16384x4096x4096) 2>&1 | grep '"sweep"' | tee $OUT/r/sweep_chain.log
cd $OUT && tar czf r.tgz r
