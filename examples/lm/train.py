"""Training: optimizer, train and eval steps, checkpoint and resume, the loop.

Each recipe trains from the same initial parameters on the same batches
(AdamW, warmup and cosine decay, gradient clipping), so that the recipes
differ only in their quantization. ``train_recipe`` writes the recipe's
metrics file (``metrics``) and, at a deadline, a checkpoint from which the
same call resumes bit for bit.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import importlib.metadata
import json
import math
import os
import pathlib
import platform
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import flax
import jax
import jax.numpy as jnp
import optax
import tqdm
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import mor_jax
from mor_jax.dense import flatten_stats

from .config import Config, describe, policy
from .data import Corpus, sample_batch, validation_windows
from .metrics import Writer, read_jsonl
from .model import Transformer, count_params, flops_per_step
from .sharding import BATCH_AXES, make_mesh, shardings


class TrainState(NamedTuple):
  step: jax.Array
  params: Any
  opt_state: Any


# Consecutive steps with non-finite gradients skipped before the optimizer
# gives up and lets them through (a diverged run then shows as NaN).
MAX_SKIPPED_STEPS = 5


def make_optimizer(cfg: Config) -> tuple[optax.GradientTransformation,
                                         optax.Schedule]:
  """AdamW with warmup and cosine decay, after global-norm clipping.

  A step whose gradients hold a NaN or an infinity is skipped (parameters
  and moments unchanged, ``optax.apply_if_finite``); a finite step is bit
  for bit the plain chain's.
  """
  schedule = optax.warmup_cosine_decay_schedule(
      0.0, cfg.lr, cfg.warmup, max(cfg.steps, cfg.warmup + 1),
      end_value=cfg.lr * cfg.min_lr_ratio)
  # Weight decay on matrices (kernels, embedding, positions), not on biases
  # and norms.
  mask = functools.partial(jax.tree.map, lambda p: p.ndim >= 2)
  tx = optax.chain(
      optax.clip_by_global_norm(cfg.clip),
      optax.adamw(schedule, b1=0.9, b2=0.95, weight_decay=cfg.weight_decay,
                  mask=mask))
  return optax.apply_if_finite(tx, MAX_SKIPPED_STEPS), schedule


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits,
                                                         targets).mean()


def loss_and_grads(model: Transformer, params, probes, batch: jax.Array, *,
                   stats: bool = True):
  """Loss, parameter gradients and the MoR statistics of one batch.

  With ``stats`` False no statistics are asked for: without the
  "mor_stats" collection and the "mor_grads" probes, XLA drops every op
  that only fed them, and MoR's decisions (which the GEMMs need) are all
  that is left.

  Returns:
    (loss, grads, ``flatten_stats`` of the forward and backward statistics,
    their ``mor_jax.summarize``; both empty without ``stats``).
  """
  def loss_fn(params, probes):
    if not stats:
      return cross_entropy(model.apply({"params": params}, batch[:, :-1]),
                           batch[:, 1:]), {}
    logits, mutated = model.apply({"params": params, "mor_grads": probes},
                                  batch[:, :-1], mutable=["mor_stats"])
    return cross_entropy(logits, batch[:, 1:]), mutated.get("mor_stats", {})

  probes = probes if stats else {}
  (loss, fwd), (grads, g_probes) = jax.value_and_grad(
      loss_fn, argnums=(0, 1), has_aux=True)(params, probes)
  return (loss, grads, flatten_stats(fwd, g_probes),
          mor_jax.summarize(fwd, g_probes) if probes else {})


def train_step(model: Transformer, tx: optax.GradientTransformation,
               schedule: optax.Schedule, cfg: Config, state: TrainState,
               probes, tokens: jax.Array, data_key: jax.Array, *,
               batch_sharding: NamedSharding | None = None,
               stats: bool = True):
  """One AdamW step on a batch drawn from ``tokens`` by (data_key, step).

  With ``batch_sharding`` the batch (the same one) is split over the mesh's
  batch axes; the rest follows from the parameters' shardings. With
  ``stats`` False the step takes no MoR statistics (``loss_and_grads``).

  Returns:
    (new state, [loss, lr, grad_norm, skipped], the MoR statistics as one
    vector in the sorted order of their names, their ``mor_jax.Summary``).
    ``skipped`` is 1.0 where the gradients were non-finite and the update
    was skipped; the statistics' ``nonfinite`` entries say which layer and
    role saw the NaN or Inf.
  """
  batch = sample_batch(tokens, jax.random.fold_in(data_key, state.step),
                       cfg.batch, cfg.seq_len)
  if batch_sharding is not None:
    batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
  loss, grads, stats, summary = loss_and_grads(model, state.params, probes,
                                               batch, stats=stats)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  skipped = 1.0 - opt_state.last_finite.astype(jnp.float32)
  scalars = jnp.stack([loss, schedule(state.step), optax.tree.norm(grads),
                       skipped])
  # One stacked vector rather than thousands of scalar outputs per step.
  stats = (jnp.stack([stats[k] for k in sorted(stats)]) if stats
           else jnp.zeros((0,), jnp.float32))
  return TrainState(state.step + 1, params, opt_state), scalars, stats, summary


def stat_names(model: Transformer, cfg: Config, params, probes) -> list[str]:
  """The names of ``train_step``'s statistics vector, in its order."""
  return sorted(jax.eval_shape(
      functools.partial(loss_and_grads, model), params, probes,
      jnp.zeros((1, cfg.seq_len + 1), jnp.int32))[2])


