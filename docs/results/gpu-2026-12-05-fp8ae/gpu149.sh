#!/bin/bash
# Thirty-third session, call 1: the thirty-second session's CPU-only changes
# on the GPU (second-order gradients straight-through beside the Pallas
# kernels; the kernel's epilogue scales in the order without spurious
# overflow), MoRDense at (16384, 8192, 8192), then the 72-GEMM chain on
# four kernels (head; plain tiles; plain tiles with one wgmma site; row
# factors hoisted out of the dequantizing loop), each with ptxas's report
# (registers, spills) dumped. The variants gemm_{tiles,cond,hoist}.py were
# 1aa44b2's kernels/gemm.py with tiles.diff, with the plain tiles of one
# wgmma site (kept: 9713c01's kernels/gemm.py) and with hoist.diff;
# not committed (`git apply` recreates them). ptxas's report went to the
# chain logs, too large to come back: call 2 greps it.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
D=$PWD/docs/results/gpu-2026-12-05-fp8ae
stamp test_fp8
PYTHONPATH=$PWD timeout 200 python3 -m pytest -v tests/test_fp8.py -k "second_order or straight_through or spurious or fp8_on_gpu_equals_emulation" 2>&1 | tee $OUT/r/test_fp8.log | grep "PASS\|FAIL\|SKIP\|passed\|failed\|Error"
cp kernels/gemm.py /tmp/gemm_head.py
cd benchmarks
export PYTHONPATH=$PWD/..:$PWD
stamp dense
timeout 120 python3 gemm.py --only dense --dense-shapes 16384x8192x8192 --dense-layers bf16,flax_fp8,mor_fp8,mor_rejected --iters 10 2>&1 | tee $OUT/r/dense.log | grep '"dense"\|Error'
for v in head tiles cond hoist; do
  if [ $v = head ]; then cp /tmp/gemm_head.py ../kernels/gemm.py; else cp $D/gemm_$v.py ../kernels/gemm.py; fi
  stamp chain_$v
  MOSAIC_GPU_DUMP_PTXAS=1 MOSAIC_GPU_DUMP_TO=$OUT/r/ptx_$v timeout 70 python3 gemm.py --only chain --iters 10 2>&1 | tee $OUT/r/chain_$v.log | grep '"kernel"\|Error'
  grep -rih 'spill\|registers\|C7[0-9]' $OUT/r/ptx_$v 2>/dev/null | sort | uniq -c | head -8
done
cp /tmp/gemm_head.py ../kernels/gemm.py
stamp end
