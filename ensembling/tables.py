"""Ensembles evaluated on data sets, and the paper's Table 1 and Table 2.

- A member the trainer marked as diverged in a fold is left out of every fusion in that fold
  only (each fold trains its own networks); results list each one left out.
- Table 1: per optimizer, mean and standard deviation (``ddof=1``, as MATLAB's ``std``) over
  its members of each member's stand-alone accuracy pooled over the folds. A member that
  diverged in any fold has no pooled accuracy: it is counted and named apart.
- Table 2: fused ensembles; a default row that a run cannot serve is "n/a" with the reason,
  an ensemble given explicitly must be servable. Specs are checked against the groups the
  runs hold: the trainer, not this package, owns the list of optimizers.
- A hyperparameter sweep's grid points are groups of their own (``runs.load_run``): Table 1
  has a row per grid point, a spec picks one (``DGrad[learning_rate=3e-4](3)``), and the
  sweep table (``sweep_table``) gives each grid point's stand-alone and fused accuracy.

References:
  Nanni, Maguolo & Lumini, "Exploiting Adam-like Optimization Algorithms to Improve the
  Performance of Convolutional Neural Networks", arXiv 2103.14689, 2021.
"""

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from ensembling.fusion import FusedScores, fuse
from ensembling.metrics import (
    ClassificationMetrics,
    classification_metrics,
    pairwise_disagreement,
)
from ensembling.runs import DatasetScores
from ensembling.specs import (
    PAPER_TABLE2_ENSEMBLES,
    EnsembleSpec,
    EnsembleSpecError,
    describe_group,
    display_name,
    parse_ensemble_spec,
    split_group,
)


class LeftOutMember(NamedTuple):
    """A member left out of fusion in one fold because it diverged there."""

    optimizer: str
    member: int
    fold: int

    def __str__(self) -> str:
        return f"{self.optimizer}[{self.member}]@fold{self.fold}"


class EnsembleResult(NamedTuple):
    """One ensemble on one data set.

    Attributes:
      dataset: the data set.
      spec: the ensemble.
      rule: the fusion rule.
      metrics: the fused predictions' metrics, pooled over the folds.
      diversity: ``pairwise_disagreement`` of the members.
      left_out: members left out of fusion in a fold where they diverged.
      fused: the fused probabilities and predictions (pooled sample order).
    """

    dataset: str
    spec: EnsembleSpec
    rule: str
    metrics: ClassificationMetrics
    diversity: float
    left_out: tuple[LeftOutMember, ...]
    fused: FusedScores


def resolve_group(data: DatasetScores, group: str, label: str | None = None) -> str:
    """The group of ``data`` that a spec's term names.

    A plain group is itself; a grid point (``"dgrad[b1=0.9,learning_rate=0.001]"``) is the
    run's grid point of that optimizer with the same names and formatted values, in any
    order (the run names it in its score file's order).

    Raises:
      EnsembleSpecError: if ``data`` has no such group; for a plain name of a swept
        optimizer, or a grid point the sweep lacks, the message lists the grid points.
    """
    label = label or display_name(group)
    if group in data.groups:
        return group
    optimizer, point = split_group(group)
    points = [
        name for name in data.groups if name != optimizer and split_group(name)[0] == optimizer
    ]
    for name in points:
        if set(split_group(name)[1]) == set(point):
            return name
    runs = ", ".join(map(str, data.run_dirs))
    if points:
        choices = ", ".join(display_name(name) for name in points)
        example = ",".join(f"{name}={value}" for name, value in split_group(points[0])[1])
        problem = (
            f"{display_name(optimizer)} was trained as a hyperparameter sweep on "
            f"{data.dataset!r} (runs {runs}); name one of its grid points: {choices} "
            f"(e.g. '{display_name(points[0])}(k)' or '{optimizer}@{example}:k')"
            if not point
            else f"data set {data.dataset!r} (runs {runs}) has no grid point "
            f"{display_name(group)}; the grid points of {display_name(optimizer)} are {choices}"
        )
    elif point and optimizer in data.groups:
        problem = (
            f"{display_name(optimizer)} on {data.dataset!r} (runs {runs}) has no "
            f"hyperparameter sweep, so no grid point {display_name(group)}; name it "
            f"{display_name(optimizer)}(k)"
        )
    else:
        problem = (
            f"data set {data.dataset!r} (runs {runs}) has no {describe_group(group)} "
            f"scores; its groups are {list(data.groups)}"
        )
    raise EnsembleSpecError(f"{label}: {problem}")


