#!/bin/bash
# Thirty-first session, call 3: the dequantizing loop multiplies plainly in
# tiles whose row factors need neither flush nor saturation. Its GPU tests
# (the new one: plain and full tiles side by side; the BF16 path's bit for
# bit cases; one operand accepted over many tiles), then plain against full
# tiles in one process (gemm_plain.py).
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
D=docs/results/gpu-2026-12-04-fp8ad
stamp test_fp8
PYTHONPATH=$PWD timeout 220 python3 -m pytest -q -m gpu tests/test_fp8.py -k "plain_tiles or gemm_bf16_path and kernel or one_accepted" 2>&1 | tee $OUT/r/test_fp8.log | tail -3
stamp gemm_plain
PYTHONPATH=$PWD:$PWD/benchmarks timeout 150 python3 $D/gemm_plain.py 2>&1 | tee $OUT/r/gemm_plain.log | grep '"case"\|Error'
stamp end
