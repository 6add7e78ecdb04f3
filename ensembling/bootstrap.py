"""Percentile bootstrap confidence intervals over test images, resampled within folds.

Each resample draws, for every cross-validation fold, as many of that fold's test images as
it holds, with replacement (a stratified bootstrap): every fold keeps its size, so a pooled
statistic weights the folds as the data do. The interval is the percentile interval, the
``(1 - level)/2`` and ``1 - (1 - level)/2`` quantiles of the statistic over the resamples
(Efron & Tibshirani, 1993, ch. 13). Resamples are represented by their counts, how often each
image is drawn, so a resampled mean of ``values [..., n]`` is ``values @ counts.T / n``: one
matrix product for all rows and resamples, never a ``[rows, resamples, n]`` array.

With one fold the draws are exactly those of ``scipy.stats.bootstrap(..., method="percentile",
rng=np.random.default_rng(seed))`` on one sample (or on paired samples), so the intervals agree
with scipy's.

References:
  Efron & Tibshirani, "An Introduction to the Bootstrap", Chapman & Hall, 1993.
"""

from typing import NamedTuple

import numpy as np


class Interval(NamedTuple):
    """A confidence interval; floats for one statistic, arrays for several.

    Attributes:
      low: the lower bound(s).
      high: the upper bound(s).
    """

    low: float | np.ndarray
    high: float | np.ndarray


def resample_indices(sample_fold: np.ndarray, n_resamples: int, seed: int = 0) -> np.ndarray:
    """Bootstrap resamples of the test images, drawn within each fold.

    Position ``j`` of a resample holds a position drawn, uniformly with replacement, among
    the positions of the fold of ``j``; so every fold keeps its size in every resample. The
    draws come from ``np.random.default_rng(seed)``: for each fold, in ascending order of the
    fold id, ``rng.integers(0, size, (n_resamples, size))``, the call
    ``scipy.stats.bootstrap`` makes (with ``batch=None``) for a sample of that size. With one
    fold the resamples are hence scipy's, for the same seed.

    Args:
      sample_fold: int ``[n]``, the fold of each test image.
      n_resamples: the number of resamples ``B >= 1``.
      seed: the generator's seed.

    Returns:
      int64 ``[n_resamples, n]``, positions into ``[0, n)``.

    Raises:
      ValueError: if ``n_resamples < 1`` or ``sample_fold`` is not a non-empty 1-D integer
        array.

    Example:
      >>> import numpy as np
      >>> from ensembling.bootstrap import resample_indices
      >>> indices = resample_indices(np.array([0, 0, 1, 1, 1]), n_resamples=3)
      >>> indices.shape, bool(np.all(indices[:, :2] < 2) and np.all(indices[:, 2:] >= 2))
      ((3, 5), True)
    """
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int | np.integer):
        raise ValueError(f"n_resamples (--bootstrap N) must be an int, got {n_resamples!r}")
    if n_resamples < 1:
        raise ValueError(
            f"n_resamples must be >= 1, got {n_resamples}; pass --bootstrap N with N >= 1 "
            "(or leave the flag out for no confidence intervals)"
        )
    sample_fold = np.asarray(sample_fold)
    if sample_fold.ndim != 1 or sample_fold.size == 0:
        raise ValueError(
            f"sample_fold must be a non-empty 1-D array, got shape {sample_fold.shape}"
        )
    if not np.issubdtype(sample_fold.dtype, np.integer):
        raise ValueError(f"sample_fold must hold integer fold ids, got dtype {sample_fold.dtype}")
    rng = np.random.default_rng(seed)
    indices = np.empty((n_resamples, sample_fold.size), dtype=np.int64)
    for fold in np.unique(sample_fold):
        positions = np.flatnonzero(sample_fold == fold)
        draws = rng.integers(0, positions.size, (n_resamples, positions.size), dtype=np.int64)
        indices[:, positions] = positions[draws]
    return indices


def resample_counts(indices: np.ndarray, n: int) -> np.ndarray:
    """How often each position is drawn in each resample.

    Args:
      indices: int ``[B, m]``, as from ``resample_indices`` (``m = n`` there).
      n: the number of positions.

    Returns:
      float64 ``[B, n]``; row ``b`` sums to ``m``, and the resampled mean of
      ``values [..., n]`` is ``values @ counts.T / m``.

    Raises:
      ValueError: if ``indices`` is not 2-D or holds positions outside ``[0, n)``.
    """
    indices = np.asarray(indices)
    if indices.ndim != 2 or not np.issubdtype(indices.dtype, np.integer):
        raise ValueError(
            f"indices must be an int [n_resamples, n] array, got {indices.dtype} of shape "
            f"{indices.shape}"
        )
    if indices.size and (indices.min() < 0 or indices.max() >= n):
        raise ValueError(
            f"indices must lie in [0, {n}), got values in [{indices.min()}, {indices.max()}]"
        )
    n_resamples = indices.shape[0]
    # One bincount over the flat positions row * n + index counts every row at once.
    flat = (np.arange(n_resamples, dtype=np.int64)[:, None] * n + indices).ravel()
    counts = np.bincount(flat, minlength=n_resamples * n)
    return counts.reshape(n_resamples, n).astype(np.float64)


def _check_level(level: float) -> float:
    level = float(level)
    if not 0 < level < 1:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    return level


def _check_values(name: str, values: np.ndarray, indices: np.ndarray) -> np.ndarray:
    values = np.asarray(values)
    if values.ndim < 1 or values.shape[-1] != np.shape(indices)[-1]:
        raise ValueError(
            f"{name} must have shape [..., n] with n = {np.shape(indices)[-1]} (the samples of "
            f"indices), got shape {values.shape}"
        )
    return values.astype(np.float64)


