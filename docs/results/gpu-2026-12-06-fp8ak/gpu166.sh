#!/bin/bash
# Forty-first session, call 3 (420d80a's kernel): Nsight Compute on the
# GEMMs of ncu_target.py (cuBLAS BF16; the block GEMM at 100% BF16 blocks
# through its block loops and through its 16-bit loop, at 50% random and
# at the same K, at 0%): where a BF16 K block's cost in the block loops goes.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
D=docs/results/gpu-2026-12-06-fp8ak
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv | tee -a $OUT/r/phases.log
stamp ncu
PYTHONPATH=$PWD:$PWD/benchmarks timeout ${NCU_S:-420} ncu --clock-control none \
  --section SpeedOfLight --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis \
  --metrics lts__t_bytes.sum,dram__bytes_read.sum,lts__t_sector_hit_rate.pct \
  -k regex:anonymous_mosaic -c ${NCU_C:-8} -o $OUT/r/gemms python3 $D/ncu_target.py $CASES 2>&1 | tee $OUT/r/ncu.log | grep -v '^==PROF==' | tail -12
ncu -i $OUT/r/gemms.ncu-rep --page details --csv > $OUT/r/ncu_details.csv 2>&1; wc -l $OUT/r/ncu_details.csv
ncu -i $OUT/r/gemms.ncu-rep --page raw --csv --metrics gpu__time_duration.sum,lts__t_bytes.sum,dram__bytes_read.sum,lts__t_sector_hit_rate.pct,sm__throughput.avg.pct_of_peak_sustained_elapsed,l1tex__throughput.avg.pct_of_peak_sustained_active > $OUT/r/ncu_raw.csv 2>&1; cat $OUT/r/ncu_raw.csv | cut -c1-400 | head -30
rm -f $OUT/r/gemms.ncu-rep
stamp end
