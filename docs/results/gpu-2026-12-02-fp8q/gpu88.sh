#!/bin/bash
# Eighteenth session, call 4: GemmConfig.lead removed and chain_fp8 on by
# default. The GEMM kernel's GPU tests, then the layer against nn.Dense and
# Flax's FP8 Dense on the new default (and per tile), then the 72-GEMM chain.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
export PYTHONPATH=$PWD
timeout 190 python3 -m pytest -q -m gpu tests/test_fp8.py -k "gemm_kernel_equals_reference or chained_tiles or fp8_on_gpu_equals" 2>&1 | tee $OUT/r/test_gpu.log | tail -3
cd benchmarks
timeout 130 python3 gemm.py --only dense --dense-shapes 16384x8192x8192 --dense-layers bf16,flax_fp8,mor_fp8,mor_rejected --gemm-configs "default;chain_fp8=False" --iters 10 2>&1 | grep '"dense"' | tee $OUT/r/dense.log
timeout 80 python3 gemm.py --only chain --iters 9 2>&1 | grep '"chain"' | tee $OUT/r/chain.log
