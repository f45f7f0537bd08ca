#!/bin/bash
# Twenty-fifth session, call 5: a tile whose K steps all run in FP8 writes
# its output from the FP8 loop and sets up no BF16 loop (uncommitted then).
# The block GEMM's GPU tests of the block loops; e5d6f38's tree (git
# archive into oldhead/, untracked) and this one against cuBLAS BF16 in
# turns, two processes each (ab_block.py); the looped bench's default.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
for t in . oldhead; do [ -e $t/mor_jax/kernels ] || ln -s ../kernels $t/mor_jax/kernels; done
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
stamp test_block_gemm
PYTHONPATH=$PWD timeout 200 python3 -m pytest -q -m gpu tests/test_block_gemm.py -k "equals_reference or configs or stored_transposed" 2>&1 | tee $OUT/r/test_block_gemm.log | tail -3
for t in . oldhead . oldhead; do
  stamp ab $t
  timeout 60 python3 docs/results/gpu-2026-12-04-fp8x/ab_block.py $t 2>&1 | grep '^{' | tee -a $OUT/r/ab_block.log
done
stamp bench_block
(cd benchmarks && PYTHONPATH=$PWD/..:$PWD timeout 60 python3 gemm.py --only block --block-variants 0 --iters 10 2>&1 | grep -v "^W\|^I\|Deprec" | tee $OUT/r/bench_block.log)
stamp end
