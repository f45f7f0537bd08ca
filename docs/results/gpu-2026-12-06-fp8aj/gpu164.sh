#!/bin/bash
# Fortieth session, call 3, on 7fdc37c with one_pipeline.diff and then
# park_on_one_pipeline.diff applied: the FP8 steps' sum kept in
# registers during a tile's BF16 steps (as in call 2) or parked in shared
# memory (MOR_PARK=1, as 7fdc37c's two pipelines park it), against
# 7fdc37c's kernel (scratch/old): kernel times, each in its own process
# against cuBLAS BF16 in the same process; then the parked variant's outputs
# against 7fdc37c's on four cases.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
ROOT=$PWD
D=docs/results/gpu-2026-12-06-fp8aj
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee $OUT/r/gpu.txt
CASES=ragged_50,many_tiles_10,many_tiles_50_xt,deep_10_stages3
stamp sweep_park
MOR_PARK=1 PYTHONPATH=$ROOT:$ROOT/benchmarks timeout 110 python3 benchmarks/profile.py --sweep block --variants 0 2>&1 | tee $OUT/r/sweep_park.log | grep '^{\|Error'
stamp sweep_registers
PYTHONPATH=$ROOT:$ROOT/benchmarks timeout 110 python3 benchmarks/profile.py --sweep block --variants 0 2>&1 | tee $OUT/r/sweep_registers.log | grep '^{\|Error'
stamp sweep_old
PYTHONPATH=$ROOT/scratch/old:$ROOT/benchmarks timeout 110 python3 benchmarks/profile.py --sweep block --variants 0 2>&1 | tee $OUT/r/sweep_old.log | grep '^{\|Error'
stamp bits_park
MOR_PARK=1 PYTHONPATH=$ROOT timeout 80 python3 $D/bits.py --only $CASES --out $OUT/r/park.npz 2>&1 | tee $OUT/r/bits_park.log | grep '^{\|Error'
stamp bits_old
PYTHONPATH=$ROOT/scratch/old:$ROOT timeout 80 python3 $D/bits.py --only $CASES --out $OUT/r/old.npz 2>&1 | tee $OUT/r/bits_old.log | grep '^{\|Error'
PYTHONPATH=$ROOT timeout 30 python3 $D/bits.py --compare $OUT/r/park.npz $OUT/r/old.npz 2>&1 | tee $OUT/r/compare.log
rm -f $OUT/r/*.npz
stamp end
