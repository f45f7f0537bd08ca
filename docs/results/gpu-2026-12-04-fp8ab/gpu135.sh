#!/bin/bash
# Twenty-ninth session, call 3: where the writer's one launch costs in the
# chain (chain_writers.py), and the layer tests call 2's timeout cut.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
D=docs/results/gpu-2026-12-04-fp8ab
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
stamp chain_writers
PYTHONPATH=$PWD:$PWD/benchmarks timeout 200 python3 $D/chain_writers.py 2>&1 | tee $OUT/r/chain_writers.log | grep '"section"\|"error"\|Error'
stamp test_fp8
PYTHONPATH=$PWD timeout 240 python3 -m pytest -q -m gpu tests/test_fp8.py -k "fp8_on_gpu_equals_emulation and mixed or block_fp8_on_gpu" 2>&1 | tee $OUT/r/test_fp8.log | tail -3
stamp end
