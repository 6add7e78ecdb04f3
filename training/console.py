"""What the trainer tells its user while it runs."""

from __future__ import annotations

import sys

import jax
from tqdm.auto import tqdm


def warn(message: str) -> None:
    """Prints a warning above the progress bar, once per run (process 0 of several)."""
    if jax.process_index() == 0:
        tqdm.write(message, file=sys.stderr)
