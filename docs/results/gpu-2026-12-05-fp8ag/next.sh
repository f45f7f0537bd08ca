#!/bin/bash
# Prepared in the thirty-seventh session for the next one with device time
# (not yet run): split.diff's epilogue (the factors split into their parts
# above and below 1 on the vectors; scale_rows_and_columns redefined to
# match) on the GPU: the kernel against its twin bit for bit, the
# epilogues in turns (epilogue.py), MoRDense at both issue-14 shapes.
# Run from the repository root, on a clean tree of main; it applies
# split.diff and leaves it applied.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
D=docs/results/gpu-2026-12-05-fp8ag
git apply $D/split.diff || exit 1
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee $OUT/r/gpu.txt
stamp test_fp8
PYTHONPATH=$PWD timeout 200 python3 -m pytest -q tests/test_fp8.py -k "spurious and kernel or gemm_kernel_equals_reference or chained_tiles" 2>&1 | tee $OUT/r/test_fp8.log | grep "FAIL\|passed\|failed\|^E .*Error"
stamp epilogue
PYTHONPATH=$PWD:$PWD/benchmarks timeout 150 python3 $D/epilogue.py 2>&1 | tee $OUT/r/epilogue.log | grep '^{\|Error'
stamp dense
(cd benchmarks && PYTHONPATH=$PWD/..:$PWD timeout 200 python3 gemm.py --only dense --dense-shapes 16384x8192x8192,16384x8192x28672 --dense-layers bf16,flax_fp8,mor_fp8,mor_rejected --iters 10 2>&1 | tee $OUT/r/dense.log | grep '"dense"\|Error')
stamp end
