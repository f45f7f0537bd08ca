"""The sweep's fastest codes and statistics tilings, as gemm.py's
--dual-configs: 'default;<codes>;<stats>;<both>' (the mean over the logs
given, each a `profile.py --sweep dual` run)."""
import collections
import json
import sys

times = {"codes_ms": collections.defaultdict(list),
         "stats_ms": collections.defaultdict(list)}
for path in sys.argv[1:]:
  for line in open(path):
    d = json.loads(line)
    if isinstance(d.get("case"), dict):
      for key in times:
        times[key][tuple(sorted(d["case"].items()))].append(d[key])
best = {}
for key, got in times.items():
  mean = {case: sum(v) / len(v) for case, v in got.items()}
  case = min(mean, key=mean.get)
  print(f"{key}: best {dict(case)} {mean[case]:.4f} ms", file=sys.stderr)
  best[key[:5]] = ",".join(f"{key[:5]}.{k}={v}" for k, v in case)
print(f"default;{best['codes']};{best['stats']};{best['codes']},{best['stats']}")
