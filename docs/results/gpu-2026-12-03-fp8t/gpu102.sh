#!/bin/bash
# Twenty-first session, call 5: GemmConfigs of the MoR layer timed alone
# with their energy per call (the looped layer runs at the power limit).
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
export PYTHONPATH=$PWD:$PWD/benchmarks
(cd benchmarks && timeout 280 python3 gemm.py --only dense --power --dense-shapes 16384x8192x8192 --dense-layers bf16,mor_fp8 --gemm-configs "default;grid_tile_width=16;delay_release=0;stages=3;cluster=n" --iters 100 2>&1 | grep '{\|Error' | tee $OUT/r/gemm_configs_power.log)
