#!/bin/bash
# Twenty-ninth session, call 5: the writer's programs read the GEMM's case
# once (not once a block): the mixed cases' GPU tests, the chain against
# one block a program and no writer, and the layer.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
D=docs/results/gpu-2026-12-04-fp8ab
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
stamp test_fp8
PYTHONPATH=$PWD timeout 130 python3 -m pytest -q -m gpu tests/test_fp8.py -k "gemm_bf16_path or fp8_on_gpu_equals_emulation and mixed" 2>&1 | tee $OUT/r/test_fp8.log | tail -3
stamp chain_writers
PYTHONPATH=$PWD:$PWD/benchmarks timeout 90 python3 $D/chain_writers.py as_is span1 no_writer 2>&1 | tee $OUT/r/chain_writers.log | grep '"section"\|"error"\|Error'
stamp writers_dense
PYTHONPATH=$PWD:$PWD/benchmarks timeout 100 python3 $D/writers.py dense 2>&1 | tee $OUT/r/writers.log | grep '"section"\|Error'
stamp end
