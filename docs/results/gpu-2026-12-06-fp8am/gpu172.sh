#!/bin/bash
# Forty-third session, call 2: tests/test_fp8.py's GPU tests on the paired
# block GEMM default (the forty-second session reached none of them), then
# issue 14's (16384, 8192, 8192) layer on this card.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
ROOT=$PWD
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee -a $OUT/r/phases.log
stamp tests_fp8
PYTHONPATH=$ROOT timeout 330 python3 -m pytest -v -m gpu tests/test_fp8.py -p no:warnings \
  2>&1 | tee $OUT/r/tests_fp8.log | grep -c PASSED
grep -E "FAILED|ERROR|passed|failed" $OUT/r/tests_fp8.log | tail -5
stamp layer
(cd benchmarks && PYTHONPATH=$ROOT:$ROOT/benchmarks timeout 200 python3 gemm.py --only dense \
  --dense-shapes 16384x8192x8192 --dense-layers bf16,flax_fp8,mor_fp8,mor_rejected --iters 10) \
  2>&1 | tee $OUT/r/layer.log | grep '^{\|Error'
stamp end
