"""Ensembles chosen and calibrated on held-out validation rows, never on the test fold.

A run trained with ``train.py --validation-fraction F`` holds, per fold, every member's
scores on rows of the training split that no member trained on. Here they choose an
ensemble from the whole member pool (every group, grid point and seed) by greedy forward
selection with replacement (``selection``), and fit temperatures (``calibration``); the
test fold only measures the result. Folds are handled independently, each on its own
validation rows, and pooled as Table 2 pools them.

Every ensemble here is a weight per pool member and fold; its probabilities are the weighted
mean of the members' probabilities (the sum rule; with equal weights, exactly Table 2's), and
a member that diverged in a fold has no weight there.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from ensembling.calibration import apply_temperature, fit_temperature
from ensembling.metrics import ClassificationMetrics, classification_metrics
from ensembling.runs import DatasetScores
from ensembling.selection import OBJECTIVES, Selection, greedy_select
from ensembling.specs import EnsembleSpec, EnsembleSpecError, display_name
from ensembling.tables import resolve_spec


class MemberPool(NamedTuple):
    """Every member of a data set's runs on one axis.

    Attributes:
      members: ``(group, member index)`` of each pool member, groups in ``data.groups`` order.
      test_scores: float32 ``[pool, n_test, classes]``, the folds' test rows pooled.
      validation_scores: per fold, float32 ``[pool, n_val, classes]``.
      validation_labels: per fold, int64 ``[n_val]``.
      diverged: bool ``[pool, folds]``.
    """

    members: tuple[tuple[str, int], ...]
    test_scores: np.ndarray
    validation_scores: tuple[np.ndarray, ...]
    validation_labels: tuple[np.ndarray, ...]
    diverged: np.ndarray

    def name(self, index: int) -> str:
        group, member = self.members[index]
        return f"{display_name(group)}#{member}"


def member_pool(data: DatasetScores) -> MemberPool:
    """The pool of ``data``'s members with their validation scores.

    Raises:
      EnsembleSpecError: the runs hold no validation scores (naming the flag that writes
        them), or only some groups have them.
    """
    if data.validation_mismatch:
        raise EnsembleSpecError(
            f"{data.dataset!r}: {data.validation_mismatch}, so no member pool shares them; "
            "select and calibrate each run on its own"
        )
    if data.validation_labels is None or any(
        group.validation_scores is None for group in data.groups.values()
    ):
        raise EnsembleSpecError(
            f"{data.dataset!r}: the runs hold no validation scores to select or calibrate "
            "on; train with train.py --validation-fraction F (e.g. 0.1), which holds that "
            "share of each fold's training rows out of training and scores every member on it"
        )
    groups = list(data.groups.values())
    return MemberPool(
        members=tuple((g.optimizer, m) for g in groups for m in range(g.n_members)),
        test_scores=np.concatenate([g.scores for g in groups]),
        validation_scores=tuple(
            np.concatenate([g.validation_scores[p] for g in groups]) for p in range(len(data.folds))
        ),
        validation_labels=data.validation_labels,
        diverged=np.concatenate([g.diverged for g in groups]),
    )


def spec_weights(data: DatasetScores, pool: MemberPool, spec: EnsembleSpec) -> np.ndarray:
    """A Table 2 ensemble as pool weights ``[folds, pool]``: 1 for the first ``k`` members
    of each group of ``spec``, 0 elsewhere and where a member diverged."""
    spec = resolve_spec(data, spec)
    wanted = {group: count for group, count in spec.terms}
    chosen = np.array([member < wanted.get(group, 0) for group, member in pool.members])
    return (chosen[None, :] & ~pool.diverged.T).astype(np.float64)


def fuse_weighted(scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The weighted mean ``sum_m w_m p_m / sum_m w_m`` of ``scores [pool, n, classes]``,
    float64; members of weight 0 are never read (their scores may be NaN)."""
    used = np.flatnonzero(weights)
    if used.size == 0:
        raise EnsembleSpecError("an ensemble with no member left (every member diverged)")
    w = weights[used] / weights[used].sum()
    return np.einsum("m,mnc->nc", w, scores[used].astype(np.float64))


def fuse_folds(data: DatasetScores, pool: MemberPool, weights: np.ndarray) -> np.ndarray:
    """Test probabilities ``[n_test, classes]`` of an ensemble of per-fold ``weights``."""
    probabilities = np.empty(pool.test_scores.shape[1:], np.float64)
    for position in range(len(data.folds)):
        rows = data.sample_fold_position == position
        probabilities[rows] = fuse_weighted(pool.test_scores[:, rows], weights[position])
    return probabilities


