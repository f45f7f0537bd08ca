#!/bin/bash
# Twenty-sixth session, call 1: the block GEMM writes its BF16 loop's values
# itself, only in the blocks that loop reads (kernels/wide.py); operands pass
# x as it came. Its GPU tests (among them the values kernel compiled against
# NumPy, and the 16-bit loop reading operands as they came), the block path
# under a Policy, then the looped bench (the block GEMM now includes writing
# the values it reads) with cuBLAS BF16 in the same run.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
stamp test_block_gemm
PYTHONPATH=$PWD timeout 320 python3 -m pytest -q -m gpu tests/test_block_gemm.py 2>&1 | tee $OUT/r/test_block_gemm.log | tail -3
stamp test_fp8_block
PYTHONPATH=$PWD timeout 100 python3 -m pytest -q -m gpu tests/test_fp8.py -k block 2>&1 | tee $OUT/r/test_fp8_block.log | tail -3
stamp bench_block
(cd benchmarks && PYTHONPATH=$PWD/..:$PWD timeout 120 python3 gemm.py --only block --block-variants 0,0 --iters 10 2>&1 | grep -v "^W\|^I\|Deprec" | tee $OUT/r/bench_block.log)
stamp end