def eval_loss(model: Transformer, params, windows: jax.Array) -> jax.Array:
  """Mean next-byte loss over [n, batch, seq+1] windows (the recipe's forward)."""
  def one(w):
    return cross_entropy(model.apply({"params": params}, w[:, :-1]), w[:, 1:])
  return jnp.mean(jax.lax.map(one, windows))


# ----------------------------------------------------------------------------
# The metrics file's header, checkpoints and resuming.


def versions() -> dict[str, str]:
  dev = jax.devices()[0]
  return {"python": platform.python_version(), "jax": jax.__version__,
          "jaxlib": importlib.metadata.version("jaxlib"), "flax": flax.__version__,
          "optax": optax.__version__, "mor_jax": mor_jax.__version__,
          "backend": jax.default_backend(), "device": dev.device_kind,
          "devices": str(jax.device_count())}


def run_header(recipe: str, cfg: Config, corpus: Corpus, n_params: int,
               mesh_shape: dict[str, int] | None) -> dict[str, Any]:
  """The first row of a metrics file: what the run is and where it ran."""
  return dict(
      kind="config", recipe=recipe, description=describe(recipe),
      policy=repr(policy(recipe, cfg)), config=dataclasses.asdict(cfg),
      corpus=corpus.describe(), params=n_params,
      tokens_per_step=cfg.batch * cfg.seq_len,
      flops_per_step=flops_per_step(cfg, n_params), versions=versions(),
      mesh=mesh_shape, command=" ".join([os.path.basename(sys.executable)] + sys.argv),
      date=datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec="seconds"))


def _resume_point(path: pathlib.Path, ckpt: pathlib.Path,
                  header: dict[str, Any]) -> int:
  """The step to resume ``path`` from (0: start afresh); trims later rows."""
  if not ckpt.exists() or not path.exists():
    return 0
  rows = read_jsonl(path)
  old = {k: rows[0].get(k) for k in ("config", "corpus", "recipe")}
  new = {k: header[k] for k in old}
  if old != new:
    raise SystemExit(
        f"{path} holds a run with other settings than this one; use another "
        f"--out or delete {path.name} and {ckpt.name}.\n old: {old}\n new: {new}")
  step = int(ckpt.name.split(".")[-2])
  keep = [r for r in rows if r["kind"] in ("config", "resume") or
          r.get("step", 0) < step or (r["kind"] == "val" and r["step"] <= step)]
  path.write_text("".join(json.dumps(r, separators=(",", ":")) + "\n"
                          for r in keep))
  return step


def open_run(out: pathlib.Path, recipe: str, state: TrainState,
             header: dict[str, Any]) -> tuple[TrainState, int, Writer]:
  """Resumes from ``out``'s last checkpoint of ``recipe``, or starts afresh.

  The checkpoints are deleted once read: the metrics file now holds the
  rows up to the resumed step, and a later stop writes a new one.

  Returns:
    (the state to train from, its step, the metrics file's ``Writer``).
  """
  # Several processes neither checkpoint nor resume (main refuses
  # --time-limit there).
  ckpts = (sorted(out.glob(f"{recipe}.*.ckpt")) if jax.process_count() == 1
           else [])
  path = out / f"{recipe}.jsonl"
  start = _resume_point(path, ckpts[-1], header) if ckpts else 0
  if start:
    state = flax.serialization.from_bytes(state, ckpts[-1].read_bytes())
    writer = Writer(path, "a")
    writer.write(kind="resume", step=start)
  else:
    writer = Writer(path, "w")
    writer.write(**header)
  for c in ckpts:
    c.unlink()
  return state, start, writer


