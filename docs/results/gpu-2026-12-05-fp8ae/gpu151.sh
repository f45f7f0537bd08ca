#!/bin/bash
# Thirty-third session, call 3: with plain_cond.diff kept, MoRDense against
# nn.Dense and Flax's FP8 Dense at both issue shapes, and the gpu1b
# preset's training (README's 0.94x is from the eighth session).
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
stamp dense
(cd benchmarks && PYTHONPATH=$PWD/..:$PWD timeout 200 python3 gemm.py --only dense --dense-shapes 16384x8192x8192,16384x8192x28672 --dense-layers bf16,flax_fp8,mor_fp8,mor_rejected --iters 10 2>&1 | tee $OUT/r/dense.log | grep '"dense"\|Error')
stamp train
PYTHONPATH=$PWD timeout 300 python3 examples/train_lm.py --preset gpu1b --steps 20 --eval-every 20 --val-batches 2 --log-every 5 --stats-every 10 --no-progress --recipes dense,mor_channel --out /tmp/g 2>&1 | tee $OUT/r/train.log | grep "ms/step\|Error"
stamp end
