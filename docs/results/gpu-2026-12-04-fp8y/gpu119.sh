#!/bin/bash
# Twenty-sixth session, call 3: the values kernel takes up to 8 blocks along
# K per program (calls 1-2: one), as most of its programs read nothing. Its
# compiled tests and the block GEMM's on the paths it feeds, the kernel apart
# from the work before it, and dense / mor_block training in one process.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
stamp test_block_gemm
PYTHONPATH=$PWD timeout 200 python3 -m pytest -q -m gpu tests/test_block_gemm.py \
  -k "values_kernel or dequantizes_both or all_bf16_path or kernel_equals_reference or transposed" 2>&1 | tee $OUT/r/test_block_gemm.log | tail -3
stamp sweep_block
(cd benchmarks && PYTHONPATH=$PWD/..:$PWD timeout 70 python3 profile.py --sweep block --variants 0 --steps 5 2>&1 | grep -v "^W\|^I\|Deprec\|into.extend" | tee $OUT/r/sweep_block.log)
stamp train
PYTHONPATH=$PWD timeout 250 python3 examples/train_lm.py --preset gpu1b_wide --steps 20 --eval-every 20 \
  --val-batches 2 --log-every 5 --stats-every 10 --no-progress \
  --recipes dense,mor_block --out /tmp/w 2>&1 | tee $OUT/r/train_wide_auto.log | grep "ms/step"
stamp end