def save_checkpoint(path: pathlib.Path, state: TrainState) -> None:
  """Writes ``state`` to ``path`` atomically (a killed write leaves no file)."""
  path.with_suffix(".tmp").write_bytes(flax.serialization.to_bytes(state))
  path.with_suffix(".tmp").rename(path)


# ----------------------------------------------------------------------------
# Placement and compilation, on one device or a mesh.


class Program(NamedTuple):
  """The compiled steps and the device-resident inputs they take.

  ``step(state, probes, tokens, data_key)`` is a ``train_step`` (donating
  ``state``); ``lean_step``, if not None, the same without statistics, for
  the steps whose statistics are not logged; ``evaluate(params, windows)``
  is an ``eval_loss``.
  """

  step: Callable[..., Any]
  lean_step: Callable[..., Any] | None
  evaluate: Callable[..., jax.Array]
  probes: Any
  tokens: jax.Array
  data_key: jax.Array
  windows: jax.Array
  compile_s: float


def _jit_one_device(steps, evaluate, cfg, corpus, state, probes, data_key):
  """All on the default device; a step donates the state it replaces."""
  tokens = jnp.asarray(corpus.train)
  windows = jnp.asarray(validation_windows(corpus.val, cfg))
  return ([jax.jit(step, donate_argnums=0) for step in steps],
          jax.jit(evaluate), state, probes, tokens, data_key, windows)


def _jit_on_mesh(steps, evaluate, cfg, corpus, state, probes, data_key, *,
                 mesh_shape):
  """The state as ``shardings`` says, validation windows split over the
  batch axes, everything else replicated; the returned values are placed."""
  mesh = make_mesh(mesh_shape)
  replicated = NamedSharding(mesh, P())
  state_shardings = shardings(mesh, state)
  windows_sharding = NamedSharding(mesh, P(None, BATCH_AXES))
  # Every process holds the same host values (same seed, same corpus), the
  # condition for device_put onto devices of other processes.
  state = jax.device_put(state, state_shardings)
  probes, data_key, tokens = jax.device_put(
      (probes, data_key, corpus.train), replicated)
  windows = jax.device_put(validation_windows(corpus.val, cfg),
                           windows_sharding)
  step_fns = [jax.jit(
      functools.partial(step,
                        batch_sharding=NamedSharding(mesh, P(BATCH_AXES))),
      in_shardings=(state_shardings, replicated, replicated, replicated),
      out_shardings=(state_shardings, replicated, replicated, replicated),
      donate_argnums=0) for step in steps]
  eval_fn = jax.jit(evaluate,
                    in_shardings=(state_shardings.params, windows_sharding),
                    out_shardings=replicated)
  return step_fns, eval_fn, state, probes, tokens, data_key, windows


def compile_program(step: Callable[..., Any], evaluate: Callable[..., Any],
                    cfg: Config, corpus: Corpus, state: TrainState, probes,
                    data_key: jax.Array,
                    mesh_shape: dict[str, int] | None, *, lean: bool = False
                    ) -> tuple[Program, TrainState]:
  """Places the inputs and compiles ``step`` and ``evaluate`` ahead of time.

  Compiling before the first step keeps compilation out of the step times
  and measures it on its own (``compile_s``).

  Args:
    step: ``train_step`` with its model, optimizer, schedule and ``cfg``.
    evaluate: ``eval_loss`` with its model.
    cfg: the settings.
    corpus: the data, copied to the device(s).
    state: the state to train from.
    probes: the model's "mor_grads" variables.
    data_key: the key of the batches.
    mesh_shape: as ``train_recipe`` takes it.
    lean: also compile ``step`` without statistics (``Program.lean_step``).

  Returns:
    (the ``Program``, ``state`` placed on the device(s)).
  """
  jit = (_jit_one_device if mesh_shape is None
         else functools.partial(_jit_on_mesh, mesh_shape=mesh_shape))
  steps = [step] + ([functools.partial(step, stats=False)] if lean else [])
  step_fns, eval_fn, state, probes, tokens, data_key, windows = jit(
      steps, evaluate, cfg, corpus, state, probes, data_key)
  t0 = time.perf_counter()
  step_fn, *lean_fn = [f.lower(state, probes, tokens, data_key).compile()
                       for f in step_fns]
  eval_fn = eval_fn.lower(state.params, windows).compile()
  compile_s = time.perf_counter() - t0
  return Program(step_fn, lean_fn[0] if lean else None, eval_fn, probes,
                 tokens, data_key, windows, compile_s), state


