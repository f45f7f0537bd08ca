#!/bin/bash
# Forty-first session, call 1: the block GEMM's steps in K order (one
# hand-written pipeline, FP8 and BF16 K blocks interleaved as K runs)
# against 420d80a's kernel (FP8 K blocks first, then BF16, two pipelines
# per tile; its mor_jax carried in scratch/old, see README.md): outputs
# against the jnp twin and bit for bit, kernel times at 0/10/50/100% BF16
# blocks of X spread at random and at the same K in every row block, each
# version in its own process against cuBLAS BF16 in the same process; then
# the block GEMM's tests.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
ROOT=$PWD
BITS=docs/results/gpu-2026-12-06-fp8aj/bits.py
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
git log --oneline -1 2>/dev/null | tee -a $OUT/r/phases.log
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee -a $OUT/r/phases.log
stamp bits_new
PYTHONPATH=$ROOT timeout 150 python3 $BITS --out /tmp/new.npz 2>&1 | tee $OUT/r/bits_new.log | grep '^{\|Error'
[ -s /tmp/new.npz ] || { stamp "the new kernel wrote no outputs"; exit 1; }
for same in "" --same-k; do
  stamp sweep_new $same
  PYTHONPATH=$ROOT:$ROOT/benchmarks timeout 120 python3 benchmarks/profile.py --sweep block --variants 0 $same 2>&1 | tee -a $OUT/r/sweep_new.log | grep '^{\|Error'
  stamp sweep_old $same
  PYTHONPATH=$ROOT/scratch/old:$ROOT/benchmarks timeout 120 python3 benchmarks/profile.py --sweep block --variants 0 $same 2>&1 | tee -a $OUT/r/sweep_old.log | grep '^{\|Error'
done
stamp bits_old
PYTHONPATH=$ROOT/scratch/old:$ROOT timeout 150 python3 $BITS --out /tmp/old.npz 2>&1 | tee $OUT/r/bits_old.log | grep '^{\|Error'
PYTHONPATH=$ROOT timeout 30 python3 $BITS --compare /tmp/new.npz /tmp/old.npz 2>&1 | tee $OUT/r/compare.log
stamp tests
PYTHONPATH=$ROOT timeout ${TEST_S:-200} python3 -m pytest -q -x tests/test_block_gemm.py 2>&1 | tee $OUT/r/tests.log | tail -5
stamp end
