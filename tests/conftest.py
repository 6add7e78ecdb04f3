"""Test-wide setup: eight simulated CPU devices, and one compilation cache per session.

XLA reads the flags once, when the backend starts, so they are set before the first
computation; every test process sees the same eight devices.

The suite builds the same programs in many places: both xdist workers, each subprocess
(CLI, 2-process ``jax.distributed`` and benchmark runs) and tests that wrap a program and so
compile it again. JAX's persistent compilation cache in one directory per session (made by
the controlling process, inherited by the workers and subprocesses through the environment,
removed at the end) lets each program compile once. Its entries are keyed by the program,
the devices and the compiler options, so a hit is the same executable; tests that count
compiles switch it off (``trainer_testing.count_backend_compiles``).
"""

import os
import shutil
import tempfile

import pytest

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("KERAS_BACKEND", "jax")

_OWN_CACHE = None
if "PYTEST_XDIST_WORKER" not in os.environ and "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _OWN_CACHE = tempfile.mkdtemp(prefix="pytest-jax-compilation-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
    # Most of the suite's programs compile in 0.1-5 s; the default (1 s) would skip half.
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.1")


def pytest_unconfigure(config):
    if _OWN_CACHE is not None and not hasattr(config, "workerinput"):
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory, worker_id):
    """Directories made once per session and shared by the xdist workers."""
    from session_cache import SessionCache

    base = tmp_path_factory.getbasetemp()
    return SessionCache((base if worker_id == "master" else base.parent) / "session-cache")


@pytest.fixture(scope="session")
def shared_runs(session_cache):
    """Runs trained once per session and shared by the xdist workers (``SharedRuns``)."""
    from trainer_testing import SharedRuns  # imports JAX: after the flags above are set

    return SharedRuns(session_cache)
