"""Work done once per pytest session and shared by its xdist workers: ``SessionCache``."""

from __future__ import annotations

import fcntl
import shutil
from collections.abc import Callable
from pathlib import Path


class SessionCache:
    """Directories made once per session, whichever worker asks first.

    Each name has a directory and a lock file under the session's base temp directory, which
    every worker of the session shares: the first worker to ask makes the directory while
    the others wait on the lock, then every worker reads it. The contents are read-only: a
    test that changes files copies them first.
    """

    def __init__(self, root: Path):
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def directory(self, name: str, make: Callable[[Path], None]) -> Path:
        """The directory ``name``, filled by ``make(directory)`` the first time."""
        directory, done = self.root / name, self.root / f"{name}.done"
        with open(self.root / f"{name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
            if not done.exists():
                shutil.rmtree(directory, ignore_errors=True)  # a failed attempt's leftovers
                directory.mkdir()
                make(directory)
                done.touch()
        return directory
