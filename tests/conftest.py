"""Test configuration: the ``gpu`` marker skips visibly where no GPU is
present; fixtures the training-example tests share."""

import jax
import pytest

ON_GPU = jax.default_backend() == "gpu"


def pytest_collection_modifyitems(config, items):
  del config
  skip = pytest.mark.skip(
      reason="needs a GPU: run `pytest -m gpu` on a Hopper GPU "
      f"(this backend is {jax.default_backend()!r})")
  for item in items:
    if "gpu" in item.keywords and not ON_GPU:
      item.add_marker(skip)


@pytest.fixture(scope="module")
def module_compilation_cache(tmp_path_factory):
  """A persistent compilation cache for one module's tests, then the old one.

  The training tests compile the same small programs many times (each run
  jits its step anew); caching them keeps those modules fast.
  """
  # pylint: disable-next=g-import-not-at-top
  from jax.experimental.compilation_cache import compilation_cache
  options = {"jax_compilation_cache_dir": str(tmp_path_factory.mktemp("xla")),
             "jax_persistent_cache_min_compile_time_secs": 0.0,
             "jax_persistent_cache_min_entry_size_bytes": 0}
  saved = {k: getattr(jax.config, k) for k in options}
  for k, v in options.items():
    jax.config.update(k, v)
  compilation_cache.reset_cache()
  yield
  for k, v in saved.items():
    jax.config.update(k, v)
  compilation_cache.reset_cache()


@pytest.fixture(scope="module")
def corpus():
  """The ``email`` package of the standard library: 0.4 MB, ~30 files."""
  from examples.lm import data  # pylint: disable=g-import-not-at-top
  return data.load_corpus(0.2, data.stdlib_root() / "email")
