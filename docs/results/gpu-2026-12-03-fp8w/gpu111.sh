#!/bin/bash
# Twenty-fourth session, call 3: calls 1 and 2 found the block loops 1-5%
# slower under the default's cluster launch (gemm.py's tiles in clusters for
# the all-BF16 path) than under a plain one. nd_loop over ("grid",
# "cluster") hands a cluster's two blocks adjacent tiles; cluster_major.diff
# hands them tiles 66 apart, as a plain launch spreads adjacent tiles over
# the GPU. Kernel times with it (variant 7, unclustered, is the control),
# then the block GEMM's GPU tests and the looped bench on it.
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
# cluster_major.diff, applied without git (the copy may have no .git).
sed -i 's/collective_axes=("grid", "cluster"))/collective_axes=("cluster", "grid"))/' kernels/block_gemm.py
grep -n 'collective_axes=("cluster", "grid"))' kernels/block_gemm.py | tee $OUT/r/applied.log
stamp sweep_block
(cd benchmarks && PYTHONPATH=$PWD/..:$PWD timeout 100 python3 profile.py --sweep block --variants 0,7 --steps 5 2>&1 | grep -v "^W\|^I\|Deprec\|into.extend" | tee $OUT/r/sweep_block.log)
stamp test_block_gemm
PYTHONPATH=$PWD timeout 200 python3 -m pytest -q -m gpu tests/test_block_gemm.py 2>&1 | tee $OUT/r/test_block_gemm.log | tail -3
stamp bench_block
(cd benchmarks && PYTHONPATH=$PWD/..:$PWD timeout 120 python3 gemm.py --only block --block-variants 0,7 --iters 10 2>&1 | grep -v "^W\|^I\|Deprec" | tee $OUT/r/bench_block.log)
stamp end
