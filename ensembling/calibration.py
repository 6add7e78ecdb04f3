"""Temperature scaling of softmax probabilities (Guo et al., 2017).

Temperature scaling divides a network's logits by one scalar ``T > 0`` fitted to minimise the
NLL on held-out rows: ``T > 1`` softens over-confident predictions, ``T < 1`` sharpens
under-confident ones, and the decision ``argmax`` never changes. The score files hold softmax
probabilities rather than logits; since ``log softmax(z) = z - logsumexp(z)`` differs from
``z`` by a per-row constant, and softmax ignores such constants,
``softmax(log p / T) = softmax(z / T)``: scaling the log-probabilities is scaling the logits.

References:
  Guo, Pleiss, Sun & Weinberger, "On Calibration of Modern Neural Networks", ICML 2017.
"""

import math

import numpy as np
from scipy import optimize

from ensembling.metrics import check_labels

# Probabilities are clipped below at the float64 epsilon before the log, as
# sklearn.metrics.log_loss clips them: a zero probability would give -inf log-probabilities,
# which no temperature can scale.
_EPS = np.finfo(np.float64).eps
_LOG_EPS = math.log(_EPS)
_LOG_ONE_MINUS_EPS = math.log1p(-_EPS)
_XATOL = 1e-10


def _check_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """Float64 probabilities with rows renormalised to sum to one."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.ndim < 1 or probabilities.size == 0:
        raise ValueError(
            f"probabilities must be a non-empty [..., classes] array, got shape "
            f"{probabilities.shape}"
        )
    if not np.all(np.isfinite(probabilities)):
        raise ValueError("probabilities must be finite")
    if np.any(probabilities < 0):
        raise ValueError("probabilities must be non-negative")
    sums = probabilities.sum(axis=-1, keepdims=True)
    if np.any(sums <= 0):
        raise ValueError("every row of probabilities must have a positive sum")
    return probabilities / sums


def _check_temperature(temperature: float) -> float:
    temperature = float(temperature)
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be finite and positive, got {temperature}")
    return temperature


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    # Subtracting the row maximum keeps exp from overflowing for small temperatures.
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def apply_temperature(probabilities: np.ndarray, temperature: float) -> np.ndarray:
    r"""Temperature-scaled probabilities, ``softmax(log p / T)`` over the last axis.

    The rows are renormalised in float64 and clipped below at the float64 epsilon before the
    log. ``T = 1`` returns the renormalised probabilities (to rounding, and up to the
    clipping of entries below epsilon). The map is monotone in each row, so the ``argmax``
    is unchanged (short of classes within a few ulps that rounding may merge into a tie).

    Args:
      probabilities: float ``[..., classes]``, non-negative, each row with a positive sum.
      temperature: ``T > 0``.

    Returns:
      float64, the shape of ``probabilities``, rows summing to one.

    Raises:
      ValueError: for a non-positive or non-finite temperature, or empty, non-finite or
        negative probabilities, or a row summing to zero.

    Example:
      >>> import numpy as np
      >>> from ensembling.calibration import apply_temperature
      >>> apply_temperature(np.array([0.8, 0.2]), 2.0).round(4)
      array([0.6667, 0.3333])
    """
    temperature = _check_temperature(temperature)
    probabilities = _check_probabilities(probabilities)
    return np.exp(_log_softmax(np.log(np.maximum(probabilities, _EPS)) / temperature))


def fit_temperature(
    probabilities: np.ndarray,
    labels: np.ndarray,
    *,
    bounds: tuple[float, float] = (0.05, 20.0),
) -> float:
    r"""The temperature minimising the NLL of ``apply_temperature(probabilities, T)``.

    The NLL is ``-(1/n) sum_i log q_i(y_i)`` with ``q = apply_temperature(p, T)`` clipped to
    ``[eps, 1 - eps]`` as ``sklearn.metrics.log_loss`` clips it; ``log q`` comes from a
    log-softmax, never from ``log(exp(.))``. It is minimised over ``log T`` within
    ``log(bounds)`` by ``scipy.optimize.minimize_scalar(method="bounded")`` (Brent's method)
    with ``xatol=1e-10``: in ``log T`` the search is symmetric between sharpening and
    softening, and the NLL, convex in ``1/T``, has a single minimum there. A minimum outside
    ``bounds`` gives a temperature at (within tolerance of) the nearer bound.

    Args:
      probabilities: float ``[n, classes]``, as for ``apply_temperature``.
      labels: int ``[n]``, in ``[0, classes)``.
      bounds: ``(low, high)`` with ``0 < low < high``, the range of ``T`` searched.

    Returns:
      The fitted temperature ``T``.

    Raises:
      ValueError: for bad probabilities (see ``apply_temperature``), ``probabilities`` not
        ``[n, classes]``, ``labels`` not ``[n]`` integers in ``[0, classes)``, no rows, or
        bad ``bounds``.
      RuntimeError: if the optimiser does not converge.

    Example:
      >>> import numpy as np
      >>> from ensembling.calibration import fit_temperature
      >>> # 90% confident but 75% right: T = 2 turns 0.9 into 9**0.5 / (1 + 9**0.5) = 0.75.
      >>> p = np.array([[0.9, 0.1], [0.9, 0.1], [0.1, 0.9], [0.9, 0.1]])
      >>> round(fit_temperature(p, np.array([0, 0, 1, 1])), 6)
      2.0
    """
    probabilities = np.asarray(probabilities)
    labels = np.asarray(labels)
    if probabilities.ndim != 2 or probabilities.shape[0] == 0:
        raise ValueError(
            f"probabilities must be a non-empty [n, classes] array, got shape {probabilities.shape}"
        )
    probabilities = _check_probabilities(probabilities)
    n_rows, n_classes = probabilities.shape
    labels = check_labels(labels, n_rows, n_classes)
    low, high = (float(b) for b in bounds)
    if not (0 < low < high and math.isfinite(high)):
        raise ValueError(f"bounds must satisfy 0 < low < high < inf, got {bounds}")

    log_probabilities = np.log(np.maximum(probabilities, _EPS))
    rows = np.arange(n_rows)

    def nll(log_temperature: float) -> float:
        log_q = _log_softmax(log_probabilities / math.exp(log_temperature))[rows, labels]
        return -float(np.clip(log_q, _LOG_EPS, _LOG_ONE_MINUS_EPS).mean())

    result = optimize.minimize_scalar(
        nll, bounds=(math.log(low), math.log(high)), method="bounded", options={"xatol": _XATOL}
    )
    if not result.success:
        raise RuntimeError(f"temperature fit did not converge: {result.message}")
    return float(math.exp(result.x))
