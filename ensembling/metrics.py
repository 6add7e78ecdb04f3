"""Metrics of probabilistic predictions: accuracy, macro F1, NLL, ECE, Brier, diversity.

scikit-learn computes accuracy, macro F1, the log-loss and the multi-class Brier score; it has
no expected calibration error (``calibration_curve`` is binary) nor ensemble diversity, which
are computed here.

References:
  Guo, Pleiss, Sun & Weinberger, "On Calibration of Modern Neural Networks", ICML 2017.
  Brier, "Verification of forecasts expressed in terms of probability", Monthly Weather
  Review 78(1), 1950.
  Kuncheva & Whitaker, "Measures of diversity in classifier ensembles", Machine Learning
  51, 2003 (the disagreement measure).
"""

import math
from typing import NamedTuple

import numpy as np
from sklearn import metrics as sk_metrics

ECE_BINS = 15


def check_labels(labels: np.ndarray, n_rows: int, n_classes: int) -> np.ndarray:
    """``labels`` as an integer array ``[n_rows]`` in ``[0, n_classes)``; ValueError naming
    what is wrong otherwise."""
    labels = np.asarray(labels)
    if labels.shape != (n_rows,):
        raise ValueError(f"labels must have shape ({n_rows},), one per row, got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if labels.min() < 0 or labels.max() >= n_classes:
        raise ValueError(
            f"labels must lie in [0, {n_classes}) for {n_classes} classes, "
            f"got values in [{labels.min()}, {labels.max()}]"
        )
    return labels


class ClassificationMetrics(NamedTuple):
    """Metrics of probabilistic predictions; see ``classification_metrics``."""

    accuracy: float
    macro_f1: float
    nll: float
    ece: float
    brier: float


class ReliabilityCurve(NamedTuple):
    """Equal-width confidence bins.

    Attributes:
      confidence: mean confidence per bin (NaN for empty bins).
      accuracy: accuracy per bin (NaN for empty bins).
      count: samples per bin.
      edges: the ``n_bins + 1`` bin edges.
    """

    confidence: np.ndarray
    accuracy: np.ndarray
    count: np.ndarray
    edges: np.ndarray


def reliability_curve(
    probabilities: np.ndarray,
    labels: np.ndarray,
    n_bins: int = ECE_BINS,
    predictions: np.ndarray | None = None,
) -> ReliabilityCurve:
    """Bins samples by confidence ``p(ŷ|x)``, the probability of the predicted class.

    Bin ``b`` holds confidences in ``(b/B, (b+1)/B]``; a confidence of 0 goes to bin 0.

    Args:
      probabilities: ``[n_samples, n_classes]``.
      labels: ``[n_samples]`` true classes.
      n_bins: ``B``.
      predictions: the decisions ``ŷ``; default ``argmax`` of ``probabilities``.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels)
    if predictions is None:
        predictions = probabilities.argmax(axis=-1)
    confidence = probabilities[np.arange(len(labels)), predictions]
    correct = (predictions == labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    count = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(bins, weights=confidence, minlength=n_bins) / count
        accuracy = np.bincount(bins, weights=correct, minlength=n_bins) / count
    return ReliabilityCurve(mean_confidence, accuracy, count, edges)


def expected_calibration_error(
    probabilities: np.ndarray,
    labels: np.ndarray,
    n_bins: int = ECE_BINS,
    predictions: np.ndarray | None = None,
) -> float:
    r"""Expected calibration error, ``sum_b |B_b|/N * |acc(B_b) - conf(B_b)|``.

    Equal-width bins over the confidence as in ``reliability_curve`` (Guo et al., 2017).
    scikit-learn has no ECE; ``sklearn.calibration.calibration_curve`` is binary only.
    """
    curve = reliability_curve(probabilities, labels, n_bins, predictions)
    filled = curve.count > 0
    weights = curve.count[filled] / curve.count.sum()
    return float(np.sum(weights * np.abs(curve.accuracy[filled] - curve.confidence[filled])))


def brier_score(probabilities: np.ndarray, labels: np.ndarray) -> float:
    r"""Multi-class Brier score, ``(1/N) sum_n sum_c (p_nc - [y_n = c])^2``, in ``[0, 2]``.

    scikit-learn's ``brier_score_loss`` (multi-class since 1.7), unscaled also for two classes.
    """
    n_classes = np.shape(probabilities)[-1]
    return float(
        sk_metrics.brier_score_loss(
            labels, probabilities, labels=np.arange(n_classes), scale_by_half=False
        )
    )


def classification_metrics(
    probabilities: np.ndarray,
    labels: np.ndarray,
    predictions: np.ndarray | None = None,
    n_bins: int = ECE_BINS,
) -> ClassificationMetrics:
    r"""Accuracy, macro F1, NLL, ECE and Brier score of probabilistic predictions.

    - accuracy: ``mean [ŷ_n = y_n]`` (``sklearn.metrics.accuracy_score``).
    - macro_f1: the unweighted mean over all classes of ``2PR/(P+R)``
      (``f1_score(average="macro")``; a class never true nor predicted scores 0).
    - nll: ``-(1/N) sum_n log p_n(y_n)`` (``log_loss``, probabilities clipped to float64 eps).
    - ece: ``expected_calibration_error`` with ``n_bins`` equal-width bins.
    - brier: ``brier_score``.

    Args:
      probabilities: ``[n_samples, n_classes]``, rows summing to one; they are renormalised
        in float64 (float32 softmax rows sum to one only within rounding).
      labels: ``[n_samples]``.
      predictions: the decisions ``ŷ``; default ``argmax`` of ``probabilities``.
      n_bins: bins of the ECE.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    probabilities = probabilities / probabilities.sum(axis=-1, keepdims=True)
    labels = np.asarray(labels)
    if predictions is None:
        predictions = probabilities.argmax(axis=-1)
    classes = np.arange(probabilities.shape[-1])
    return ClassificationMetrics(
        accuracy=float(sk_metrics.accuracy_score(labels, predictions)),
        macro_f1=float(
            sk_metrics.f1_score(
                labels, predictions, labels=classes, average="macro", zero_division=0.0
            )
        ),
        nll=float(sk_metrics.log_loss(labels, probabilities, labels=classes)),
        ece=expected_calibration_error(probabilities, labels, n_bins, predictions),
        brier=brier_score(probabilities, labels),
    )


def pairwise_disagreement(member_predictions: np.ndarray, valid: np.ndarray | None = None) -> float:
    r"""Diversity: the mean over member pairs ``(i, j)`` of ``P(ŷ_i != ŷ_j)``.

    Each pair's disagreement is taken over the samples where both members are valid; pairs
    with no such sample are skipped. NaN for fewer than two members.

    Args:
      member_predictions: int ``[members, n_samples]``.
      valid: optional bool ``[members, n_samples]``.
    """
    member_predictions = np.asarray(member_predictions)
    if valid is None:
        valid = np.ones(member_predictions.shape, dtype=bool)
    n_classes = int(member_predictions.max()) + 1
    one_hot = (member_predictions[..., None] == np.arange(n_classes)) & valid[..., None]
    one_hot = one_hot.reshape(len(one_hot), -1).astype(np.float64)
    agreements = one_hot @ one_hot.T
    both_valid = valid.astype(np.float64) @ valid.T.astype(np.float64)
    upper = np.triu_indices(len(member_predictions), k=1)
    pairs = both_valid[upper] > 0
    if not np.any(pairs):
        return math.nan
    return float(np.mean(1.0 - agreements[upper][pairs] / both_valid[upper][pairs]))
