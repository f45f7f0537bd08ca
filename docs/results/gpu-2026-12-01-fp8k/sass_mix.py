"""Instruction mix of the dual passes from Nsight Compute's SASS page.

Reads call5_sass.csv.gz (``ncu --page source --print-source sass --csv``,
one launch of mor_dual_stats and one of mor_dual_codes at (16384, 8192)
bf16) and prints, per kernel, the warp instructions executed, the thread
instructions per element, and the share of each opcode.

Run from this directory: python3 sass_mix.py
"""

import collections
import csv
import gzip

ELEMENTS = 16384 * 8192

lines = gzip.open("call5_sass.csv.gz", "rt").read().splitlines()
kernels, current = [], None
for line in lines:
  if line.startswith('"Kernel Name"'):
    current = [line]
    kernels.append(current)
  elif current is not None:
    current.append(line)

for block in kernels:
  rows = list(csv.reader(block[1:]))
  header, data = rows[0], rows[1:]
  executed = header.index("Instructions Executed")
  source = header.index("Source")
  ops = collections.Counter()
  for row in data:
    words = row[source].split()
    if not words:
      continue
    op = words[1] if words[0].startswith("@") else words[0]
    ops[op.split(".")[0]] += int(row[executed] or 0)
  total = sum(ops.values())
  print(block[0].split(",")[1], f"warp instructions {total:,}",
        f"thread instructions per element {total * 32 / ELEMENTS:.1f}")
  for op, n in ops.most_common(12):
    print(f"  {op:8s} {100 * n / total:5.1f}%")
