"""The block GEMM's FP8 loop per K step, from Nsight Compute's SASS page.

Reads call1/ncu_sass.csv.gz (``ncu --page source --print-source sass
--csv`` on one launch of the block GEMM, all E4M3, (16384, 8192, 8192):
8192 output tiles of 64 K steps, two compute warpgroups of four warps) and
prints, per K step, the instructions each compute warp executes in the loop
around the wgmmas (before the first, and in all), those of the memory
warpgroup's loop, and the stall samples of the loop's instructions, the
largest first.

Run from this directory: python3 sass_steps.py
"""

import csv
import gzip

STEPS = 8192 * 64  # output tiles x K steps
COMPUTE_WARPS, MEMORY_WARPS = 8, 4

lines = gzip.open("call1/ncu_sass.csv.gz", "rt").read().splitlines()
start = next(i for i, line in enumerate(lines) if line.startswith('"Address"'))
rows = list(csv.reader(lines[start:]))
header, data = rows[0], rows[1:]
executed = header.index("Instructions Executed")
source = header.index("Source")
samples = header.index("Warp Stall Sampling (All Samples)")
count = [int(r[executed] or 0) for r in data]
text = [r[source].strip() for r in data]

# The compute loop: the block of instructions that run once per compute
# warp and K step, around the wgmmas.
gmma = [i for i, t in enumerate(text) if t.startswith("QGMMA")]
per_step = COMPUTE_WARPS * STEPS
lo = hi = gmma[0]
while count[lo - 1] == per_step:
  lo -= 1
while count[hi + 1] == per_step:
  hi += 1
loop = range(lo, hi + 1)
print(f"compute loop: instructions {lo}-{hi}, per warp and K step "
      f"{sum(count[i] for i in loop) / per_step:.0f}, before the first wgmma "
      f"{sum(count[i] for i in range(lo, gmma[0])) / per_step:.0f}")
# The memory warpgroup's loop: instructions run by its four warps once per
# K step (at least 3.5 times a step: its prologue issues some outside).
mem = [i for i in range(lo) if count[i] >= 3.5 * STEPS and count[i] < per_step]
print(f"memory loop: per warp and K step "
      f"{sum(count[i] for i in mem) / MEMORY_WARPS / STEPS:.0f}")
total = sum(int(data[i][samples] or 0) for i in loop)
print(f"compute loop stall samples: {total}")
for i in sorted(loop, key=lambda i: -int(data[i][samples] or 0))[:6]:
  print(f"  {int(data[i][samples] or 0):6d}  {text[i][:70]}")
