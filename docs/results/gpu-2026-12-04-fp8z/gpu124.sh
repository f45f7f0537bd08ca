#!/bin/bash
# Twenty-seventh session, call 4: the block GEMM tests call 3's timeout cut
# (configurations), the block recipes' GPU tests, and training with
# mor_block against dense in one process.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
stamp test_block_gemm
PYTHONPATH=$PWD timeout 90 python3 -m pytest -q -m gpu tests/test_block_gemm.py -k configs_equal 2>&1 | tee $OUT/r/test_block_gemm.log | tail -2
stamp test_fp8_block
PYTHONPATH=$PWD timeout 115 python3 -m pytest -q -m gpu tests/test_fp8.py -k block 2>&1 | tee $OUT/r/test_fp8_block.log | tail -2
stamp train
PYTHONPATH=$PWD timeout 250 python3 examples/train_lm.py --preset gpu1b_wide --steps 20 --eval-every 20 \
  --val-batches 2 --log-every 5 --stats-every 10 --no-progress \
  --recipes dense,mor_block --out /tmp/w 2>&1 | tee $OUT/r/train_wide_auto.log | grep "ms/step"
grep -A6 "^| recipe" $OUT/r/train_wide_auto.log
stamp end