# ----------------------------------------------------------------------------
# The loop.


def validate(program: Program, params, writer: Writer, step: int) -> float:
  """The validation loss at ``step``, also written to the metrics file."""
  loss = float(program.evaluate(params, program.windows))
  writer.write(kind="val", step=step, loss=loss)
  return loss


def _write_window(writer: Writer, fetched, window_s: float,
                  names: list[str]) -> None:
  """The train (and stats) rows of one log window; its time split evenly."""
  for s, (loss, lr, gnorm, skipped), st, summary in fetched:
    writer.write(kind="train", step=s, loss=float(loss), lr=float(lr),
                 grad_norm=float(gnorm), step_time=window_s / len(fetched),
                 skipped=bool(skipped))
    if st is not None and names:  # No statistics without MoR ("dense").
      writer.write(kind="stats", step=s, stats=dict(zip(names, map(float, st))),
                   summary=summary.as_dict())


def train_loop(program: Program, state: TrainState, cfg: Config,
               writer: Writer, names: list[str], bar: tqdm.tqdm, *,
               start: int, deadline: float,
               trace_dir: pathlib.Path | None = None
               ) -> tuple[TrainState, int, float]:
  """Steps from ``start`` to ``cfg.steps``, or until ``deadline`` passes.

  Steps are dispatched asynchronously and their outputs pulled to the host
  once per window, so the device never waits for the host. A window ends
  every ``cfg.log_every`` steps, at every ``cfg.eval_every``-th step and at
  the last one; validation runs after the window that ends at its step (its
  time left out of the window's), and the deadline is checked there. With
  ``trace_dir`` the windows that hold the first ``cfg.profile_steps`` steps
  are traced with ``jax.profiler`` into it.

  Returns:
    (the state, the step reached, seconds spent in training windows).
  """
  pending: list[tuple[int, jax.Array, jax.Array | None,
                     mor_jax.Summary | None]] = []
  train_s, step = 0.0, start
  tracing = trace_dir is not None and cfg.profile_steps > 0
  if tracing:
    jax.profiler.start_trace(str(trace_dir))
  t_window = time.perf_counter()
  while step < cfg.steps:
    # A lean step's statistics would not be logged: it takes none.
    lean = program.lean_step is not None and step % cfg.stats_every
    state, scalars, stats, summary = (program.lean_step if lean else
                                      program.step)(
        state, program.probes, program.tokens, program.data_key)
    pending.append((step, scalars, *((None, None) if lean else
                                     (stats, summary))))
    step += 1
    # A validation step ends its window even off the logging grid: it needs
    # that step's parameters, and its time stays out of the step times.
    evaluate = step % cfg.eval_every == 0 or step == cfg.steps
    if step % cfg.log_every and not evaluate:
      continue
    # The host syncs once per window: the scalars, then the statistics of
    # the logged steps and of every skipped one (to show where the NaN or
    # Inf arose).
    scalars = jax.device_get([p[1] for p in pending])
    logged = [p[0] % cfg.stats_every == 0 or bool(sc[3])
              for p, sc in zip(pending, scalars)]
    stats = jax.device_get([p[2:] if keep else (None, None)
                            for p, keep in zip(pending, logged)])
    fetched = [(p[0], sc, *st) for p, sc, st in zip(pending, scalars, stats)]
    window_s = time.perf_counter() - t_window
    train_s += window_s
    if tracing and step - start >= cfg.profile_steps:
      jax.profiler.stop_trace()  # the window's kernels have all run
      tracing = False
    _write_window(writer, fetched, window_s, names)
    postfix = {"loss": f"{float(fetched[-1][1][0]):.3f}"}
    last = next((f[3] for f in reversed(fetched) if f[3] is not None), None)
    if last is not None and "e4m3_share/all" in last:
      postfix["E4M3"] = f"{float(last['e4m3_share/all']):.1%}"
    if evaluate:
      postfix["val"] = f"{validate(program, state.params, writer, step):.3f}"
    pending = []
    writer.flush()
    bar.set_postfix(postfix, refresh=False)
    bar.update(len(fetched))
    if step < cfg.steps and time.monotonic() > deadline:
      break
    t_window = time.perf_counter()
  if tracing:
    jax.profiler.stop_trace()
  return state, step, train_s


