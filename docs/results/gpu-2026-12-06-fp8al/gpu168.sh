#!/bin/bash
# Forty-second session, call 1: the block GEMM with its tiles paired along N
# in clusters of two (BlockGemmConfig(paired=True), now the default): its
# GPU tests (the paired plan followed, on data where the moved pairs show),
# then kernel times in one process against the unpaired kernel
# (BLOCK_VARIANTS 7), at 0/10/50% of X's blocks BF16 and at 100% (the
# all-BF16 path, and the block loops alone: variants 6 and 8).
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
ROOT=$PWD
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee -a $OUT/r/phases.log
stamp tests
PYTHONPATH=$ROOT timeout 250 python3 -m pytest -q -m gpu tests/test_block_gemm.py \
  -k "paired or kernel_equals_reference" 2>&1 | tee $OUT/r/tests.log | tail -8
stamp sweep
PYTHONPATH=$ROOT:$ROOT/benchmarks timeout 130 python3 benchmarks/profile.py --sweep block --variants 0,7 --shares 0,0.1,0.5 2>&1 | tee $OUT/r/sweep.log | grep '^{\|Error'
stamp sweep_all_bf16
PYTHONPATH=$ROOT:$ROOT/benchmarks timeout 110 python3 benchmarks/profile.py --sweep block --variants 0,6,7,8 --shares 1 2>&1 | tee -a $OUT/r/sweep.log | grep '^{\|Error'
stamp end
