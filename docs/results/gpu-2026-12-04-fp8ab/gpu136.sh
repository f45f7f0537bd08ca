#!/bin/bash
# Twenty-ninth session, call 4: the writer in one launch, one block a
# program where it reads the GEMM's case: the GPU tests of the mixed cases
# (bit for bit, and the layer against emulation), and writers.py's chain
# and layer.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
D=docs/results/gpu-2026-12-04-fp8ab
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
stamp test_fp8
PYTHONPATH=$PWD timeout 200 python3 -m pytest -q -m gpu tests/test_fp8.py -k "gemm_bf16_path or fp8_on_gpu_equals_emulation and mixed" 2>&1 | tee $OUT/r/test_fp8.log | tail -3
stamp writers
PYTHONPATH=$PWD:$PWD/benchmarks timeout 170 python3 $D/writers.py chain dense 2>&1 | tee $OUT/r/writers.log | grep '"section"\|Error'
stamp end
