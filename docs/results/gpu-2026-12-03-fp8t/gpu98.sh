#!/bin/bash
# Twenty-first session, call 1: the GPU's power and clocks (nvidia-smi dmon,
# once a second, through the whole call) while nn.Dense, MoRDense and
# nn.Dense run back to back (the twentieth session's unrun gpu97.sh); where
# gpu1b_wide's training step goes now, dense and mor_channel (kernels by name
# and by HLO op, command buffers off); codes tilings with 8 warps.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
export PYTHONPATH=$PWD:$PWD/benchmarks
nvidia-smi dmon -s pc -d 1 -o T > $OUT/r/dmon.log 2>&1 &
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
stamp dense_loop
(cd benchmarks && timeout 130 python3 gemm.py --only dense --dense-shapes 16384x8192x8192 --dense-layers bf16,mor_fp8,bf16 --iters 200 2>&1 | grep '{' | while read l; do echo "$(date +%T) $l"; done | tee $OUT/r/dense_power.log)
for r in dense mor_channel; do
  stamp train_$r
  XLA_FLAGS=--xla_gpu_enable_command_buffer= timeout 170 python3 examples/train_lm.py --preset gpu1b_wide --steps 6 --eval-every 100 --val-batches 1 --log-every 5 --stats-every 10 --no-progress --execution fp8 --profile-steps 5 --recipes $r --out /tmp/p 2>&1 > /tmp/train_$r.log 2>&1; grep -i "ms/step\|tokens\|error" /tmp/train_$r.log | tail -8 | tee -a $OUT/r/phases.log
  stamp sum_$r
  (cd benchmarks && python3 profile.py --trace /tmp/p/${r}_profile --steps 5 --top 40 > $OUT/r/kernels_$r.log 2>&1; python3 profile.py --trace /tmp/p/${r}_profile --steps 5 --by-op --top 60 >> $OUT/r/kernels_$r.log 2>&1)
done
stamp sweep
(cd benchmarks && timeout 60 python3 profile.py --sweep dual --shape 16384x8192 --variants 6,17,23 2>&1 | grep sweep | tee $OUT/r/sweep_dual.log)
stamp end
kill %1
