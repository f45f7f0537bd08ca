#!/bin/bash
# Fortieth session, calls 1 and 2, on 7fdc37c with one_pipeline.diff
# applied: the block GEMM on one hand-written pipeline against 7fdc37c's two
# pipelines per tile (its mor_jax carried in scratch/old, see README.md):
# outputs bit for bit on 11 cases, then
# kernel times at 0/10/50/100% BF16 blocks, each version in its own process
# against cuBLAS BF16 in the same process.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
ROOT=$PWD
D=docs/results/gpu-2026-12-06-fp8aj
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
git log --oneline -1 2>/dev/null | tee $OUT/r/head.txt
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee $OUT/r/gpu.txt
stamp bits_new
PYTHONPATH=$ROOT timeout 150 python3 $D/bits.py --out $OUT/r/new.npz 2>&1 | tee $OUT/r/bits_new.log | grep '^{\|Error'
[ -s $OUT/r/new.npz ] || { stamp "the new kernel wrote no outputs"; exit 1; }
stamp bits_old
PYTHONPATH=$ROOT/scratch/old:$ROOT timeout 150 python3 $D/bits.py --out $OUT/r/old.npz 2>&1 | tee $OUT/r/bits_old.log | grep '^{\|Error'
PYTHONPATH=$ROOT timeout 30 python3 $D/bits.py --compare $OUT/r/new.npz $OUT/r/old.npz 2>&1 | tee $OUT/r/compare.log
stamp sweep_new
PYTHONPATH=$ROOT:$ROOT/benchmarks timeout 200 python3 benchmarks/profile.py --sweep block --variants ${VARIANTS:-0,3} 2>&1 | tee $OUT/r/sweep_new.log | grep '^{\|Error'
stamp sweep_old
PYTHONPATH=$ROOT/scratch/old:$ROOT/benchmarks timeout 120 python3 benchmarks/profile.py --sweep block --variants 0 2>&1 | tee $OUT/r/sweep_old.log | grep '^{\|Error'
stamp end
