r"""A float64 NumPy reference of the optimizers, written from the formulas, for tests.

Independent of the JAX implementation: plain NumPy loops over steps and leaves, with the
friction of each optimizer written out as in :mod:`optax_dgrad`'s specification (max over
the finite entries of :math:`D_t`, 0 if there are none; :math:`\hat D_t = 0` where that
max is 0). JAX is used only to flatten and rebuild the gradient trees. The tests and
``benchmarks/optimizer_update.py`` check the optimizers against it.
"""

from typing import Any

import jax
import numpy as np

#: The optimizers the reference knows; "adam" is the friction-free baseline.
NAMES = ("adam", "diffgrad", "dgrad", "cos1", "cos2")


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def cyclic_decay(step: Any, period: int = 30) -> np.ndarray:
    r""":math:`r_t = |\cos(\pi t / P)| \, e^{-0.01 (\operatorname{mod}(t, P) + 1)}`."""
    step = np.asarray(step)
    return np.abs(np.cos(np.pi * step / period)) * np.exp(-0.01 * (np.mod(step, period) + 1))


def _finite_max(differences: list[np.ndarray]) -> float:
    finite = [d[np.isfinite(d)] for d in differences]
    return max((float(f.max()) for f in finite if f.size), default=0.0)


def reference_directions(
    name: str,
    grads_per_step: list[Any],
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    period: int = 30,
    normalization: str = "leaf",
    moment_dtype: Any = None,
) -> list[Any]:
    r"""The directions :math:`u_t` of every step (the update is :math:`-\eta u_t`).

    Args:
        name: one of :data:`NAMES`.
        grads_per_step: the gradients of steps :math:`t = 1, 2, \dots`, one pytree per step
            (all with the same structure).
        b1: decay rate of the first moment.
        b2: decay rate of the second moment.
        eps: added to :math:`\sqrt{\hat v_t}` in the denominator.
        period: the period :math:`P` of the cyclic factors (Cos#1, Cos#2).
        normalization: ``"leaf"`` (max of :math:`D_t` per leaf) or ``"tree"``.
        moment_dtype: the dtype the stored moments are rounded to after each step (as with
            ``mu_dtype`` and ``nu_dtype``, for example ``jax.numpy.bfloat16``); the step
            itself uses the unrounded :math:`m_t` and :math:`v_t`. None: no rounding.

    Returns:
        One pytree per step, with the gradients' structure and float64 NumPy leaves.

    Example:
        >>> import numpy as np
        >>> from optax_dgrad._src import numpy_reference
        >>> [u] = numpy_reference.reference_directions("dgrad", [{"w": np.array([1.0, -2.0])}])
        >>> np.round(u["w"], 4)  # sigmoid(4 * [0.999 / 2.004, 1]) * [1, -1]
        array([ 0.8802, -0.982 ])
    """
    if name not in NAMES:
        raise ValueError(f"unknown optimizer {name!r}; known: {NAMES}")
    treedef = jax.tree.structure(grads_per_step[0])
    first = [np.asarray(g, np.float64) for g in jax.tree.leaves(grads_per_step[0])]
    mu = [np.zeros_like(g) for g in first]
    nu = [np.zeros_like(g) for g in first]
    prev = [np.zeros_like(g) for g in first]
    directions = []
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        for t, grads in enumerate(grads_per_step, start=1):
            g = [np.asarray(x, np.float64) for x in jax.tree.leaves(grads)]
            for i, x in enumerate(g):
                mu[i] = b1 * mu[i] + (1 - b1) * x
                nu[i] = b2 * nu[i] + (1 - b2) * x**2
            d = [np.abs(x - v) for x, v in zip(g, nu, strict=True)]
            if normalization == "tree":
                maxima = [_finite_max(d)] * len(d)
            else:
                maxima = [_finite_max([leaf]) for leaf in d]
            r = float(cyclic_decay(t, period))
            c = 2 - r
            a = 9e-4 if abs(r) < 1e-6 else r
            step = []
            for i, x in enumerate(g):
                d_hat = d[i] / maxima[i] if maxima[i] > 0 else np.zeros_like(d[i])
                if name == "adam":
                    xi = 1.0
                elif name == "diffgrad":
                    xi = _sigmoid(np.abs(prev[i] - x))
                elif name == "dgrad":
                    xi = _sigmoid(4 * d_hat)
                elif name == "cos1":
                    xi = _sigmoid(4 * c * d_hat)
                else:
                    xi = _sigmoid(2 * c * d_hat) + _sigmoid(4 * a) - 0.5
                m_hat = mu[i] / (1 - b1**t)
                v_hat = nu[i] / (1 - b2**t)
                step.append(xi * m_hat / (np.sqrt(v_hat) + eps))
                prev[i] = x
                if moment_dtype is not None:
                    mu[i] = mu[i].astype(moment_dtype).astype(np.float64)
                    nu[i] = nu[i].astype(moment_dtype).astype(np.float64)
            directions.append(jax.tree.unflatten(treedef, step))
    return directions
