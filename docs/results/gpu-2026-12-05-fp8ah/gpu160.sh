#!/bin/bash
# Thirty-eighth session, call 4: the off-mesh fix (the function run with an
# empty abstract mesh in context) on one GPU under jax 0.11.2, with
# split.diff's kernel applied; the export tests with the 8-ulp bound.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
D=docs/results/gpu-2026-12-05-fp8ah
stamp offmesh
PYTHONPATH=$PWD timeout 60 python3 $D/offmesh.py 2>&1 | tee $OUT/r/offmesh.log | grep "FAIL\|bit for bit\|Error"
stamp test_export
PYTHONPATH=$PWD timeout 120 python3 -m pytest -q tests/test_export.py 2>&1 | tee $OUT/r/test_export.log | grep "FAIL\|passed\|failed\|^E .*Error"
stamp end
