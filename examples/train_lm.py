"""Trains a byte-level language model under MoR FP8 recipes and compares them with BF16.

A decoder-only transformer (pre-LN, causal attention, GELU MLP, learned
positions, tied byte embedding) whose QKV, attention output, FC1 and FC2
layers are ``mor_jax.dense.MoRDense``; the embedding and the head stay plain
BF16. It learns the Python standard library of the running interpreter
(``*.py`` under ``sysconfig.get_paths()["stdlib"]``, site-packages left out),
one byte per token, split into training and validation by file with a hash
of each file's relative path. The corpus is identical on machines with the
same Python build; Python 3.11 and 3.12 ship different files, so losses are
comparable only between runs whose corpus fingerprint (printed, and stored
with the results) agrees.

Each recipe trains from the same initial parameters on the same batches
(AdamW, warmup and cosine decay, gradient clipping). Per recipe it writes
``<out>/<recipe>.jsonl``: loss, learning rate and step time per step, the MoR
statistics of every layer and role every ``--stats-every`` steps, and the
validation loss every ``--eval-every`` steps. The report (after training, or
``--report DIR`` over the files of several runs) prints a summary table and
writes ``summary.md``, ``summary.csv`` and PNG plots to the same directory.
One process writes to an ``--out`` at a time: a second is refused before it
trains.

Run:
  python examples/train_lm.py --preset demo
  python examples/train_lm.py --preset gpu --recipes mor_channel --out DIR
  python examples/train_lm.py --report DIR
"""

# The code lives in examples/lm/, one module per concept; this file is the
# command line (its docstring above is --help's description).

from __future__ import annotations

import argparse
import math
import pathlib
import sys
import time
from collections.abc import Callable, Sequence

if not __package__:  # Run as a script: make the repository root importable.
  sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

# pylint: disable=g-import-not-at-top,wrong-import-position
import jax
import jax.numpy as jnp

from examples.lm.config import (PRESETS, RECIPES, Config, add_config_flags,
                                check_backend, config_from_args, policy,
                                recipe_list)
