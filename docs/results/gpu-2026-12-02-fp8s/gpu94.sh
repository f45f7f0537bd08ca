#!/bin/bash
# Twentieth session, call 1: what the layer's small kernels are (profile and
# optimized HLO of the step), and Nsight Compute on the two dual passes.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
export PYTHONPATH=$PWD:$PWD/benchmarks
D=docs/results/gpu-2026-12-02-fp8s
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv | tee $OUT/r/smi.txt
(cd benchmarks && timeout 100 python3 profile.py --layers mor_fp8 --top 90 2>&1 | grep '"run"' > $OUT/r/profile_mor.log); grep busy_ms $OUT/r/profile_mor.log
timeout 150 python3 $D/hlo_dump.py $OUT/r 2>&1 | tail -2; gzip $OUT/r/mor_fp8.hlo.txt
timeout 240 ncu --clock-control none --set full -k regex:mor_dual -c 2 -o $OUT/r/dual python3 $D/ncu_target.py 2>&1 | tail -4
ncu -i $OUT/r/dual.ncu-rep --page details --csv > $OUT/r/dual_details.csv 2>&1; wc -l $OUT/r/dual_details.csv
ncu -i $OUT/r/dual.ncu-rep --page source --print-source sass --csv > $OUT/r/dual_sass.csv 2>&1; wc -l $OUT/r/dual_sass.csv; head -c 300 $OUT/r/dual_sass.csv; gzip $OUT/r/dual_sass.csv
ls -la $OUT/r
