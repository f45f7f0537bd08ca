#!/bin/bash
# Eighteenth session, call 1: GemmConfig.lead's first run on a GPU. Its
# bit-for-bit test (chained tiles, lead 2), the kernel's times with lead 1
# and 2, the layer in turns, and the 72-GEMM chain with a lead.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
export PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.draw,temperature.gpu --format=csv > $OUT/r/smi.txt
timeout 150 python3 -m pytest -q -m gpu tests/test_fp8.py -k "chained_tiles" 2>&1 | tee $OUT/r/test_chain.log | tail -3
(cd benchmarks && timeout 120 python3 profile.py --sweep gemm --variants 0,6,7,8 --shape 16384x4096x4096) 2>&1 | grep '"sweep"' | tee $OUT/r/sweep_lead.log
timeout 200 python3 scratch/layer_ab.py 16384x8192x8192 "mor_fp8:default;mor_fp8:chain_fp8=True,lead=1;mor_fp8:chain_fp8=True,lead=2" 9 2>&1 | grep -v "Deprec\|^ \|^$" | tee $OUT/r/layer_ab.log | grep '"bits"\|layer_ab'
(cd benchmarks && timeout 120 python3 gemm.py --only chain --iters 9 --gemm-configs "default;chain_fp8=True;chain_fp8=True,lead=2") 2>&1 | grep '"chain"' | tee $OUT/r/chain.log
cd $OUT && tar czf r.tgz r
