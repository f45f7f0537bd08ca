#!/bin/bash
# Thirty-sixth session, call 4: this session's CPU changes where the GPU or
# jax 0.11.2 can tell: jax.export with symbolic shapes on the GPU (XLA's
# passes and GEMM under export, against jit at the same shapes), the strict
# xfail of the Pallas interpreter under Explicit axes on jax 0.11.2's CPU,
# the NNX pure-dict restore and method=<function> on flax 0.12.10, and
# MoRDense at (16384, 8192, 8192).
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
nvidia-smi --query-gpu=name --format=csv,noheader | tee $OUT/r/gpu.txt
stamp test_export
PYTHONPATH=$PWD timeout 200 python3 -m pytest -v tests/test_export.py 2>&1 | tee $OUT/r/test_export.log | grep "PASS\|FAIL\|SKIP\|passed\|failed\|^E .*Error"
stamp test_axes
JAX_PLATFORMS=cpu PYTHONPATH=$PWD timeout 80 python3 -m pytest -q -rxX tests/test_dense_sharding.py -k "explicit_axes_step" 2>&1 | tee $OUT/r/test_axes.log | grep "passed\|failed\|XFAIL\|XPASS"
stamp test_nnx
JAX_PLATFORMS=cpu PYTHONPATH=$PWD timeout 70 python3 -m pytest -q tests/test_dense.py tests/test_convert.py -k "pure_dict or method_given" 2>&1 | tee $OUT/r/test_nnx.log | grep "passed\|failed\|^E .*Error"
cd benchmarks
export PYTHONPATH=$PWD/..:$PWD
stamp dense
timeout 130 python3 gemm.py --only dense --dense-shapes 16384x8192x8192 --dense-layers bf16,flax_fp8,mor_fp8,mor_rejected --iters 10 2>&1 | tee $OUT/r/dense.log | grep '"dense"\|Error'
stamp end
