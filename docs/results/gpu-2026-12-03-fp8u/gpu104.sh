#!/bin/bash
# Twenty-second session, call 1: tilings of both dual passes with more warps
# and more bytes in flight (profile.py's variants 24-36, and the 8-warp ones
# never run with prefetch), swept twice; then the layer at (16384, 8192, 8192)
# with the fastest codes tiling, the fastest statistics tiling and both,
# against the default, each timed alone with its energy (--power).
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
export PYTHONPATH=$PWD:$PWD/benchmarks
here=docs/results/gpu-2026-12-03-fp8u
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
for i in 1 2; do
  stamp sweep$i
  (cd benchmarks && timeout 200 python3 profile.py --sweep dual --shape 16384x8192 --variants 6,7,9,10,11,12,13,23,24,25,26,27,28,29,30,31,32,33,34,35,36 2>&1 | grep sweep | tee $OUT/r/sweep_dual$i.log)
done
configs=$(python3 $here/pick.py $OUT/r/sweep_dual1.log $OUT/r/sweep_dual2.log 2>>$OUT/r/phases.log)
stamp "layer $configs"
(cd benchmarks && timeout 200 python3 gemm.py --only dense --power --dense-shapes 16384x8192x8192 --dense-layers bf16,mor_fp8 --dual-configs "$configs" --iters 100 2>&1 | grep -v "^W\|^I" | tee $OUT/r/dense_power.log)
stamp end
