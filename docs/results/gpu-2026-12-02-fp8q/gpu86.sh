#!/bin/bash
# Eighteenth session, call 2: the layer in turns in the reverse order of
# call 1 (lead 2, lead 1, the default), and the kernel's times with lead 1
# and 2 that call 1's sweep ran out of time for.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
export PYTHONPATH=$PWD
timeout 200 python3 scratch/layer_ab.py 16384x8192x8192 "mor_fp8:chain_fp8=True,lead=2;mor_fp8:chain_fp8=True,lead=1;mor_fp8:default" 9 2>&1 | grep -v "Deprec\|^ \|^$" | tee $OUT/r/layer_ab.log | grep '"bits"\|layer_ab'
(cd benchmarks && timeout 200 python3 profile.py --sweep gemm --variants 0,6,7,8 --shape 16384x4096x4096) 2>&1 | grep '"sweep"' | tee $OUT/r/sweep_lead.log
cd $OUT && tar czf r.tgz r