from examples.lm.data import Corpus, load_corpus
from examples.lm.metrics import Run, lock_directory
from examples.lm.model import Transformer, count_params, flops_per_step
from examples.lm.report import report
from examples.lm.sharding import check_mesh, format_mesh, parse_mesh
from examples.lm.train import train_recipe, versions
# pylint: enable=g-import-not-at-top,wrong-import-position


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  recipes = "\n".join(f"  {name:12} {desc}"
                      for name, (desc, _) in RECIPES.items())
  presets = "\n".join(
      f"  {name:6} {c.layers} layers, d_model {c.d_model}, seq {c.seq_len}, "
      f"batch {c.batch}, {c.steps} steps"
      + (f", {c.outlier_channels} outlier channels x{c.outlier_scale:g}"
         if c.outlier_channels else "") + f"; recipes {','.join(r)}"
      for name, (c, r) in PRESETS.items())
  parser = argparse.ArgumentParser(
      prog="train_lm.py",
      description=__doc__.split("\n\n")[0] + "\n\n" + __doc__.split(
          "\n\n", 1)[1].rsplit("\n\nRun:", 1)[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog=f"recipes (every GEMM operand: activations, weights, gradients):\n"
             f"{recipes}\n"
             "  RECIPE+ROLE=OTHER[+...]  an ablation: RECIPE with ROLE "
             "(activation,\n               weight or gradient) quantized as "
             "OTHER, e.g.\n               mor_channel+gradient=bf16\n\n"
             f"presets:\n{presets}\n\n"
             "A GPU run one recipe per command (resumable after "
             "--time-limit):\n"
             "  python examples/train_lm.py --preset gpu --recipes bf16 "
             "--out DIR --time-limit 540\n"
             "  ... one command per recipe, one at a time (one process "
             "per --out), then:\n"
             "  python examples/train_lm.py --report DIR")
  parser.add_argument("--preset", choices=list(PRESETS), default="demo",
                      help="settings and recipes to start from (default demo)")
  parser.add_argument("--recipes", type=recipe_list, default=None,
                      help="comma-separated recipes, or 'all' (default: the "
                      "preset's)")
  parser.add_argument("--out", type=pathlib.Path, default=None,
                      help="output directory (default runs/train_lm/<preset>);"
                      " the report covers every recipe's file in it")
  parser.add_argument("--report", type=pathlib.Path, metavar="DIR",
                      help="only build the summary and plots from DIR/*.jsonl "
                      "(or *.jsonl.gz)")
  parser.add_argument("--time-limit", type=float, default=math.inf,
                      metavar="SECONDS",
                      help="checkpoint and stop once this much time has "
                      "passed since start; the same command resumes")
  parser.add_argument("--no-progress", action="store_true",
                      help="no progress bar")
  parser.add_argument(
      "--lean-steps", action="store_true",
      help="steps whose MoR statistics are not logged (all but every "
      "--stats-every-th) run a second program that takes none: faster "
      "steps, twice the compilation; a step skipped for NaN/Inf between "
      "logged steps then has no statistics row (--stats-every 1 has them all)")
  scale = parser.add_argument_group(
      "scaling out (the same results up to the order of sums)")
  scale.add_argument(
      "--mesh", type=parse_mesh, default=None, metavar="data=D,fsdp=F,tensor=T",
      help="shard over a mesh of all devices: the batch over data and fsdp, "
      "QKV/FC1 kernels column- and attention-output/FC2 kernels row-parallel "
      "over tensor and split over fsdp on their other axis; omitted axes are "
      "1 (default: one device, no mesh)")
  scale.add_argument(
      "--distributed", action="store_true",
      help="call jax.distributed.initialize() first: one process per host "
      "(or per GPU), all running the same command; the cluster (SLURM, Open "
      "MPI, ...) is detected unless the next three flags are given")
  scale.add_argument("--coordinator", metavar="HOST:PORT",
                     help="with --distributed: process 0's address")
  scale.add_argument("--num-processes", type=int, metavar="N",
                     help="with --distributed: the number of processes")
  scale.add_argument("--process-id", type=int, metavar="I",
                     help="with --distributed: this process's index, 0..N-1")
  add_config_flags(parser)
  args = parser.parse_args(argv)
  # Else lock_directory's mkdir fails with a FileExistsError traceback.
  if args.out is not None and args.out.exists() and not args.out.is_dir():
    parser.error(f"--out must be a directory; {args.out} is a file.")
  return args


def _start_processes(args: argparse.Namespace) -> None:
  """Joins the cluster under --distributed; refuses flags it cannot honour."""
  cluster = (args.coordinator, args.num_processes, args.process_id)
  if not args.distributed and any(v is not None for v in cluster):
    raise SystemExit("error: --coordinator, --num-processes and --process-id "
                     "need --distributed.")
  if args.distributed:
    jax.distributed.initialize(*cluster)
    if jax.process_count() > 1 and math.isfinite(args.time_limit):
      raise SystemExit("error: --time-limit (checkpoint and resume) runs in "
                       "one process only, not with several.")


def _describe(say: Callable[..., None], cfg: Config, corpus: Corpus,
              recipes: Sequence[str], mesh: dict[str, int] | None) -> None:
  """Prints the corpus, the model's size and cost, and the devices."""
  c = corpus.describe()
  say(f"corpus: {c['root']} (Python {c['python']}): {c['train_files']} "
      f"training files ({c['train_bytes'] / 1e6:.1f} MB), {c['val_files']} "
      f"validation files ({c['val_bytes'] / 1e6:.1f} MB), fingerprint "
      f"{c['fingerprint']}")
  shapes = jax.eval_shape(
      Transformer(cfg, policy(recipes[0], cfg)).init, jax.random.key(0),
      jnp.zeros((1, cfg.seq_len), jnp.int32))
  n_params = count_params(shapes["params"])
  say(f"model: {n_params / 1e6:.2f}M parameters; {cfg.batch * cfg.seq_len:,}"
      f" tokens/step ({cfg.steps * cfg.batch * cfg.seq_len / 1e6:.1f}M in "
      f"{cfg.steps} steps); {flops_per_step(cfg, n_params) / 1e12:.3f} "
      f"TFLOP/step; {versions()['device']} ({jax.default_backend()})")
  say(f"devices: {format_mesh(mesh) if mesh else 'one'} of "
      f"{jax.device_count()} ({jax.process_count()} process(es))")


def main(argv: Sequence[str] | None = None) -> None:
  start = time.monotonic()
  args = parse_args(argv)
  if args.report is not None:
    print(report(args.report))
    print(f"plots and summary in {args.report}")
    return
  cfg = config_from_args(args)
  _start_processes(args)
  try:
    check_backend(cfg, jax.default_backend())
    if args.mesh is not None:
      check_mesh(args.mesh, cfg, jax.device_count())
  except ValueError as e:
    raise SystemExit(f"error: {e}") from None
  out = args.out or pathlib.Path("runs", "train_lm", args.preset)
  with lock_directory(out):  # Before anything trains: one writer per --out.
    _train(args, cfg, out, deadline=start + args.time_limit)


def _train(args: argparse.Namespace, cfg: Config, out: pathlib.Path, *,
           deadline: float) -> None:
  """Trains the recipes into ``out``, then prints and writes the report."""
  # Every process trains; process 0 alone prints and writes.
  say = print if jax.process_index() == 0 else lambda *_, **__: None
  recipes = args.recipes or PRESETS[args.preset][1]
  corpus = load_corpus(cfg.val_fraction)
  _describe(say, cfg, corpus, recipes, args.mesh)
  for recipe in recipes:
    if not train_recipe(recipe, cfg, corpus, out, deadline=deadline,
                        progress=not args.no_progress, mesh_shape=args.mesh,
                        lean=args.lean_steps):
      say(f"stopped at --time-limit {args.time_limit:g} s during {recipe}; "
          "run the same command again to resume.")
      return
    if jax.process_index() == 0:
      run = Run.load(out / f"{recipe}.jsonl")
      say(f"{recipe}: {run.steps_done} steps, median {run.step_ms():.1f} "
          f"ms/step, {run.tokens_per_s():,.0f} tokens/s on mesh {run.mesh}; "
          f"compiled in {run.end.get('compile_s', math.nan):.1f} s")
  if jax.process_index() == 0:
    print()
    print(report(out))
    print(f"metrics, summary and plots in {out}")


if __name__ == "__main__":
  main()
