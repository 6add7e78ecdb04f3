"""Construction-time checks of hyperparameters and moment dtypes, and the dtype check of
parameter leaves.

Hyperparameters are checked when they are concrete (Python or NumPy numbers, concrete JAX
arrays): a non-finite value or one out of range is a ``ValueError`` naming the argument and
its value. Traced values (for instance hyperparameters that :func:`optax.inject_hyperparams`
feeds back in under :func:`jax.jit`) and schedules (callables) cannot be inspected and pass
through unchecked; their concrete first value was already checked when the optimizer state
was initialised.
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

NORMALIZATIONS = ("leaf", "tree")


def _concrete_value(value: Any) -> np.ndarray | None:
    """Returns `value` as a NumPy array, or None when it is traced or a schedule."""
    if callable(value) or isinstance(value, jax.core.Tracer):
        return None
    return np.asarray(value)


def _check_finite(name: str, value: Any, array: np.ndarray) -> None:
    if not np.issubdtype(array.dtype, np.number):  # a bool is no hyperparameter value
        raise ValueError(f"`{name}` must be a number, got {name}={value!r}.")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"`{name}` must be finite, got {name}={value!r}.")


def check_non_negative(name: str, value: Any) -> None:
    """Raises ValueError unless `value` (when concrete) is finite and >= 0."""
    array = _concrete_value(value)
    if array is None:
        return
    _check_finite(name, value, array)
    if not np.all(array >= 0):
        raise ValueError(f"`{name}` must be >= 0, got {name}={value!r}.")


def check_decay_rate(name: str, value: Any) -> None:
    """Raises ValueError unless `value` (when concrete) lies in [0, 1)."""
    array = _concrete_value(value)
    if array is None:
        return
    _check_finite(name, value, array)
    if not np.all((array >= 0) & (array < 1)):
        raise ValueError(f"`{name}` must lie in [0, 1), got {name}={value!r}.")


def check_period(value: Any) -> None:
    """Raises ValueError unless `value` (when concrete) is a whole number >= 1."""
    array = _concrete_value(value)
    if array is None:
        return
    _check_finite("period", value, array)
    # The step count it is compared with is an int32.
    if not np.all((array >= 1) & (array == np.floor(array)) & (array <= np.iinfo(np.int32).max)):
        raise ValueError(
            f"`period` must be a whole number in [1, 2**31 - 1], got period={value!r}."
        )


def check_normalization(value: Any) -> None:
    """Raises ValueError unless `value` is one of NORMALIZATIONS."""
    if not (isinstance(value, str) and value in NORMALIZATIONS):
        raise ValueError(
            f"`normalization` must be one of {NORMALIZATIONS}, got normalization={value!r}."
        )


def moment_dtype(name: str, value: Any) -> np.dtype | None:
    """``value`` as a canonical JAX dtype (None stays None).

    Raises ValueError naming `name` unless ``value`` is None or a real floating-point dtype:
    a stored moment holds an Adam moment, which an integer, bool or complex dtype cannot.
    """
    if value is None:
        return None
    try:
        dtype = jax.dtypes.canonicalize_dtype(value)
    except TypeError:  # not a dtype at all ("foo", 3)
        shown = repr(value)
    else:
        if name == "nu_dtype" and dtype == jnp.float16:
            raise ValueError(
                "`nu_dtype` float16 stores squared gradients below 6e-8 as 0, and the step then "
                "divides by eps alone: use bfloat16 (float32's range, half the memory) or "
                "float32."
            )
        if jnp.issubdtype(dtype, jnp.floating):
            return dtype
        shown = np.dtype(dtype).name
    raise ValueError(
        f"`{name}` must be None or a real floating-point dtype (float16, bfloat16, float32, "
        f"float64), got {name}={shown}."
    )


def check_float_leaves(tree: Any, what: str, transform: str) -> None:
    """Raises TypeError naming the first leaf of `tree` whose dtype is not real floating.

    The friction of every optimizer here compares magnitudes (:math:`|g_{t-1} - g_t|`,
    :math:`\\max D_t`), which has no meaning the paper defines for complex numbers, and an
    integer leaf cannot hold an Adam update. Leaves without a dtype (``None`` leaves are
    not leaves; ``optax.tree.map_params`` placeholders have none) are skipped. The check
    reads only static dtypes, so it costs nothing at run time.
    """
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        if isinstance(leaf, bool | int | float | complex):
            dtype = np.asarray(leaf).dtype
        else:
            dtype = getattr(leaf, "dtype", None)
        if dtype is not None and not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(
                f"{transform}: the {what} leaf {jax.tree_util.keystr(path) or '(root)'} has "
                f"dtype {np.dtype(dtype).name}; only real floating-point dtypes (float16, "
                "bfloat16, float32, float64) are supported."
            )
