"""Data: the standard library's Python sources, split by file, one byte a token.

The interpreter's own ``*.py`` files (site-packages left out) are text every
machine has offline. Files go to training or validation by a hash of their
relative path, so the split does not move when a file's contents do. The
corpus is identical on machines with the same Python build; Python 3.11 and
3.12 ship different files, so losses are comparable only between runs whose
``Corpus.fingerprint`` agrees.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pathlib
import platform
import sysconfig
from typing import Any

import jax
import numpy as np

from .config import Config


@dataclasses.dataclass(frozen=True)
class Corpus:
  """Training and validation bytes, each file followed by a NUL separator.

  Attributes:
    root: the directory the files come from.
    train_files: relative paths (POSIX) of the training files, sorted.
    val_files: relative paths of the validation files, sorted.
    train: uint8 bytes of the training files.
    val: uint8 bytes of the validation files.
    fingerprint: first 16 hex digits of the SHA-256 of both splits.
  """

  root: str
  train_files: tuple[str, ...]
  val_files: tuple[str, ...]
  train: np.ndarray
  val: np.ndarray
  fingerprint: str

  def describe(self) -> dict[str, Any]:
    return {"root": self.root, "python": platform.python_version(),
            "train_files": len(self.train_files),
            "val_files": len(self.val_files), "train_bytes": self.train.size,
            "val_bytes": self.val.size, "fingerprint": self.fingerprint}


def stdlib_root() -> pathlib.Path:
  """The running interpreter's standard library directory."""
  return pathlib.Path(sysconfig.get_paths()["stdlib"])


def source_files(root: pathlib.Path) -> list[str]:
  """Sorted POSIX paths, relative to ``root``, of the ``*.py`` files under it.

  Third-party directories (site-packages, dist-packages) are left out;
  symbolic links to directories are not followed, so the list depends only on
  the files installed under ``root``.
  """
  files = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = [d for d in dirnames
                   if d not in ("site-packages", "dist-packages", "__pycache__")]
    rel = pathlib.Path(dirpath).relative_to(root)
    files.extend((rel / f).as_posix() for f in filenames if f.endswith(".py"))
  return sorted(files)


def is_validation(rel_path: str, val_fraction: float) -> bool:
  """Whether a file belongs to validation: a stable hash of its path, not of its bytes."""
  digest = hashlib.sha256(rel_path.encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") < val_fraction * 2.0**64


def load_corpus(val_fraction: float, root: pathlib.Path | None = None) -> Corpus:
  """Reads and splits the corpus (the standard library unless ``root`` is given).

  Args:
    val_fraction: expected share of files held out for validation.
    root: a directory to read instead of the standard library.

  Returns:
    The ``Corpus``.
  """
  root = pathlib.Path(root) if root is not None else stdlib_root()
  files = source_files(root)
  val_files = tuple(f for f in files if is_validation(f, val_fraction))
  train_files = tuple(f for f in files if not is_validation(f, val_fraction))
  if not train_files or not val_files:
    raise ValueError(f"{root}: {len(train_files)} training and "
                     f"{len(val_files)} validation files; need both.")

  def join(names):
    return np.frombuffer(b"".join((root / n).read_bytes() + b"\0"
                                  for n in names), np.uint8)

  train, val = join(train_files), join(val_files)
  digest = hashlib.sha256(train.tobytes() + b"\0\0" + val.tobytes())
  return Corpus(str(root), train_files, val_files, train, val,
                digest.hexdigest()[:16])


def sample_batch(tokens: jax.Array, key: jax.Array, batch: int,
                 seq_len: int) -> jax.Array:
  """``batch`` random windows of ``seq_len + 1`` tokens, drawn on the device."""
  starts = jax.random.randint(key, (batch,), 0, tokens.shape[0] - seq_len)
  return jax.vmap(
      lambda s: jax.lax.dynamic_slice(tokens, (s,), (seq_len + 1,)))(starts)


def validation_windows(val: np.ndarray, cfg: Config) -> np.ndarray:
  """Fixed, evenly spaced windows of the validation bytes: [n, batch, seq+1]."""
  n = cfg.val_batches * cfg.batch
  if val.size < cfg.seq_len + 1:
    raise ValueError(f"validation split has {val.size} bytes, fewer than "
                     f"--seq-len + 1 = {cfg.seq_len + 1}.")
  starts = np.linspace(0, val.size - cfg.seq_len - 1, n).astype(np.int64)
  windows = val[starts[:, None] + np.arange(cfg.seq_len + 1)]
  return windows.reshape(cfg.val_batches, cfg.batch, cfg.seq_len + 1)
