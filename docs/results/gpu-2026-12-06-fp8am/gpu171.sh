#!/bin/bash
# Forty-third session, call 1: (1) gemm.py's plain GEMM on 128 x 128 blocks
# (profile.py GEMM_VARIANTS 8, tile_n=64) against its 128 x 256 default, both
# paths, with cuBLAS in the same process: is a 16-bit K block dearer on the
# block GEMM's tile shape in any kernel? (2) the paired block GEMM with X's
# BF16 tiles loaded by each block, not multicast (scratch/nomc: one line of
# kernels/block_gemm.py), against the default, each in its own process;
# (3) the block GEMM's GPU tests the forty-second session did not reach.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
ROOT=$PWD
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee -a $OUT/r/phases.log
stamp sweep_gemm
PYTHONPATH=$ROOT:$ROOT/benchmarks timeout 150 python3 benchmarks/profile.py --sweep gemm --variants 0,8 2>&1 | tee $OUT/r/sweep_gemm.log | grep '^{\|Error'
stamp sweep_block_default
PYTHONPATH=$ROOT:$ROOT/benchmarks timeout 100 python3 benchmarks/profile.py --sweep block --variants 0 --shares 0,0.1,0.5 2>&1 | tee $OUT/r/sweep_block.log | grep '^{\|Error'
stamp sweep_block_nomc
PYTHONPATH=$ROOT/scratch/nomc:$ROOT/benchmarks python3 -c "import mor_jax.kernels.block_gemm as b; print(b.__file__)" 2>&1 | tee $OUT/r/sweep_block_nomc.log
PYTHONPATH=$ROOT/scratch/nomc:$ROOT/benchmarks timeout 100 python3 benchmarks/profile.py --sweep block --variants 0 --shares 0,0.1,0.5 2>&1 | tee -a $OUT/r/sweep_block_nomc.log | grep '^{\|Error'
stamp tests
PYTHONPATH=$ROOT timeout 200 python3 -m pytest -q -m gpu tests/test_block_gemm.py \
  -k "dequantizes_both or reads_wide_values or configs_equal_reference or (all_bf16_path_equals and (transposed3 or transposed4))" 2>&1 | tee $OUT/r/tests.log | tail -8
stamp end
