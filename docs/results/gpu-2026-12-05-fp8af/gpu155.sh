#!/bin/bash
# Thirty-sixth session, call 5: jax.export with symbolic shapes on the GPU
# after a GEMM with a symbolic operand runs XLA's passes and GEMMs for all
# its work (call 4: the static weight's kernels were custom calls that
# jax.export refuses), compared with jit under the XLA setting.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
nvidia-smi --query-gpu=name --format=csv,noheader | tee $OUT/r/gpu.txt
PYTHONPATH=$PWD timeout 240 python3 -m pytest -v tests/test_export.py 2>&1 | tee $OUT/r/test_export.log | grep "PASS\|FAIL\|SKIP\|passed\|failed\|^E .*Error\|^E  .*assert"
