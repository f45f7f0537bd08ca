#!/bin/bash
# Forty-second session, calls 2 and 3: gpu1b_wide training, 20 steps, the
# block GEMM's tiles paired (this tree: ``bash gpu169.sh``) or not (the
# tree before, carried in scratch/old: ``bash gpu169.sh old``), against
# dense in the same process. train_lm.py puts its own tree first on
# sys.path, so the old tree runs its own copy of examples/ (call 3 ran
# this tree's, and so this tree's mor_jax; call 5 is the old one).
export PYTHONUNBUFFERED=1
mkdir -p $OUT/r
cd "$(dirname "$0")/../../.."
ROOT=$PWD
[ -e mor_jax/kernels ] || ln -s ../kernels mor_jax/kernels
stamp() { echo "$(date +%T) $*" | tee -a $OUT/r/phases.log; }
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv | tee -a $OUT/r/phases.log
if [ "$1" = old ]; then
  PP=$ROOT/scratch/old; RECIPES=dense,mor_block; LIMIT=330
else
  PP=$ROOT; RECIPES=dense,mor_block,mor_channel; LIMIT=480
fi
grep -c "paired" $PP/mor_jax/kernels/block_gemm.py | tee -a $OUT/r/phases.log
# The block GEMM module that train_lm.py's sys.path finds.
(cd $PP/examples && python3 -c "import sys, pathlib; sys.path.insert(0, str(pathlib.Path('train_lm.py').resolve().parent.parent)); import mor_jax.kernels.block_gemm as m; print(m.__file__)") | tee -a $OUT/r/phases.log
stamp train $1
PYTHONPATH=$PP timeout $LIMIT python3 $PP/examples/train_lm.py --preset gpu1b_wide --steps 20 --eval-every 20 \
  --val-batches 2 --log-every 5 --stats-every 10 --no-progress --execution fp8 \
  --recipes $RECIPES --out /tmp/w 2>&1 | tee $OUT/r/train_$1.log | grep "ms/step"
grep -A5 "^| recipe" $OUT/r/train_$1.log
stamp end
