#!/bin/bash
# Forty-second session, call 4: paired tiles (variant 0) against unpaired
# (7) at the shapes of gpu1b_wide's GEMMs (d_model 4096, d_ff 16384, 16384
# tokens), all E4M3: training had shown no change (calls 2 and 3).
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
ROOT=$PWD
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
for shape in 16384x4096x16384 16384x16384x4096 4096x16384x16384 16384x4096x4096; do
  stamp $shape
  PYTHONPATH=$ROOT:$ROOT/benchmarks timeout 75 python3 benchmarks/profile.py --sweep block --shape $shape --variants 0,7 --shares 0 2>&1 | tee -a $OUT/r/sweep.log | grep '^{\|Error'
done
stamp end
