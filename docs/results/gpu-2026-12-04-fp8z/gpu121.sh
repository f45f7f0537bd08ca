#!/bin/bash
# Twenty-seventh session, call 1: where the block GEMM's all-E4M3 FP8 loop
# spends its time: variants of its FP8 step timed by kernel, and Nsight
# Compute (counters and SASS) on the kernel as it is.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
D=docs/results/gpu-2026-12-04-fp8z
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv | tee $OUT/r/smi.txt
stamp variants
PYTHONPATH=$PWD:$PWD/benchmarks timeout 300 python3 $D/block_variants.py 2>&1 | tee $OUT/r/variants.log | grep '"case"'
stamp ncu
PYTHONPATH=$PWD timeout 240 ncu --clock-control none --set full -k regex:anonymous_mosaic --launch-skip 1 --launch-count 1 \
  -o $OUT/r/block python3 $D/block_target.py 2>&1 | tail -3
ncu -i $OUT/r/block.ncu-rep --page details --csv > $OUT/r/ncu_details.csv 2>&1; wc -l $OUT/r/ncu_details.csv
ncu -i $OUT/r/block.ncu-rep --page source --print-source sass --csv > $OUT/r/ncu_sass.csv 2>&1; wc -l $OUT/r/ncu_sass.csv; gzip $OUT/r/ncu_sass.csv
rm -f $OUT/r/block.ncu-rep
stamp end
