#!/bin/bash
# Twenty-seventh session, call 5: the block GEMM test call 3's timeout cut
# while it ran (the 16-bit loop on values stored transposed, both
# operands), and the kernel sweep again on the default.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
stamp test_block_gemm
PYTHONPATH=$PWD timeout 100 python3 -m pytest -v -m gpu tests/test_block_gemm.py -k "reads_wide_values_stored_transposed" 2>&1 | tee $OUT/r/test_block_gemm.log | grep -c PASSED
tail -1 $OUT/r/test_block_gemm.log
stamp sweep_block
(cd benchmarks && PYTHONPATH=$PWD/..:$PWD timeout 90 python3 profile.py --sweep block --variants 0 --steps 5 2>&1 | grep -v "^W\|^I\|Deprec\|into.extend" | tee $OUT/r/sweep_block.log)
stamp end
