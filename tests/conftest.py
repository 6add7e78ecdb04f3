"""Test-wide setup: eight simulated CPU devices, so sharding code is tested anywhere.

XLA reads the flag once, when the backend starts, so it must be set before the first
computation; every test process sees the same eight devices.
"""

import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("KERAS_BACKEND", "jax")
