"""Root pytest configuration, loaded before anything imports jax.

Eight virtual CPU devices let the sharding tests build real meshes on a CPU
machine; on a GPU machine the flag only affects the (unused) host platform.
"""

import os

_FLAG = "--xla_force_host_platform_device_count=8"
if _FLAG.split("=")[0] not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAG).strip()