class SelectedEnsemble(NamedTuple):
    """An ensemble chosen from the pool on validation rows, measured on the test folds.

    Attributes:
      dataset: the data set.
      label: what it is, e.g. ``"greedy (nll)"`` or ``"whole pool"``.
      weights: float64 ``[folds, pool]``: how often each member was picked in each fold.
      selections: per fold, the greedy ``Selection`` (None for the whole pool).
      probabilities: float64 ``[n_test, classes]``, folds pooled.
      metrics: test metrics of ``probabilities``.
    """

    dataset: str
    label: str
    weights: np.ndarray
    selections: tuple[Selection, ...] | None
    probabilities: np.ndarray
    metrics: ClassificationMetrics

    def multiset(self, pool: MemberPool, folds: Sequence[int]) -> str:
        """``"fold 0: DGrad#3 x2 + SGD#1; fold 1: ..."``, members by pick count."""
        parts = []
        for fold, weights in zip(folds, self.weights, strict=True):
            picked = np.flatnonzero(weights)
            picked = picked[np.argsort(-weights[picked], kind="stable")]
            terms = [
                pool.name(m) + (f" x{int(weights[m])}" if weights[m] > 1 else "") for m in picked
            ]
            parts.append(f"fold {fold}: " + " + ".join(terms))
        return "; ".join(parts)


def _measured(
    data: DatasetScores,
    pool: MemberPool,
    label: str,
    weights: np.ndarray,
    selections: tuple[Selection, ...] | None,
) -> SelectedEnsemble:
    """The ensemble of per-fold ``weights`` over ``pool``, measured on the test folds."""
    probabilities = fuse_folds(data, pool, weights)
    return SelectedEnsemble(
        dataset=data.dataset,
        label=label,
        weights=weights,
        selections=selections,
        probabilities=probabilities,
        metrics=classification_metrics(probabilities, data.labels),
    )


def greedy_ensemble(
    data: DatasetScores, objective: str = "nll", max_rounds: int | None = None
) -> SelectedEnsemble:
    """Greedy forward selection with replacement over the whole pool, fold by fold on its
    validation rows (Caruana et al. 2004); see ``selection.greedy_select``."""
    if objective not in OBJECTIVES:
        raise EnsembleSpecError(f"unknown selection objective {objective!r}; known: {OBJECTIVES}")
    pool = member_pool(data)
    selections = []
    for p, fold in enumerate(data.folds):
        if pool.diverged[:, p].all():
            raise EnsembleSpecError(
                f"{data.dataset!r}: every member diverged in fold {fold}; there is nothing to "
                "select from"
            )
        selections.append(
            greedy_select(
                pool.validation_scores[p],
                pool.validation_labels[p],
                objective=objective,
                max_rounds=max_rounds,
                valid=~pool.diverged[:, p],
            )
        )
    selections = tuple(selections)
    weights = np.stack([s.counts for s in selections]).astype(np.float64)
    return _measured(data, pool, f"greedy ({objective})", weights, selections)


def pool_ensemble(data: DatasetScores) -> SelectedEnsemble:
    """Every member of the pool that did not diverge, with equal weights (the sum rule)."""
    pool = member_pool(data)
    return _measured(data, pool, "whole pool", (~pool.diverged.T).astype(np.float64), None)


class CalibrationRow(NamedTuple):
    """One member or ensemble before and after temperature scaling.

    Attributes:
      dataset: the data set.
      kind: ``"member"`` or ``"ensemble"``.
      name: the member (``DGrad#3``) or ensemble label.
      temperatures: the temperature fitted in each fold (on its validation rows).
      before: test metrics before scaling.
      after: test metrics after scaling (the accuracy is the same).
      probabilities_before: float64 ``[n_test, classes]`` (NaN rows: member diverged there).
      probabilities_after: float64 ``[n_test, classes]``.
      labels: int64 ``[n_test]``.
    """

    dataset: str
    kind: str
    name: str
    temperatures: tuple[float, ...]
    before: ClassificationMetrics
    after: ClassificationMetrics
    probabilities_before: np.ndarray
    probabilities_after: np.ndarray
    labels: np.ndarray


def calibrate_ensemble(
    data: DatasetScores, pool: MemberPool, name: str, weights: np.ndarray, kind: str = "ensemble"
) -> CalibrationRow:
    """Fits one temperature per fold on the ensemble's validation probabilities (NLL) and
    applies it to the fold's test probabilities."""
    before = fuse_folds(data, pool, weights)
    after = np.empty_like(before)
    temperatures = []
    for position in range(len(data.folds)):
        validation = fuse_weighted(pool.validation_scores[position], weights[position])
        temperature = fit_temperature(validation, pool.validation_labels[position])
        rows = data.sample_fold_position == position
        after[rows] = apply_temperature(before[rows], temperature)
        temperatures.append(temperature)
    return CalibrationRow(
        dataset=data.dataset,
        kind=kind,
        name=name,
        temperatures=tuple(temperatures),
        before=classification_metrics(before, data.labels),
        after=classification_metrics(after, data.labels),
        probabilities_before=before,
        probabilities_after=after,
        labels=data.labels,
    )


def calibrate_members(data: DatasetScores, pool: MemberPool) -> list[CalibrationRow]:
    """One temperature per member and fold; members that diverged in any fold are left out
    (as Table 1 leaves them out)."""
    rows = []
    for index in np.flatnonzero(~pool.diverged.any(axis=1)):
        weights = np.zeros((len(data.folds), len(pool.members)))
        weights[:, index] = 1.0
        rows.append(calibrate_ensemble(data, pool, pool.name(index), weights, kind="member"))
    return rows
