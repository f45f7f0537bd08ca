#!/bin/bash
# Thirty-sixth session, call 1: the thirty-fourth and thirty-fifth
# sessions' CPU-only changes on the GPU (tensors past 2**31 - 1 elements;
# eager statistics of the block path; explicit mesh axes on jax 0.11.2),
# the FP8/emulation equality tests, and MoRDense at both issue-14 shapes
# with nn.Dense and Flax's FP8 Dense in the same process.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee $OUT/r/gpu.txt
python3 -c "import jax, flax; print(jax.__version__, flax.__version__, jax.devices())" | tee -a $OUT/r/gpu.txt
stamp test_gpu
PYTHONPATH=$PWD timeout 100 python3 -m pytest -v -m gpu tests/test_gpu.py -k past_int32 2>&1 | tee $OUT/r/test_gpu.log | grep "PASS\|FAIL\|SKIP\|passed\|failed\|Error"
stamp test_fp8
PYTHONPATH=$PWD timeout 170 python3 -m pytest -v tests/test_fp8.py -k "eager or second_order or past_int32 or (fp8_on_gpu_equals_emulation and not block)" 2>&1 | tee $OUT/r/test_fp8.log | grep "PASS\|FAIL\|SKIP\|passed\|failed\|Error"
stamp test_axes
JAX_PLATFORMS=cpu PYTHONPATH=$PWD timeout 90 python3 -m pytest -q tests/test_dense_sharding.py tests/test_convert.py -k "explicit or out_sharding or shard_map" 2>&1 | tee $OUT/r/test_axes.log | grep "passed\|failed\|Error"
cd benchmarks
export PYTHONPATH=$PWD/..:$PWD
stamp dense
timeout 200 python3 gemm.py --only dense --dense-shapes 16384x8192x8192,16384x8192x28672 --dense-layers bf16,flax_fp8,mor_fp8,mor_rejected --iters 10 2>&1 | tee $OUT/r/dense.log | grep '"dense"\|Error'
stamp end
