#!/bin/bash
# Twenty-sixth session, call 4: the tests call 3's timeout cut short: the
# values kernel compiled (up to 8 blocks per program) and the 16-bit loop
# reading both operands' written values.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
stamp test_block_gemm
PYTHONPATH=$PWD timeout 220 python3 -m pytest -v -m gpu tests/test_block_gemm.py \
  -k "values_kernel_compiled or dequantizes_both or reads_wide_values" 2>&1 | tee $OUT/r/test_block_gemm.log | grep -c PASSED
tail -2 $OUT/r/test_block_gemm.log
stamp end
