#!/bin/bash
# Seventeenth session, call 5 (run as one command line, recorded here): the
# 72-GEMM chain twice more, with timing.timed_interleaved's untimed calls.
export PYTHONUNBUFFERED=1; mkdir -p $OUT/r; [ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels; export PYTHONPATH=$PWD; cd benchmarks; for i in 1 2; do timeout 90 python3 gemm.py --only chain --iters 9 2>&1 | grep '"chain"' | tee $OUT/r/chain_$i.log; done
