#!/bin/bash
# Thirty-seventh session, call 1: the thirty-sixth session's GPU-side
# changes on the GPU (Triton kernels' result types, the custom_vjp's
# cotangent typing under shard_map's check_vma, block_sum, jax.export's
# 1-ulp bound), and what the FP8 GEMM's epilogue costs (epilogue.py).
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
D=docs/results/gpu-2026-12-05-fp8ag
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee $OUT/r/gpu.txt
python3 -c "import jax, flax; print(jax.__version__, flax.__version__, jax.devices())" | tee -a $OUT/r/gpu.txt
stamp vma
PYTHONPATH=$PWD timeout 90 python3 $D/vma.py 2>&1 | tee $OUT/r/vma.log | grep '^{\|Error'
stamp epilogue
PYTHONPATH=$PWD:$PWD/benchmarks timeout 150 python3 $D/epilogue.py 2>&1 | tee $OUT/r/epilogue.log | grep '^{\|Error'
stamp test_gpu
PYTHONPATH=$PWD timeout 120 python3 -m pytest -q -m gpu tests/test_gpu.py -k "pallas and bfloat16 or compiled or vanish or past_int32" 2>&1 | tee $OUT/r/test_gpu.log | grep "FAIL\|passed\|failed\|^E .*Error"
stamp test_export
PYTHONPATH=$PWD timeout 90 python3 -m pytest -q tests/test_export.py 2>&1 | tee $OUT/r/test_export.log | grep "FAIL\|passed\|failed\|^E .*Error"
stamp test_fp8
PYTHONPATH=$PWD timeout 140 python3 -m pytest -q tests/test_fp8.py -k "fp8_on_gpu_equals_emulation and not block" 2>&1 | tee $OUT/r/test_fp8.log | grep "FAIL\|passed\|failed\|^E .*Error"
stamp end