def resolve_spec(data: DatasetScores, spec: EnsembleSpec) -> EnsembleSpec:
    """``spec`` with its terms named as ``data``'s groups, checked against them."""
    terms = []
    for optimizer, count in spec.terms:
        group = data.groups[resolve_group(data, optimizer, spec.label)]
        if count > group.n_members:
            raise EnsembleSpecError(
                f"{spec.label}: asks for {count} {display_name(optimizer)} members, but "
                f"{group.run_dir} trained {group.n_members} on {data.dataset!r}"
            )
        terms.append((group.optimizer, count))
    return EnsembleSpec(tuple(terms))


def evaluate_ensemble(data: DatasetScores, spec: EnsembleSpec, rule: str = "sum") -> EnsembleResult:
    """Fuses the first ``k`` members of each group of ``spec`` and scores the result.

    Members that diverged in a fold are left out in that fold (and listed in the result).

    Raises:
      EnsembleSpecError: if a group is missing or has fewer members than asked for, or if
        every member of the ensemble diverged in some fold.
    """
    spec = resolve_spec(data, spec)
    fold = unfusable_fold(data, spec)
    if fold is not None:
        raise EnsembleSpecError(
            f"{spec.label} on {data.dataset!r}: every member diverged in fold {fold}"
        )
    member_scores, valid, left_out = [], [], []
    for optimizer, count in spec.terms:
        group = data.groups[optimizer]
        member_scores.append(group.scores[:count])
        valid.append(~group.diverged[:count][:, data.sample_fold_position])
        for member, position in zip(*np.nonzero(group.diverged[:count]), strict=True):
            left_out.append(LeftOutMember(optimizer, int(member), data.folds[position]))
    member_scores = np.concatenate(member_scores)
    valid = np.concatenate(valid)
    fused = fuse(member_scores, rule, valid)
    member_predictions = np.where(valid[..., None], member_scores, 0.0).argmax(axis=-1)
    return EnsembleResult(
        dataset=data.dataset,
        spec=spec,
        rule=rule,
        metrics=classification_metrics(fused.probabilities, data.labels, fused.predictions),
        diversity=pairwise_disagreement(member_predictions, valid),
        left_out=tuple(left_out),
        fused=fused,
    )


class MemberResult(NamedTuple):
    """One member's stand-alone metrics, pooled over the folds.

    Attributes:
      dataset: the data set.
      optimizer: its group.
      member: its index in the group.
      diverged_folds: folds where it diverged; if any, ``metrics`` is None.
      metrics: the stand-alone metrics, or None.
    """

    dataset: str
    optimizer: str
    member: int
    diverged_folds: tuple[int, ...]
    metrics: ClassificationMetrics | None


def member_results(data: DatasetScores) -> list[MemberResult]:
    """The stand-alone metrics of every member of every group, pooled over the folds."""
    results = []
    for optimizer, group in data.groups.items():
        for member in range(group.n_members):
            diverged_folds = tuple(
                data.folds[position] for position in np.flatnonzero(group.diverged[member])
            )
            metrics = (
                None
                if diverged_folds
                else classification_metrics(group.scores[member], data.labels)
            )
            results.append(MemberResult(data.dataset, optimizer, member, diverged_folds, metrics))
    return results


def accuracy_mean_and_std(accuracies: ArrayLike) -> tuple[float, float]:
    """Table 1's statistic: mean and sample standard deviation of member accuracies.

    The standard deviation uses ``ddof=1`` (MATLAB's ``std``, which the paper used). The mean
    is NaN for no accuracy, the standard deviation NaN for fewer than two: one member has no
    spread to estimate (not a spread of 0).

    Example:
      >>> accuracy_mean_and_std([0.5, 0.75, 1.0])
      (0.75, 0.25)
      >>> accuracy_mean_and_std([0.5])
      (0.5, nan)
    """
    accuracies = np.asarray(accuracies, dtype=np.float64).ravel()
    mean = float(accuracies.mean()) if accuracies.size else math.nan
    return mean, float(accuracies.std(ddof=1)) if accuracies.size > 1 else math.nan