def initial_variables(model: Transformer, cfg: Config):
  """(params, probes, data key) of ``cfg.seed``.

  The parameters and the key of the batches depend on the seed alone, not on
  the model's policy: every recipe starts from the same parameters and sees
  the same batches (``sample_batch`` by the key and the step).
  """
  init_key, data_key = jax.random.split(jax.random.key(cfg.seed))
  variables = model.init(init_key, jnp.zeros((1, cfg.seq_len), jnp.int32))
  # No "mor_grads" (nor "mor_stats") without MoR: the "dense" recipe.
  return variables["params"], variables.get("mor_grads", {}), data_key


def train_recipe(recipe: str, cfg: Config, corpus: Corpus, out: pathlib.Path,
                 *, deadline: float = math.inf, progress: bool = True,
                 mesh_shape: dict[str, int] | None = None,
                 lean: bool = False) -> bool:
  """Trains one recipe and writes ``out/<recipe>.jsonl``.

  At ``deadline`` (a ``time.monotonic()`` value), checked every
  ``cfg.log_every`` steps and at each validation, it saves
  ``out/<recipe>.<step>.ckpt`` and stops; the same call later resumes from
  it, bit for bit as if never stopped.

  With ``mesh_shape`` the step runs on a ``make_mesh`` mesh over all devices
  (every process's): the batch split over data and fsdp, the MoRDense
  kernels as ``partition_spec`` says. The initial parameters and the batches
  are those of the one-device run, and so are the results up to the order
  of floating-point sums. With several processes (``jax.distributed``) only
  process 0 writes, and ``deadline`` must stay infinite.

  Args:
    recipe: a key of ``RECIPES``, or an ablation of one (``parse_recipe``).
    cfg: the settings.
    corpus: the data.
    out: the output directory (created if missing).
    deadline: when to checkpoint and stop.
    progress: whether to show a progress bar.
    mesh_shape: sizes of the ``MESH_AXES`` (``parse_mesh``), or None for one
      device.
    lean: run the steps whose statistics are not logged without any
      (``Program.lean_step``; the header's "lean_steps").

  Returns:
    True if training finished, False if it stopped at the deadline.
  """
  out.mkdir(parents=True, exist_ok=True)
  model = Transformer(cfg, policy(recipe, cfg))
  tx, schedule = make_optimizer(cfg)
  params, probes, data_key = initial_variables(model, cfg)
  state = TrainState(jnp.int32(0), params, tx.init(params))
  # Only MoR takes statistics; "dense" has none to leave out.
  lean = lean and bool(probes)
  header = dict(run_header(recipe, cfg, corpus, count_params(params),
                           mesh_shape), lean_steps=lean)
  state, start, writer = open_run(out, recipe, state, header)
  program, state = compile_program(
      functools.partial(train_step, model, tx, schedule, cfg),
      functools.partial(eval_loss, model), cfg, corpus, state, probes,
      data_key, mesh_shape, lean=lean)
  names = stat_names(model, cfg, params, probes)

  if start == 0:
    validate(program, state.params, writer, 0)
  bar = tqdm.tqdm(total=cfg.steps, initial=start, desc=f"{recipe:12}",
                  unit="step", disable=not progress or jax.process_index(),
                  dynamic_ncols=True)
  trace_dir = (out / f"{recipe}_profile"
               if cfg.profile_steps and jax.process_index() == 0 else None)
  state, step, train_s = train_loop(program, state, cfg, writer, names, bar,
                                    start=start, deadline=deadline,
                                    trace_dir=trace_dir)
  done = step == cfg.steps
  if not done:
    save_checkpoint(out / f"{recipe}.{step:07d}.ckpt", state)
  bar.close()
  writer.write(kind="done" if done else "stopped", step=step,
               compile_s=program.compile_s, train_s=train_s)
  writer.close()
  return done
