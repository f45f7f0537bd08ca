#!/bin/bash
# Seventeenth session, call 3: the layer in turns with the order reversed
# (chained first after nn.Dense), then gpu1b_wide's training in one process:
# dense, mor_channel with the FP8 loop chained, mor_channel per tile.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
export PYTHONPATH=$PWD
timeout 120 python3 scratch/layer_ab.py 16384x8192x8192 "mor_fp8:chain_fp8=True;mor_fp8:default" 11 2>&1 | grep -v "Deprec\|^ \|^$" | tee $OUT/r/layer_ab_reversed.log | grep '"bits"\|layer_ab'
timeout 360 python3 scratch/train_ab.py "dense@default;mor_channel@chain_fp8=True;mor_channel@default" \
  --preset gpu1b_wide --steps 20 --eval-every 20 --val-batches 2 --log-every 5 --stats-every 10 \
  --no-progress --execution fp8 2>&1 | grep -v "Deprec\|^ \|^$" | tee $OUT/r/train_ab.log | grep "===\|ms/step"
mkdir -p $OUT/r/w && for f in /tmp/train_ab/*/*.jsonl; do i=$(basename $(dirname $f)); cp $f $OUT/r/w/$(basename ${f%.jsonl})_run$i.jsonl; done
cd $OUT && tar czf r.tgz r
