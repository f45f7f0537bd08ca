"""A handful of scalars for a dashboard, from a step's MoR statistics.

``flatten_stats`` gives nine or more scalars per quantization (hundreds per
step for a small model); ``summarize`` reduces them to what a dashboard
plots every step: the share of each representation per role, the worst
error and where it happened, and how many quantizations fell back to BF16.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from mor_jax import _stats

ROLES = ("activation", "weight", "gradient")


@functools.partial(jax.tree_util.register_dataclass,
                   data_fields=["scalars"], meta_fields=["locations"])
@dataclasses.dataclass(frozen=True, eq=False)
class Summary(Mapping):
  """The output of ``summarize``: a read-only ``{name: 0-d array}`` mapping.

  A pytree whose leaves are the scalars and whose static metadata names the
  quantizations, so it leaves a jitted step whole; ``as_dict`` and
  ``format`` run on the host afterwards.

  Attributes:
    scalars: the scalars (see ``summarize`` for the keys).
    locations: ``"<layer path>/<gemm>/<role>"`` of every quantization, in
      the order ``scalars["worst_error_at"]`` indexes.
  """

  scalars: dict[str, jax.Array]
  locations: tuple[str, ...] = ()

  def __getitem__(self, key: str) -> jax.Array:
    return self.scalars[key]

  def __iter__(self) -> Iterator[str]:
    return iter(self.scalars)

  def __len__(self) -> int:
    return len(self.scalars)

  @property
  def worst_error_where(self) -> str:
    """The location of the largest ``chosen_error`` (host only)."""
    return self.locations[int(self.scalars["worst_error_at"])]

  def as_dict(self) -> dict[str, float | str]:
    """Python floats, with ``worst_error_at`` replaced by its location string."""
    out: dict[str, float | str] = {
        k: float(v) for k, v in self.scalars.items() if k != "worst_error_at"}
    out["worst_error_at"] = self.worst_error_where
    return out

  def format(self) -> str:
    """One line for a log or a progress bar, e.g.

    ``E4M3 act 100.0% wgt 100.0% grad 83.3% | worst error 0.0512 at
    fc2/wgrad/gradient | BF16 fallbacks 1/18``.
    """
    d = self.as_dict()
    short = {"activation": "act", "weight": "wgt", "gradient": "grad"}
    shares = " ".join(f"{short[r]} {d[f'e4m3_share/{r}']:.1%}" for r in ROLES
                      if f"e4m3_share/{r}" in d)
    text = f"E4M3 {shares} | " if shares else ""
    text += (f"worst error {d['worst_error']:.4f} at {d['worst_error_at']} | "
             f"BF16 fallbacks {d['bf16_fallbacks']:g}/{d['quantizations']:g}")
    if d["nonfinite"]:
      text += f" | nonfinite {d['nonfinite']:g}"
    return text


def summarize(mor_stats: Mapping | None = None,
              mor_grads: Mapping | None = None) -> Summary:
  """The few scalars of a step's statistics that a dashboard plots.

  Every quantization counts once: six per layer when both collections are
  given (a tensor quantized once for its two GEMMs, docs/numerics.md
  section 6, counts under each), and layers stacked by ``nn.scan`` (or a
  ``vmap``) once per layer.
  Pure JAX: call it inside the jitted step and log its result.

  Keys of the result, for each candidate name lowercased (e4m3, e5m2, bf16):

  - ``<name>_share/<role>`` (role: activation, weight, gradient) and
    ``<name>_share/all``: the mean over the quantizations of that role (of
    all of them) of the share of decision units (tensors, or blocks for
    sub-tensor recipes) in that representation; 0 where a recipe lacks it;
  - ``worst_error``: the largest ``chosen_error`` (the mean relative error
    of a tensor as quantized; 0 for one kept in BF16), and
    ``worst_error_at``: its index in ``Summary.locations``;
  - ``bf16_fallbacks``: the quantizations that kept BF16 although their
    recipe had an FP8 candidate (a sub-tensor recipe counts its share of
    BF16 blocks); ``quantizations``: how many quantizations were counted;
  - ``nonfinite``: the quantizations that met a NaN or an Inf.

  A layer applied k times in a step sums its backward statistics (see
  ``mor_jax.dense``: each unit's fractions sum to k); its shares and
  errors count as their mean over the applications. A layer not applied
  in the step (all its fractions 0: its variables as ``init`` made them,
  or a probe's zero gradient) is no quantization and is left out.

  Args:
    mor_stats: the ``"mor_stats"`` collection (or any nesting of it).
    mor_grads: the gradient with respect to the ``"mor_grads"`` collection.

  Returns:
    A ``Summary``: a mapping of 0-d float32 arrays (``worst_error_at``
    int32) that is also a pytree, plus host-side ``as_dict`` and ``format``.

  Raises:
    ValueError: if the collections hold no statistics.

  Examples:
    >>> import jax, jax.numpy as jnp, mor_jax
    >>> from mor_jax.dense import MoRDense
    >>> layer = MoRDense(4)
    >>> x = jax.random.normal(jax.random.key(0), (8, 16))
    >>> @jax.jit   # eager MoR runs op by op: slow
    ... def forward_stats(x):
    ...   v = layer.init(jax.random.key(1), x)
    ...   return layer.apply(v, x, mutable=["mor_stats"])[1]["mor_stats"]
    >>> s = mor_jax.summarize(forward_stats(x))
    >>> float(s["e4m3_share/activation"]), float(s["bf16_fallbacks"])
    (1.0, 0.0)
    >>> s.worst_error_where in ("fprop/activation", "fprop/weight")
    True
  """
  entries = list(_stats.walk_collections("summarize", mor_stats, mor_grads))
  if not entries:
    raise ValueError("summarize: no statistics found; pass the 'mor_stats' "
                     "collection and/or the gradient of 'mor_grads'.")
  names = sorted({n for _, s in entries for n in s.names},
                 key=lambda n: (n == "BF16", n))
  zero = jnp.zeros((), jnp.float32)
  share_sum = {(n, r): zero for n in names for r in ROLES + ("all",)}
  count = dict.fromkeys(ROLES + ("all",), zero)
  fallbacks = nonfinite = zero
  errors, locations = [], []
  for path, s in entries:
    role = path[-1]
    # Each quantization's fractions sum to 1 per unit: k for one applied k
    # times, 0 for one not applied.
    applied = jnp.sum(s.fraction_blocks, axis=-1)
    per_application = 1 / jnp.maximum(applied, 1)
    for i, name in enumerate(s.names):
      total = jnp.sum(s.fraction_blocks[..., i] * per_application)
      share_sum[name, "all"] += total
      if role in ROLES:
        share_sum[name, role] += total
    ran = jnp.sum(applied > 0).astype(jnp.float32)
    count["all"] += ran
    if role in ROLES:
      count[role] += ran
    if len(s.names) > 1:  # A recipe with an FP8 candidate; BF16 is the last.
      fallbacks += jnp.sum(s.fraction_blocks[..., -1] * per_application)
    nonfinite += jnp.sum(s.nonfinite)
    errors.append(jnp.ravel(s.chosen_error * per_application))
    module, leaf = path[:-2], path[-2:]
    locations += ["/".join(module + tuple(map(str, idx)) + leaf)
                  for idx in np.ndindex(*s.amax.shape)]
  present = {path[-1] for path, _ in entries} | {"all"}
  scalars = {f"{n.lower()}_share/{r}": share_sum[n, r] /
             jnp.maximum(count[r], 1)
             for n in names for r in ROLES + ("all",) if r in present}
  errors = jnp.concatenate(errors)
  scalars.update(
      worst_error=jnp.max(errors),
      worst_error_at=jnp.argmax(errors).astype(jnp.int32),
      bf16_fallbacks=fallbacks,
      quantizations=count["all"],
      nonfinite=nonfinite)
  return Summary(scalars=scalars, locations=tuple(locations))
