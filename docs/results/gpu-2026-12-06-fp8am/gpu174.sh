#!/bin/bash
# Forty-third session, call 4 (run as one command line; kept here): the
# tests/test_fp8.py GPU tests that call 2's limit cut off.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
nvidia-smi --query-gpu=name --format=csv | tee $OUT/r/phases.log
PYTHONPATH=$PWD timeout 290 python3 -m pytest -v -m gpu tests/test_fp8.py -p no:warnings \
  -k "(chained_tiles_equal_a_pipeline_per_tile and 0) or on_gpu_equals_emulation or accurate_mode" \
  2>&1 | tee $OUT/r/tests_fp8_rest.log | grep -E "PASSED|FAILED|ERROR|passed|failed"
