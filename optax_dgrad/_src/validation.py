"""Construction-time checks of hyperparameters.

Values are checked when they are concrete (Python or NumPy numbers, concrete JAX arrays).
Traced values (for instance hyperparameters that `optax.inject_hyperparams` feeds back in
under `jax.jit`) and schedules (callables) cannot be inspected and pass through unchecked;
their concrete first value was already checked when the optimizer state was initialised.
"""

from typing import Any

import jax
import numpy as np

NORMALIZATIONS = ("leaf", "tree")


def _concrete_value(value: Any) -> np.ndarray | None:
    """Returns `value` as a NumPy array, or None when it is traced or a schedule."""
    if callable(value) or isinstance(value, jax.core.Tracer):
        return None
    return np.asarray(value)


def check_non_negative(name: str, value: Any) -> None:
    """Raises ValueError unless `value` (when concrete) is >= 0."""
    array = _concrete_value(value)
    if array is not None and not np.all(array >= 0):
        raise ValueError(f"`{name}` must be >= 0, got {name}={value!r}.")


def check_decay_rate(name: str, value: Any) -> None:
    """Raises ValueError unless `value` (when concrete) lies in [0, 1)."""
    array = _concrete_value(value)
    if array is not None and not np.all((array >= 0) & (array < 1)):
        raise ValueError(f"`{name}` must lie in [0, 1), got {name}={value!r}.")


def check_period(value: Any) -> None:
    """Raises ValueError unless `value` (when concrete) is a whole number >= 1."""
    array = _concrete_value(value)
    if array is None:
        return
    if not np.all((array >= 1) & (array == np.floor(array))):
        raise ValueError(f"`period` must be a whole number >= 1, got period={value!r}.")


def check_normalization(value: Any) -> None:
    """Raises ValueError unless `value` is one of NORMALIZATIONS."""
    if not (isinstance(value, str) and value in NORMALIZATIONS):
        raise ValueError(
                f"`normalization` must be one of {NORMALIZATIONS}, got normalization={value!r}."
        )
