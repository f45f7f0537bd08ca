#!/bin/bash
# Twenty-second session, call 4: nn.Dense, Flax's FP8 Dense and MoRDense at
# (16384, 8192, 8192), each alone with its energy, in one process: the
# same-run figures behind the split of Flax's advantage (README section 3).
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
export PYTHONPATH=$PWD:$PWD/benchmarks
(cd benchmarks && timeout 240 python3 gemm.py --only dense --power --dense-shapes 16384x8192x8192 --dense-layers bf16,flax_fp8,mor_fp8 --iters 100 2>&1 | grep -v "^W\|^I" | tee $OUT/r/dense_power.log)
