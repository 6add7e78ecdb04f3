"""Fusing ensemble members' probabilities: the sum rule, the geometric mean, the vote.

The paper fuses with the sum rule (Kittler et al., 1998): the decision is
``argmax_c sum_m p_m(c | x)``. Probabilities are summed; member accuracies are never averaged.

References:
  Kittler, Hatef, Duin & Matas, "On combining classifiers", IEEE TPAMI 20(3), 1998.
"""

import math
from typing import NamedTuple

import numpy as np
from scipy.special import softmax

FUSION_RULES = ("sum", "mean_log", "vote")


class FusedScores(NamedTuple):
    """An ensemble's output.

    Attributes:
      probabilities: float64 ``[n_samples, n_classes]``, rows summing to one.
      predictions: int64 ``[n_samples]``, the fused decision.
    """

    probabilities: np.ndarray
    predictions: np.ndarray


def fuse(
    member_scores: np.ndarray, rule: str = "sum", valid: np.ndarray | None = None
) -> FusedScores:
    r"""Fuses member probabilities ``p_m(c | x)`` into one decision per sample.

    With ``V(x)`` the members valid for sample ``x``:

    - ``"sum"`` (the paper's sum rule): decision ``argmax_c sum_{m in V} p_m(c|x)``;
      probabilities ``(1/|V|) sum_m p_m``, the same sum normalised.
    - ``"mean_log"``: ``softmax_c((1/|V|) sum_m log p_m(c|x))``, the normalised geometric
      mean (probabilities are floored at float32's smallest normal number before the log).
    - ``"vote"``: each member votes for its argmax; probabilities are the vote shares;
      ties between classes with the most votes go to the larger summed probability.

    Args:
      member_scores: ``[members, n_samples, n_classes]`` probabilities.
      rule: one of ``FUSION_RULES``.
      valid: optional bool ``[members, n_samples]``; False leaves a member out for that
        sample (its scores may then be NaN). Every sample needs a valid member.

    Returns:
      A ``FusedScores``.

    Example:
      >>> fuse(np.array([[[.9, .1]], [[.4, .6]], [[.4, .6]]])).predictions  # vote says 1
      array([0])
    """
    if rule not in FUSION_RULES:
        raise ValueError(f"unknown fusion rule {rule!r}; expected one of {FUSION_RULES}")
    member_scores = np.asarray(member_scores, dtype=np.float64)
    if member_scores.ndim != 3:
        raise ValueError(
            f"member_scores must be [members, n_samples, n_classes], got {member_scores.shape}"
        )
    if valid is None:
        valid = np.ones(member_scores.shape[:2], dtype=bool)
    valid = np.asarray(valid, dtype=bool)
    if valid.shape != member_scores.shape[:2]:
        raise ValueError(f"valid has shape {valid.shape}; expected {member_scores.shape[:2]}")
    n_valid = valid.sum(axis=0)
    if np.any(n_valid == 0):
        raise ValueError(f"samples {np.flatnonzero(n_valid == 0)[:10].tolist()} have no member")
    mask = valid[..., None]
    safe_scores = np.where(mask, member_scores, 0.0)
    summed = safe_scores.sum(axis=0)
    if rule == "sum":
        return FusedScores(summed / n_valid[:, None], summed.argmax(axis=-1))
    if rule == "mean_log":
        floor = np.finfo(np.float32).tiny
        log_scores = np.where(mask, np.log(np.maximum(safe_scores, floor)), 0.0)
        probabilities = softmax(log_scores.sum(axis=0) / n_valid[:, None], axis=-1)
        return FusedScores(probabilities, probabilities.argmax(axis=-1))
    n_classes = member_scores.shape[-1]
    member_votes = safe_scores.argmax(axis=-1)[..., None] == np.arange(n_classes)
    votes = (member_votes & mask).sum(axis=0)
    tied_best = votes == votes.max(axis=-1, keepdims=True)
    predictions = np.where(tied_best, summed, -np.inf).argmax(axis=-1)
    return FusedScores(votes / n_valid[:, None], predictions)


def sum_rule_accuracy(
    member_scores: np.ndarray, labels: np.ndarray, valid: np.ndarray | None = None
) -> float:
    """Accuracy of the sum rule, ``mean_n [argmax_c sum_m p_m(c|x_n) = y_n]``.

    The decision is ``fuse(member_scores, "sum", valid).predictions``, the one Table 2 scores.

    Args:
      member_scores: ``[members, n_samples, n_classes]`` probabilities.
      labels: integer ``[n_samples]``.
      valid: optional bool ``[members, n_samples]``, as in ``fuse``: False leaves a member
        out for that sample (a member diverged in the fold where the sample is test data).

    Returns:
      The accuracy; NaN when some sample has no valid member (no member at all, or every
      member diverged where that sample is test data): the ensemble makes no decision there.

    Example:
      >>> sum_rule_accuracy(np.array([[[.9, .1]], [[.4, .6]], [[.4, .6]]]), np.array([0]))
      1.0
    """
    member_scores = np.asarray(member_scores)
    labels = np.asarray(labels)
    if member_scores.ndim != 3 or labels.shape != member_scores.shape[1:2]:
        raise ValueError(
            f"member_scores must be [members, n_samples, n_classes] and labels [n_samples]; "
            f"got {member_scores.shape} and {labels.shape}"
        )
    if valid is not None and np.shape(valid) != member_scores.shape[:2]:
        raise ValueError(f"valid has shape {np.shape(valid)}; expected {member_scores.shape[:2]}")
    n_valid = (
        np.full(member_scores.shape[1], member_scores.shape[0])
        if valid is None
        else np.asarray(valid, dtype=bool).sum(axis=0)
    )
    if member_scores.shape[0] == 0 or np.any(n_valid == 0):
        return math.nan
    return float(np.mean(fuse(member_scores, "sum", valid).predictions == labels))
