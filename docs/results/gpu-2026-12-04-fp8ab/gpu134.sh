#!/bin/bash
# Twenty-ninth session, call 2: kernels/wide.py writes a GEMM's two
# operands in one launch (kernels/gemm.py and kernels/block_gemm.py): the
# GPU tests of the paths that read them (the mixed cases, the layer's
# emulation equality, the block GEMM's values) and writers.py again.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
D=docs/results/gpu-2026-12-04-fp8ab
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
stamp test_fp8
PYTHONPATH=$PWD timeout 150 python3 -m pytest -q -m gpu tests/test_fp8.py -k "gemm_bf16_path or fp8_on_gpu" 2>&1 | tee $OUT/r/test_fp8.log | tail -3
stamp test_block_gemm
PYTHONPATH=$PWD timeout 120 python3 -m pytest -q -m gpu tests/test_block_gemm.py -k "reads_wide_values or values_kernel_compiled" 2>&1 | tee $OUT/r/test_block_gemm.log | tail -2
stamp writers
PYTHONPATH=$PWD:$PWD/benchmarks timeout 200 python3 $D/writers.py 2>&1 | tee $OUT/r/writers.log | grep '"section"\|Error'
stamp end
