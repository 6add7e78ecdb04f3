"""Confidence intervals of the tables' accuracies: does row A really beat row B?

Every accuracy of Table 1 (the mean over a group's members of their accuracies) and of
Table 2 (a fused ensemble's accuracy), and of the ensembles chosen on validation rows, gets
a 95 % percentile bootstrap interval over the test images, resampled within folds
(``bootstrap``), with a fixed seed, so the same scores always give the same intervals. Each
ensemble also gets the paired interval of its difference from a baseline row (by default
the best row of Table 2 on that data set): the same resamples for both, so the interval
measures how the two differ on these images. An interval of a difference that excludes 0
is the bootstrap's answer that A beats (or trails) B on these images; it says nothing of
other images, or of other seeds.

References:
  Efron & Tibshirani, "An Introduction to the Bootstrap", Chapman & Hall, 1993.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

from ensembling.bootstrap import (
    Interval,
    mean_ci,
    member_mean_ci,
    paired_difference_ci,
    resample_indices,
)
from ensembling.heldout import SelectedEnsemble
from ensembling.runs import DatasetScores
from ensembling.specs import EnsembleSpec, EnsembleSpecError
from ensembling.tables import Table2Entry, evaluate_ensemble

DEFAULT_RESAMPLES = 2000
LEVEL = 0.95
SEED = 0


class Difference(NamedTuple):
    """An ensemble's accuracy minus its baseline's, with the paired interval."""

    baseline: str
    difference: float
    interval: Interval


class TableIntervals(NamedTuple):
    """The intervals of every row, keyed by ``(dataset, row)``.

    Attributes:
      table1: by ``(dataset, group)``: the interval of the mean member accuracy.
      ensembles: by ``(dataset, label)``: Table 2's rows and the selected ensembles.
      differences: by ``(dataset, label)``: the paired difference from the baseline.
      baselines: by dataset, the baseline row's label.
      n_resamples: resamples per interval.
      level: the confidence level.
    """

    table1: dict[tuple[str, str], Interval]
    ensembles: dict[tuple[str, str], Interval]
    differences: dict[tuple[str, str], Difference]
    baselines: dict[str, str]
    n_resamples: int
    level: float


def table_intervals(
    datasets: Mapping[str, DatasetScores],
    table2_entries: Sequence[Table2Entry],
    selected: Sequence[SelectedEnsemble] = (),
    *,
    n_resamples: int = DEFAULT_RESAMPLES,
    baseline: EnsembleSpec | None = None,
    rule: str = "sum",
    level: float = LEVEL,
    seed: int = SEED,
) -> TableIntervals:
    """Bootstrap intervals of every row of Table 1, Table 2 and the selected ensembles.

    Args:
      datasets: the runs, by data set.
      table2_entries: Table 2 (``tables.table2``); rows no run can serve get no interval.
      selected: ensembles chosen on validation rows (``heldout``).
      n_resamples: bootstrap resamples (``ensemble.py --bootstrap``), at least 1.
      baseline: the row differences are taken from; default the most accurate Table 2 row
        of each data set (the first of equals).
      rule: the fusion rule of ``baseline``.
      level: the confidence level.
      seed: the resampling seed.

    Raises:
      ValueError: ``n_resamples`` < 1 (names ``--bootstrap``).
      EnsembleSpecError: ``baseline`` cannot be served on a data set.
    """
    if n_resamples < 1:
        raise ValueError(f"--bootstrap {n_resamples}: the number of resamples must be >= 1")
    table1, ensembles, differences, baselines = {}, {}, {}, {}
    for data in datasets.values():
        indices = resample_indices(data.sample_fold, n_resamples, seed)
        for name, group in data.groups.items():
            healthy = ~group.diverged.any(axis=1)
            if healthy.any():
                correct = group.scores[healthy].argmax(-1) == data.labels
                table1[data.dataset, name] = member_mean_ci(correct, indices, level)
        rows: dict[str, np.ndarray] = {}
        for entry in table2_entries:
            if entry.dataset == data.dataset and entry.result is not None:
                rows[entry.spec.label] = entry.result.fused.predictions == data.labels
        for ensemble in selected:
            if ensemble.dataset == data.dataset:
                rows[ensemble.label] = ensemble.probabilities.argmax(-1) == data.labels
        if not rows:
            continue
        if baseline is not None:
            try:
                result = evaluate_ensemble(data, baseline, rule)
            except EnsembleSpecError as error:
                raise EnsembleSpecError(f"--baseline: {error}") from None
            baseline_label = result.spec.label
            rows.setdefault(baseline_label, result.fused.predictions == data.labels)
        else:
            table2_rows = [
                e for e in table2_entries if e.dataset == data.dataset and e.result is not None
            ]
            best = max(table2_rows, key=lambda e: e.result.metrics.accuracy, default=None)
            baseline_label = best.spec.label if best is not None else next(iter(rows))
        baselines[data.dataset] = baseline_label
        labels = list(rows)
        correct = np.stack([rows[label] for label in labels])
        low, high = mean_ci(correct, indices, level)
        reference = np.broadcast_to(rows[baseline_label], correct.shape)
        diff_low, diff_high = paired_difference_ci(correct, reference, indices, level)
        accuracy = correct.mean(axis=1)
        for i, label in enumerate(labels):
            ensembles[data.dataset, label] = Interval(float(low[i]), float(high[i]))
            differences[data.dataset, label] = Difference(
                baseline_label,
                float(accuracy[i] - accuracy[labels.index(baseline_label)]),
                Interval(float(diff_low[i]), float(diff_high[i])),
            )
    return TableIntervals(table1, ensembles, differences, baselines, n_resamples, level)
