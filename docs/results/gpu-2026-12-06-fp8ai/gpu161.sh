#!/bin/bash
# Thirty-ninth session, call 1, on 355b8da: the off-mesh fix (51edf6a) and
# the export tests' 8-ulp bound on the GPU (the thirty-eighth session's
# gpu160.sh, which got no machine); the FP8 epilogues in turns (the
# 72-GEMM chain against XLA's FP8 chain, one GEMM); MoRDense at
# (16384, 8192, 8192) against nn.Dense and Flax's FP8 Dense in one process.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
git log --oneline -1 | tee $OUT/r/head.txt
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee $OUT/r/gpu.txt
stamp offmesh
PYTHONPATH=$PWD timeout 60 python3 docs/results/gpu-2026-12-05-fp8ah/offmesh.py 2>&1 | tee $OUT/r/offmesh.log | grep "FAIL\|bit for bit\|Error"
stamp test_export
PYTHONPATH=$PWD timeout 110 python3 -m pytest -q tests/test_export.py 2>&1 | tee $OUT/r/test_export.log | grep "FAIL\|passed\|failed\|^E .*Error"
stamp epilogue
PYTHONPATH=$PWD:$PWD/benchmarks timeout 150 python3 docs/results/gpu-2026-12-05-fp8ag/epilogue.py 2>&1 | tee $OUT/r/epilogue.log | grep '^{\|Error'
stamp dense
# SHORT=1 (little device time left) stops before the layer.
[ -n "$SHORT" ] || (cd benchmarks && PYTHONPATH=$PWD/..:$PWD timeout 150 python3 gemm.py --only dense --dense-shapes 16384x8192x8192 --dense-layers bf16,flax_fp8,mor_fp8,mor_rejected --iters 10 2>&1 | tee $OUT/r/dense.log | grep '"dense"\|Error')
stamp end
