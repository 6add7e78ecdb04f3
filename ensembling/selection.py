"""Greedy forward ensemble selection, with replacement, from a library of members.

Round 1 takes the best single member on the validation rows; every later round adds the
member (one already picked may be picked again) whose inclusion gives the lowest objective of
the sum-rule ensemble, the mean of the picked members' probabilities counted with
multiplicity, and selection stops as soon as no member strictly improves it. Picking with
replacement turns the picks into integer weights and, unlike selection without replacement,
does not have to add poor members once the good ones are used up, which is what keeps it from
over-fitting a small validation set (Caruana et al., 2004). Hyper-deep ensembles select their
members this way from a pool trained with different hyperparameters (Wenzel et al., 2020).

References:
  Caruana, Niculescu-Mizil, Crew & Ksikes, "Ensemble Selection from Libraries of Models",
  ICML 2004.
  Wenzel, Snoek, Tran & Jenatton, "Hyperparameter Ensembles for Robustness and Uncertainty
  Quantification", NeurIPS 2020.
"""

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

from ensembling.metrics import check_labels

OBJECTIVES = ("nll", "accuracy", "brier")

# sklearn.metrics.log_loss clips probabilities to [eps, 1 - eps] of their (float64) dtype;
# clipping the same way makes the "nll" objective equal ensembling.metrics' NLL.
_EPS = np.finfo(np.float64).eps


class Selection(NamedTuple):
    """The result of ``greedy_select``.

    Attributes:
      counts: int64 ``[members]``, how often each member was picked (0 for members never
        picked, and always 0 for invalid members).
      order: the member picked in each round; ``order[0]`` is the best single member.
      objective_values: float64 ``[len(order)]``, the objective of the ensemble after each
        pick, strictly decreasing; lower is better (for ``"accuracy"`` it is the error rate
        ``1 - accuracy``).
      objective: the objective's name, one of ``OBJECTIVES``.
    """

    counts: np.ndarray
    order: tuple[int, ...]
    objective_values: np.ndarray
    objective: str


# An evaluator maps the running sum of the picked members' probabilities ([n, classes]) and
# the number of picks so far to the objective of every candidate's new ensemble ([candidates]).
_Evaluator = Callable[[np.ndarray, int], np.ndarray]


def _nll_evaluator(pool: np.ndarray, labels: np.ndarray) -> _Evaluator:
    rows = np.arange(len(labels))
    # Only the true class's probability enters the NLL, so gather it once: each round then
    # works on [candidates, n] instead of [candidates, n, classes].
    pool_true = pool[:, rows, labels]

    def evaluate(total: np.ndarray, picks: int) -> np.ndarray:
        true = (total[rows, labels] + pool_true) / (picks + 1)
        return -np.log(np.clip(true, _EPS, 1.0 - _EPS)).mean(axis=-1)

    return evaluate


def _brier_evaluator(pool: np.ndarray, labels: np.ndarray) -> _Evaluator:
    one_hot = labels[:, None] == np.arange(pool.shape[-1])

    def evaluate(total: np.ndarray, picks: int) -> np.ndarray:
        ensemble = (total + pool) / (picks + 1)
        return ((ensemble - one_hot) ** 2).sum(axis=-1).mean(axis=-1)

    return evaluate


def _error_rate_evaluator(pool: np.ndarray, labels: np.ndarray) -> _Evaluator:
    def evaluate(total: np.ndarray, picks: int) -> np.ndarray:
        ensemble = (total + pool) / (picks + 1)
        # argmax returns the first maximum: ties go to the lowest class index.
        return (ensemble.argmax(axis=-1) != labels).mean(axis=-1)

    return evaluate


_EVALUATORS = {
    "nll": _nll_evaluator,
    "accuracy": _error_rate_evaluator,
    "brier": _brier_evaluator,
}


