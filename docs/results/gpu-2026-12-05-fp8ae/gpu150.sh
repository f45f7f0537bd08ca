#!/bin/bash
# Thirty-third session, call 2: plain tiles with one wgmma site
# (plain_cond.diff, kernels/gemm.py here): its GPU tests and the second-order
# test at the GPU's FP8 tolerance; the mixed case (gemm_plain.py) and the
# chain with ptxas's register and spill report, against the head kernel
# (gemm_head.py: 1aa44b2's kernels/gemm.py, not committed), one process
# each.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
D=$PWD/docs/results/gpu-2026-12-05-fp8ae
stamp test_fp8
PYTHONPATH=$PWD timeout 210 python3 -m pytest -v tests/test_fp8.py -k "plain or one_accepted or second_order and fp8 or fp8_on_gpu_equals_emulation and mixed" 2>&1 | tee $OUT/r/test_fp8.log | grep "PASS\|FAIL\|passed\|failed\|^E "
cp kernels/gemm.py /tmp/gemm_cond.py
for v in cond head; do
  if [ $v = head ]; then cp $D/gemm_head.py kernels/gemm.py; else cp /tmp/gemm_cond.py kernels/gemm.py; fi
  stamp plain_$v
  PYTHONPATH=$PWD:$PWD/benchmarks timeout 100 python3 $D/../gpu-2026-12-04-fp8ad/gemm_plain.py 2>&1 | tee $OUT/r/gemm_plain_$v.log | grep '"case"\|Error'
  stamp chain_$v
  (cd benchmarks && PYTHONPATH=$PWD/..:$PWD MOSAIC_GPU_DUMP_PTXAS=1 timeout 60 python3 gemm.py --only chain --iters 10 > /tmp/chain_$v.log 2>&1)
  grep '^{' /tmp/chain_$v.log | tee $OUT/r/chain_$v.log | grep '"chain"'
  grep -i 'registers\|spill' /tmp/chain_$v.log | sort | uniq -c | tee $OUT/r/ptxas_$v.log
done
cp /tmp/gemm_cond.py kernels/gemm.py
stamp end
