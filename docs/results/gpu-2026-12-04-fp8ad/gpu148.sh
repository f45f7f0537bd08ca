#!/bin/bash
# Thirty-first session, call 6: call 5's chain took +12.4% over XLA's FP8
# chain (+0.8% last session). The chain with the thirtieth session's
# kernels/gemm.py (gemm_head.py: `git show ed877d6:kernels/gemm.py`, written
# beside this script for the call, not kept) and with this session's (ed877d6
# with plain_tiles.diff), one process each.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
D=$PWD/docs/results/gpu-2026-12-04-fp8ad
cp kernels/gemm.py /tmp/gemm_new.py
cd benchmarks
export PYTHONPATH=$PWD/..:$PWD
for v in new head; do
  if [ $v = head ]; then cp $D/gemm_head.py ../kernels/gemm.py; else cp /tmp/gemm_new.py ../kernels/gemm.py; fi
  stamp chain_$v
  timeout 60 python3 gemm.py --only chain --iters 10 2>&1 | tee $OUT/r/chain_$v.log | grep '"kernel"\|Error'
done
cp /tmp/gemm_new.py ../kernels/gemm.py
stamp end
