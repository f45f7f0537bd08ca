#!/bin/bash
# Thirty-sixth session, call 2: the Explicit-axes tests on jax 0.11.2's CPU
# after per-shard bodies take an Auto copy of the mesh (three failed in
# call 1), the rest of the FP8/emulation equality tests (call 1's ran out
# of time after "accepted"), and MoRDense at (16384, 8192, 28672).
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
nvidia-smi --query-gpu=name --format=csv,noheader | tee $OUT/r/gpu.txt
stamp test_axes
JAX_PLATFORMS=cpu PYTHONPATH=$PWD timeout 150 python3 -m pytest -q tests/test_dense_sharding.py tests/test_convert.py -k "explicit or out_sharding or shard_map or Explicit" 2>&1 | tee $OUT/r/test_axes.log | grep "passed\|failed\|^E .*Error"
stamp test_fp8
PYTHONPATH=$PWD timeout 160 python3 -m pytest -v tests/test_fp8.py -k "fp8_on_gpu_equals_emulation and (rejected or mixed)" 2>&1 | tee $OUT/r/test_fp8.log | grep "PASS\|FAIL\|SKIP\|passed\|failed\|Error"
cd benchmarks
export PYTHONPATH=$PWD/..:$PWD
stamp dense
timeout 260 python3 gemm.py --only dense --dense-shapes 16384x8192x28672 --dense-layers bf16,flax_fp8,mor_fp8,mor_rejected --iters 10 2>&1 | tee $OUT/r/dense.log | grep '"dense"\|Error'
stamp end