class Table1Row(NamedTuple):
    """Table 1: an optimizer's stand-alone accuracy on one data set.

    Attributes:
      dataset: the data set.
      optimizer: the group.
      n_members: members trained.
      diverged_members: members that diverged in some fold, left out of mean and std.
      accuracy_mean: mean pooled accuracy of the other members (NaN if none).
      accuracy_std: their standard deviation, ``ddof=1`` (NaN for fewer than two).
    """

    dataset: str
    optimizer: str
    n_members: int
    diverged_members: tuple[int, ...]
    accuracy_mean: float
    accuracy_std: float


def table1(members: Sequence[MemberResult]) -> list[Table1Row]:
    """Aggregates ``member_results`` into the paper's Table 1, one row per (data set, group)."""
    by_group: dict[tuple[str, str], list[MemberResult]] = {}
    for result in members:
        by_group.setdefault((result.dataset, result.optimizer), []).append(result)
    rows = []
    for (dataset, optimizer), results in by_group.items():
        accuracy_mean, accuracy_std = accuracy_mean_and_std(
            [r.metrics.accuracy for r in results if r.metrics is not None]
        )
        rows.append(
            Table1Row(
                dataset=dataset,
                optimizer=optimizer,
                n_members=len(results),
                diverged_members=tuple(r.member for r in results if r.metrics is None),
                accuracy_mean=accuracy_mean,
                accuracy_std=accuracy_std,
            )
        )
    return rows


class Table2Entry(NamedTuple):
    """Table 2: one ensemble on one data set; ``result`` is None when ``unavailable``."""

    dataset: str
    spec: EnsembleSpec
    result: EnsembleResult | None
    unavailable: str | None


def table2(
    datasets: Mapping[str, DatasetScores],
    ensembles: Sequence[str | EnsembleSpec] | None = None,
    rule: str = "sum",
) -> list[Table2Entry]:
    """The paper's Table 2: fused ensembles on every data set.

    Args:
      datasets: from ``load_runs``.
      ensembles: specifications; default the paper's 15 rows, ``PAPER_TABLE2_ENSEMBLES``,
        followed by :func:`trained_group_ensembles` (so a run smaller than the paper's, like
        the offline default, still gets fused rows).
      rule: the fusion rule.

    Returns:
      Entries ordered by ensemble, then data set. A default row that a data set cannot serve
      is an entry with ``unavailable`` set to the reason.

    Raises:
      EnsembleSpecError: for an ensemble given explicitly that a data set cannot serve.
    """
    explicit = ensembles is not None
    specs = [
        spec if isinstance(spec, EnsembleSpec) else parse_ensemble_spec(spec)
        for spec in (ensembles if explicit else PAPER_TABLE2_ENSEMBLES)
    ]
    if not explicit:
        labels = {spec.label for spec in specs}
        specs += [s for s in trained_group_ensembles(datasets) if s.label not in labels]
    entries = []
    for spec in specs:
        for data in datasets.values():
            try:
                entries.append(
                    Table2Entry(data.dataset, spec, evaluate_ensemble(data, spec, rule), None)
                )
            except EnsembleSpecError as error:
                if explicit:
                    raise
                entries.append(Table2Entry(data.dataset, spec, None, str(error)))
    return entries


def trained_group_ensembles(datasets: Mapping[str, DatasetScores]) -> list[EnsembleSpec]:
    """Every trained group with all its members, then all groups together, per data set.

    A sweep's grid points are groups: each is a row whole. A data set with a sweep has no
    all-groups row (fusing every grid point, diverged and poor ones included, is asked for
    explicitly, if wanted).
    """
    specs: dict[str, EnsembleSpec] = {}
    for data in datasets.values():
        terms = tuple((name, group.n_members) for name, group in data.groups.items())
        rows = [EnsembleSpec((term,)) for term in terms]
        if not any(group.hyperparameters for group in data.groups.values()):
            rows.append(EnsembleSpec(terms))
        for spec in rows:
            specs.setdefault(spec.label, spec)
    return list(specs.values())


