"""Test configuration: the ``gpu`` marker skips visibly where no GPU is present."""

import jax
import pytest

ON_GPU = jax.default_backend() == "gpu"


def pytest_collection_modifyitems(config, items):
  del config
  skip = pytest.mark.skip(
      reason="needs a GPU: run `pytest -m gpu` on the lent H100 "
      f"(this backend is {jax.default_backend()!r})")
  for item in items:
    if "gpu" in item.keywords and not ON_GPU:
      item.add_marker(skip)