def greedy_select(
    scores: np.ndarray,
    labels: np.ndarray,
    *,
    objective: str = "nll",
    max_rounds: int | None = None,
    valid: np.ndarray | None = None,
) -> Selection:
    r"""Greedy forward selection with replacement (Caruana et al., 2004).

    The ensemble of a multiset ``S`` of members is the sum rule, ``(1/|S|) sum_{m in S} p_m``.
    Round 1 picks the member with the lowest objective alone; each later round adds the
    member that gives the new ensemble the lowest objective (a member may be added again).
    Selection stops when no member strictly lowers the objective, or after ``max_rounds``
    picks. Ties go to the lowest member index, so the result is deterministic. All
    candidates of a round are evaluated at once as a ``[candidates, n, classes]`` array.

    Objectives, computed on rows renormalised in float64 (lower is better):

    - ``"nll"``: ``-(1/n) sum_i log p_i(y_i)``, probabilities clipped to
      ``[eps, 1 - eps]`` with ``eps`` the float64 epsilon, as ``sklearn.metrics.log_loss``
      (hence ``ensembling.metrics``) does.
    - ``"accuracy"``: the error rate ``1 - accuracy`` of ``argmax`` decisions, ties to the
      lowest class index.
    - ``"brier"``: ``(1/n) sum_i sum_c (p_ic - [y_i = c])^2``, as
      ``ensembling.metrics.brier_score``.

    Args:
      scores: float ``[members, n, classes]``, each member's softmax probabilities on the
        validation rows.
      labels: int ``[n]``, the true classes, in ``[0, classes)``.
      objective: one of ``OBJECTIVES``.
      max_rounds: the most picks; default twice the number of valid members.
      valid: optional bool ``[members]``; ``False`` marks a member that diverged, which is
        never a candidate. A member whose scores are not all finite (or has a row summing to
        zero) is invalid too.

    Returns:
      A ``Selection``.

    Raises:
      ValueError: for an unknown objective, badly shaped ``scores``, ``labels`` or
        ``valid``, labels outside ``[0, classes)``, no valid member, or ``max_rounds < 1``.

    Example:
      >>> import numpy as np
      >>> from ensembling.selection import greedy_select
      >>> scores = np.array([[[0.8, 0.2, 0.0], [0.0, 0.2, 0.8]],
      ...                    [[0.75, 0.0, 0.25], [0.25, 0.0, 0.75]]])
      >>> selection = greedy_select(scores, np.array([0, 2]), objective="brier")
      >>> selection.order, selection.counts.tolist()
      ((0, 1, 0, 0), [3, 1])
    """
    if objective not in _EVALUATORS:
        raise ValueError(f"unknown objective {objective!r}; expected one of {OBJECTIVES}")
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels)
    if scores.ndim != 3 or 0 in scores.shape:
        raise ValueError(
            f"scores must be a non-empty [members, n, classes] array, got shape {scores.shape}"
        )
    n_members, n_rows, n_classes = scores.shape
    labels = check_labels(labels, n_rows, n_classes)
    if valid is None:
        valid = np.ones(n_members, dtype=bool)
    valid = np.asarray(valid)
    if valid.shape != (n_members,) or valid.dtype != np.bool_:
        raise ValueError(
            f"valid must be a bool array of shape ({n_members},), "
            f"got {valid.dtype} of shape {valid.shape}"
        )

    # Float32 softmax rows sum to one only within rounding; renormalising in float64 makes the
    # objectives those of ensembling.metrics. A zero row turns into NaN here and is caught below.
    with np.errstate(invalid="ignore", divide="ignore"):
        probabilities = scores / scores.sum(axis=-1, keepdims=True)
    usable = valid & np.isfinite(probabilities).all(axis=(1, 2))
    candidates = np.flatnonzero(usable)
    if candidates.size == 0:
        raise ValueError(
            f"no valid member among {n_members}: every member is marked invalid or has "
            "non-finite scores"
        )
    if max_rounds is None:
        max_rounds = 2 * candidates.size
    if isinstance(max_rounds, bool) or not isinstance(max_rounds, int | np.integer):
        raise ValueError(f"max_rounds must be an int, got {max_rounds!r}")
    if max_rounds < 1:
        raise ValueError(f"max_rounds must be >= 1, got {max_rounds}")

    pool = probabilities[candidates]
    evaluate = _EVALUATORS[objective](pool, labels)
    total = np.zeros((n_rows, n_classes))
    counts = np.zeros(n_members, dtype=np.int64)
    order: list[int] = []
    values: list[float] = []
    best = np.inf
    for picks in range(max_rounds):
        candidate_values = evaluate(total, picks)
        # argmin returns the first minimum; candidates are in ascending member order, so ties
        # go to the lowest member index.
        choice = int(np.argmin(candidate_values))
        if not candidate_values[choice] < best:
            break
        best = float(candidate_values[choice])
        member = int(candidates[choice])
        total += pool[choice]
        counts[member] += 1
        order.append(member)
        values.append(best)
    return Selection(counts, tuple(order), np.asarray(values, dtype=np.float64), objective)


def selection_weights(selection: Selection) -> np.ndarray:
    """The sum-rule weight of each member, ``counts / counts.sum()``.

    Args:
      selection: a result of ``greedy_select``.

    Returns:
      float64 ``[members]``, summing to one: the selected ensemble's probabilities are
      ``np.tensordot(weights, scores, axes=1)``.

    Raises:
      ValueError: if ``selection.counts`` picks nothing.
    """
    counts = np.asarray(selection.counts, dtype=np.float64)
    total = counts.sum()
    if not total > 0:
        raise ValueError("selection.counts picks no member; there are no weights to take")
    return counts / total