def unfusable_fold(data: DatasetScores, spec: EnsembleSpec) -> int | None:
    """The first fold in which every member of ``spec`` diverged (None: it can be fused).

    Raises:
      EnsembleSpecError: if a group is missing or has fewer members than asked for.
    """
    spec = resolve_spec(data, spec)
    diverged_everywhere = np.ones(len(data.folds), dtype=bool)
    for optimizer, count in spec.terms:
        diverged_everywhere &= data.groups[optimizer].diverged[:count].all(axis=0)
    positions = np.flatnonzero(diverged_everywhere)
    return data.folds[positions[0]] if positions.size else None


def accuracy_by_ensemble_size(data: DatasetScores, optimizer: str, rule: str = "sum") -> np.ndarray:
    """Fused accuracy of the first ``k`` members of a group, for ``k = 1 .. members``.

    Entry ``k - 1`` is NaN where the first ``k`` members cannot be fused: every one of them
    diverged in some fold (``unfusable_fold``). Those sizes are always ``k = 1 .. j`` for some
    ``j``: the first ``k - 1`` members diverged wherever the first ``k`` all did.
    """
    count = data.groups[optimizer].n_members
    accuracies = np.full(count, math.nan)
    for k in range(1, count + 1):
        spec = EnsembleSpec(((optimizer, k),))
        if unfusable_fold(data, spec) is None:
            accuracies[k - 1] = evaluate_ensemble(data, spec, rule).metrics.accuracy
    return accuracies


class SweepRow(NamedTuple):
    """The sweep table: one grid point of a hyperparameter sweep on one data set.

    Attributes:
      dataset: the data set.
      optimizer: the optimizer (``"dgrad"``).
      group: the grid point's group (``"dgrad[learning_rate=0.001]"``).
      hyperparameters: ``(name, value)`` pairs, in the score file's order.
      n_members: members trained at the grid point.
      diverged_members: members that diverged in some fold (left out of the stand-alone mean
        and std; left out of fusion in the folds where they diverged).
      accuracy_mean: the other members' mean stand-alone accuracy, pooled over the folds
        (NaN if none).
      accuracy_std: their standard deviation, ``ddof=1`` (NaN for fewer than two).
      fused_accuracy: the grid point's members fused (NaN if every member diverged in some
        fold: no fused decision there).
    """

    dataset: str
    optimizer: str
    group: str
    hyperparameters: tuple[tuple[str, float], ...]
    n_members: int
    diverged_members: tuple[int, ...]
    accuracy_mean: float
    accuracy_std: float
    fused_accuracy: float


def sweep_table(
    datasets: Mapping[str, DatasetScores], members: Sequence[MemberResult], rule: str = "sum"
) -> list[SweepRow]:
    """Every grid point of every sweep: stand-alone (Table 1's) and fused accuracy.

    Args:
      datasets: from ``load_runs``.
      members: ``member_results`` of those data sets.
      rule: the fusion rule.

    Returns:
      Rows by data set, then group in the runs' order (optimizers in the paper's order, grid
      points in the score file's); empty when no run has a sweep.
    """
    table1_rows = {(row.dataset, row.optimizer): row for row in table1(members)}
    rows = []
    for data in datasets.values():
        for name, group in data.groups.items():
            if not group.hyperparameters:
                continue
            row = table1_rows[(data.dataset, name)]
            spec = EnsembleSpec(((name, group.n_members),))
            fused = (
                evaluate_ensemble(data, spec, rule).metrics.accuracy
                if unfusable_fold(data, spec) is None
                else math.nan
            )
            rows.append(
                SweepRow(
                    dataset=data.dataset,
                    optimizer=group.base_optimizer,
                    group=name,
                    hyperparameters=group.hyperparameters,
                    n_members=row.n_members,
                    diverged_members=row.diverged_members,
                    accuracy_mean=row.accuracy_mean,
                    accuracy_std=row.accuracy_std,
                    fused_accuracy=fused,
                )
            )
    return rows
