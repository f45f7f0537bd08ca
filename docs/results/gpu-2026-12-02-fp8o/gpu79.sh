#!/bin/bash
# Sixteenth session, call 4: GemmConfig(chain_tiles=True), one pipeline
# across a block's tiles whose compute warpgroups release each slot a step
# late themselves, against a pipeline per tile (the previous default).
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
export PYTHONPATH=$PWD
timeout 60 python3 scratch/chain_check.py 2>&1 | grep -v "^E1202\|Source Location\|cuda_status\|^$" | tee $OUT/r/chain_check.log | tail -3
echo "bit_equal: $(grep -c '"bit_equal": true' $OUT/r/chain_check.log) of $(grep -c bit_equal $OUT/r/chain_check.log)"
timeout 90 python3 -m pytest -q -m gpu tests/test_fp8.py -k "gemm_kernel_equals_reference or bf16_path or fp8_on_gpu_equals" 2>&1 | tee $OUT/r/test_fp8_gpu.log | tail -3
cd benchmarks
timeout 125 python3 gemm.py --only dense --dense-shapes 16384x8192x8192 --dense-layers bf16,mor_fp8,mor_rejected \
  --gemm-configs "chain_tiles=False;default" --iters 10 2>&1 | tee $OUT/r/dense_chain.log | grep '"layer"'
cd $OUT && tar czf r.tgz r
