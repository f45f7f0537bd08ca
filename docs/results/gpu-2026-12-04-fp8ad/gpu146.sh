#!/bin/bash
# Thirty-first session, call 4: call 3's tests ran out of their 220 s after
# 16 passed (the BF16 path's 12 and the plain tiles' 4); the rest: one
# operand accepted over many tiles, and the layer's mixed case against
# emulation.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
stamp test_fp8
PYTHONPATH=$PWD timeout 250 python3 -m pytest -v -m gpu tests/test_fp8.py -k "one_accepted or fp8_on_gpu_equals_emulation and mixed" 2>&1 | tee $OUT/r/test_fp8.log | grep "PASS\|FAIL\|passed\|failed"
stamp end
