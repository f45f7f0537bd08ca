#!/bin/bash
# Thirty-seventh session, call 2: the FP8 epilogue's fast path
# (kernels.gemm.products_fit; acc * (ra * rb) where every product of factors
# fits): its kernel tests bit for bit against the twin, the epilogues in
# turns (epilogue.py), and MoRDense at (16384, 8192, 8192) against nn.Dense
# and Flax's FP8 Dense in one process.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
D=docs/results/gpu-2026-12-05-fp8ag
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee $OUT/r/gpu.txt
stamp test_fp8
PYTHONPATH=$PWD timeout 170 python3 -m pytest -q tests/test_fp8.py -k "spurious or gemm_kernel_equals_reference or chained_tiles or gemm_bf16_path and kernel" 2>&1 | tee $OUT/r/test_fp8.log | grep "FAIL\|passed\|failed\|^E .*Error"
stamp epilogue
PYTHONPATH=$PWD:$PWD/benchmarks timeout 170 python3 $D/epilogue.py 2>&1 | tee $OUT/r/epilogue.log | grep '^{\|Error'
stamp dense
(cd benchmarks && PYTHONPATH=$PWD/..:$PWD timeout 150 python3 gemm.py --only dense --dense-shapes 16384x8192x8192 --dense-layers bf16,flax_fp8,mor_fp8,mor_rejected --iters 10 2>&1 | tee $OUT/r/dense.log | grep '"dense"\|Error')
stamp end
