#!/bin/bash
# Thirtieth session, call 4: the dequantizing loop waits for each wgmma
# (call 3: converting the next codes while it ran corrupted the output).
# The GEMM's GPU tests, the wide preset's training, the 8192 layer.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
stamp test_fp8_mixed
PYTHONPATH=$PWD timeout 150 python3 -m pytest -q -m gpu tests/test_fp8.py -k "gemm_bf16_path and kernel or one_accepted" 2>&1 | tee $OUT/r/test_fp8_mixed.log | tail -3
stamp test_fp8_reference
PYTHONPATH=$PWD timeout 150 python3 -m pytest -q -m gpu tests/test_fp8.py -k "gemm_kernel_equals_reference or fp8_on_gpu_equals_emulation and mixed" 2>&1 | tee $OUT/r/test_fp8_reference.log | tail -3
stamp train
PYTHONPATH=$PWD timeout 140 python3 examples/train_lm.py --preset gpu1b_wide --steps 20 --eval-every 20 --val-batches 2 --log-every 5 --stats-every 10 --no-progress --recipes dense,mor_channel --out /tmp/w 2>&1 | tee $OUT/r/train.log | grep "ms/step"
stamp dense
(cd benchmarks && PYTHONPATH=$PWD/..:$PWD timeout 100 python3 gemm.py --only dense --dense-shapes 16384x8192x8192 --dense-layers bf16,flax_fp8,mor_fp8 --iters 10 2>&1 | tee $OUT/r/dense.log | grep '"dense"\|Error')
stamp end
