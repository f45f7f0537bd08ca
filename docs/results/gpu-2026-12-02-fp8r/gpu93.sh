#!/bin/bash
# Nineteenth session, call 6: the passes' partial results reduced in one
# variadic reduce per pass (kernels/dual.py): the dual tests compiled, the
# layer's kernels per step (launches, busy).
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
export PYTHONPATH=$PWD
timeout 80 python3 -m pytest -q tests/test_fp8.py -k dual 2>&1 | tee $OUT/r/test_dual.log | tail -2
cd benchmarks
timeout 70 python3 profile.py --layers mor_fp8 --top 8 2>&1 | grep '"run"' | tee $OUT/r/profile_mor.log | grep busy_ms