def _percentile_interval(statistics: np.ndarray, level: float) -> Interval:
    # scipy.stats.bootstrap takes scipy.stats.quantile(method="linear") of the bootstrap
    # distribution, Hyndman & Fan's type 7, which is np.quantile's default "linear" method.
    alpha = (1 - level) / 2
    low, high = np.quantile(statistics, [alpha, 1 - alpha], axis=-1)
    if low.ndim == 0:
        return Interval(float(low), float(high))
    return Interval(low, high)


def mean_ci(values: np.ndarray, indices: np.ndarray, level: float = 0.95) -> Interval:
    """Percentile bootstrap interval of the mean over the last axis.

    Args:
      values: ``[..., n]`` (bool or float), e.g. whether each test image is classified
        correctly; several rows are bootstrapped at once, with the same resamples.
      indices: int ``[B, n]``, from ``resample_indices``.
      level: the confidence level, in ``(0, 1)``.

    Returns:
      An ``Interval`` of floats for 1-D ``values``, else of arrays of shape ``values.shape[:-1]``.

    Raises:
      ValueError: for a level outside ``(0, 1)`` or ``values`` not ``[..., n]``.

    Example:
      >>> import numpy as np
      >>> from ensembling.bootstrap import mean_ci, resample_indices
      >>> correct = np.arange(100) % 4 != 0
      >>> interval = mean_ci(correct, resample_indices(np.zeros(100, int), 2000))
      >>> bool(interval.low < 0.75 < interval.high)
      True
    """
    level = _check_level(level)
    values = _check_values("values", values, indices)
    n = values.shape[-1]
    statistics = values @ resample_counts(indices, n).T / n
    return _percentile_interval(statistics, level)


def member_mean_ci(
    correct: np.ndarray,
    indices: np.ndarray,
    level: float = 0.95,
    valid: np.ndarray | None = None,
) -> Interval:
    """Percentile bootstrap interval of the mean over members of the member accuracies.

    The statistic is ``(1/M) sum_m acc_m``, with ``acc_m`` member ``m``'s accuracy over the
    (resampled) test images where it is valid. Every member sees the same resamples. In a
    resample where a member has no valid image drawn, that member is left out of the mean;
    a resample where none has one gives NaN, and then so does the interval.

    Args:
      correct: bool ``[members, n]``, whether each member classifies each image correctly.
      indices: int ``[B, n]``, from ``resample_indices``.
      level: the confidence level, in ``(0, 1)``.
      valid: optional bool ``[members, n]``; ``False`` leaves an image out of a member's
        accuracy (e.g. the images of a fold where the member diverged). Default all valid.

    Returns:
      An ``Interval`` of floats.

    Raises:
      ValueError: for a level outside ``(0, 1)``, ``correct`` not ``[members, n]``, ``valid``
        of another shape, or a member valid on no image.
    """
    level = _check_level(level)
    correct = np.asarray(correct)
    if correct.ndim != 2 or correct.shape[0] == 0:
        raise ValueError(f"correct must be a [members, n] array, got shape {correct.shape}")
    correct = _check_values("correct", correct, indices)
    n = correct.shape[-1]
    counts = resample_counts(indices, n)
    if valid is None:
        # Without a mask every member's accuracy has the same denominator, so the mean of
        # accuracies is the accuracy of the mean row: one product instead of one per member.
        statistics = correct.mean(axis=0) @ counts.T / n
        return _percentile_interval(statistics, level)
    valid = np.asarray(valid)
    if valid.shape != correct.shape or valid.dtype != np.bool_:
        raise ValueError(
            f"valid must be a bool array of correct's shape {correct.shape}, got {valid.dtype} "
            f"of shape {valid.shape}"
        )
    if not np.all(valid.any(axis=1)):
        raise ValueError(
            f"members {np.flatnonzero(~valid.any(axis=1)).tolist()} are valid on no image; "
            "leave them out of correct"
        )
    mask = valid.astype(np.float64)
    hits = (correct * mask) @ counts.T
    drawn = mask @ counts.T
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracies = np.where(drawn > 0, hits / drawn, np.nan)
    present = np.isfinite(accuracies)
    with np.errstate(invalid="ignore", divide="ignore"):
        statistics = np.where(present, accuracies, 0.0).sum(axis=0) / present.sum(axis=0)
    return _percentile_interval(statistics, level)


def paired_difference_ci(
    correct_a: np.ndarray,
    correct_b: np.ndarray,
    indices: np.ndarray,
    level: float = 0.95,
) -> Interval:
    """Percentile bootstrap interval of ``accuracy(a) - accuracy(b)``, paired.

    Both are evaluated on the same resampled images, so the interval reflects only how
    ``a`` and ``b`` differ image by image, not the spread of the images themselves; a row
    against itself gives exactly ``[0, 0]``. With one fold it equals
    ``scipy.stats.bootstrap((a, b), statistic, paired=True, method="percentile")``.

    Args:
      correct_a: bool or float ``[..., n]``.
      correct_b: the same shape as ``correct_a``.
      indices: int ``[B, n]``, from ``resample_indices``.
      level: the confidence level, in ``(0, 1)``.

    Returns:
      An ``Interval`` of floats for 1-D inputs, else of arrays.

    Raises:
      ValueError: for a level outside ``(0, 1)`` or mismatched shapes.
    """
    correct_a = _check_values("correct_a", correct_a, indices)
    correct_b = _check_values("correct_b", correct_b, indices)
    if correct_a.shape != correct_b.shape:
        raise ValueError(
            f"correct_a and correct_b must have the same shape, got {correct_a.shape} and "
            f"{correct_b.shape}"
        )
    # The mean is linear: the resampled difference of means is the resampled mean of the
    # image-wise differences.
    return mean_ci(correct_a - correct_b, indices, level)
