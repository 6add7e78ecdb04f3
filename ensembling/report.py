"""Text output: the tables and the whole report as Markdown (accuracies in percent).

The same tables as files, in fractions at full precision: :mod:`ensembling.result_files`.
"""

import math
from collections.abc import Mapping, Sequence

import numpy as np

from ensembling.bootstrap import Interval
from ensembling.evaluation import Evaluation
from ensembling.heldout import CalibrationRow, MemberPool, SelectedEnsemble
from ensembling.intervals import TableIntervals
from ensembling.metrics import ClassificationMetrics
from ensembling.runs import DatasetScores
from ensembling.specs import EnsembleSpec, display_name, format_hyperparameter, paper_order
from ensembling.tables import LeftOutMember, MemberResult, SweepRow, Table1Row, Table2Entry


def _percent(value: float) -> str:
    return "–" if math.isnan(value) else f"{100 * value:.2f}"


def _interval(interval: Interval | None) -> str:
    """``[95.10, 97.90]`` in percent; empty without an interval."""
    if interval is None:
        return ""
    return f" [{_percent(interval.low)}, {_percent(interval.high)}]"


def _signed_percent(value: float) -> str:
    return "–" if math.isnan(value) else f"{100 * value:+.2f}"


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def describe_runs(datasets: Mapping[str, DatasetScores]) -> list[dict]:
    """Per data set: its runs, folds (and planned folds without scores), test samples, groups'
    member counts, diverged members."""
    descriptions = []
    for data in datasets.values():
        diverged = [
            str(LeftOutMember(optimizer, int(member), data.folds[position]))
            for optimizer, group in data.groups.items()
            for member, position in zip(*np.nonzero(group.diverged), strict=True)
        ]
        descriptions.append(
            {
                "dataset": data.dataset,
                "run_dirs": [str(run_dir) for run_dir in data.run_dirs],
                "folds": list(data.folds),
                "missing_folds": list(data.missing_folds),
                "test_samples": len(data.labels),
                "classes": len(data.class_names),
                "members": {name: group.n_members for name, group in data.groups.items()},
                "diverged": diverged,
            }
        )
    return descriptions


def runs_markdown(datasets: Mapping[str, DatasetScores]) -> str:
    """The runs behind the tables, with every diverged member-fold."""
    body = [
        [
            run["dataset"],
            ", ".join(run["run_dirs"]),
            " ".join(map(str, run["folds"]))
            + (
                f" (missing: {' '.join(map(str, run['missing_folds']))})"
                if run["missing_folds"]
                else ""
            ),
            str(run["test_samples"]),
            EnsembleSpec(tuple(run["members"].items())).label,
            ", ".join(run["diverged"]) or "none",
        ]
        for run in describe_runs(datasets)
    ]
    header = ["Data set", "Runs", "Folds", "Test samples", "Members", "Diverged"]
    return _markdown(header, body)


def table1_markdown(rows: Sequence[Table1Row], intervals: TableIntervals | None = None) -> str:
    """Table 1 as Markdown: accuracy (%) mean ± std per optimizer (rows) and data set, and
    with ``intervals`` the bootstrap interval of the mean in brackets."""
    datasets = list(dict.fromkeys(row.dataset for row in rows))
    cells = {(row.optimizer, row.dataset): row for row in rows}
    body = []
    for optimizer in paper_order(row.optimizer for row in rows):
        line = [display_name(optimizer)]
        for dataset in datasets:
            row = cells.get((optimizer, dataset))
            if row is None:
                line.append("")
                continue
            cell = f"{_percent(row.accuracy_mean)} ± {_percent(row.accuracy_std)}"
            if intervals is not None:
                cell += _interval(intervals.table1.get((dataset, optimizer)))
            if row.diverged_members:
                noun = "member" if len(row.diverged_members) == 1 else "members"
                cell += (
                    f" ({len(row.diverged_members)}/{row.n_members} diverged: {noun} "
                    f"{', '.join(map(str, row.diverged_members))})"
                )
            line.append(cell)
        body.append(line)
    return _markdown(["Optimizer", *datasets], body)


def member_metrics_markdown(members: Sequence[MemberResult]) -> str:
    """Stand-alone metrics per optimizer and data set: the mean over non-diverged members."""
    by_group: dict[tuple[str, str], list[ClassificationMetrics]] = {}
    for result in members:
        metrics = by_group.setdefault((result.dataset, result.optimizer), [])
        if result.metrics is not None:
            metrics.append(result.metrics)
    body = []
    for (dataset, optimizer), metrics in by_group.items():
        means = np.array(metrics).mean(axis=0) if metrics else np.full(5, math.nan)
        accuracy, macro_f1, nll, ece, brier = means
        body.append(
            [
                dataset,
                display_name(optimizer),
                f"{len(metrics)}",
                _percent(accuracy),
                _percent(macro_f1),
                f"{nll:.4f}",
                f"{ece:.4f}",
                f"{brier:.4f}",
            ]
        )
    header = ["Data set", "Optimizer", "Members", "Acc %", "Macro F1 %", "NLL", "ECE", "Brier"]
    return _markdown(header, body)


def table2_markdown(entries: Sequence[Table2Entry], intervals: TableIntervals | None = None) -> str:
    """Table 2 as Markdown: fused accuracy (%) per ensemble (rows) and data set, and with
    ``intervals`` the bootstrap interval in brackets.

    Only the ensembles that some data set can serve are rows; the others (default rows the
    runs lack the members for) are named in one line under the table, their reasons being in
    ``table2.csv``. Cells marked ``†n`` had ``n`` member-folds left out as diverged; an "n/a"
    cell of a row that another data set serves is explained below the table.
    """
    datasets = list(dict.fromkeys(entry.dataset for entry in entries))
    specs = list(dict.fromkeys(entry.spec for entry in entries))
    cells = {(entry.spec, entry.dataset): entry for entry in entries}
    body, notes, unserved = [], [], []
    for spec in specs:
        row = [cells[(spec, dataset)] for dataset in datasets]
        if all(entry.result is None for entry in row):
            unserved.append(spec.label)
            continue
        line = [spec.label]
        for entry in row:
            if entry.result is None:
                line.append("n/a")
                notes.append(f"- n/a ({entry.dataset}): {entry.unavailable}")
            else:
                cell = _percent(entry.result.metrics.accuracy)
                if intervals is not None:
                    cell += _interval(intervals.ensembles.get((entry.dataset, spec.label)))
                if entry.result.left_out:
                    cell += f" †{len(entry.result.left_out)}"
                line.append(cell)
        body.append(line)
    if unserved:
        notes.append(
            f"Not served by these runs (each reason in table2.csv): {', '.join(unserved)}."
        )
    table = _markdown(["Ensemble", *datasets], body)
    return "\n".join([table, "", *notes]) if notes else table


def differences_markdown(intervals: TableIntervals) -> str:
    """Each ensemble's accuracy minus its data set's baseline row, with the paired
    bootstrap interval (percentage points); ``*`` marks an interval that excludes 0."""
    body = []
    for (dataset, label), difference in intervals.differences.items():
        if label == difference.baseline:
            continue
        low, high = difference.interval
        excludes_zero = low > 0 or high < 0
        body.append(
            [
                dataset,
                label,
                difference.baseline,
                _signed_percent(difference.difference) + (" *" if excludes_zero else ""),
                f"[{_signed_percent(low)}, {_signed_percent(high)}]",
            ]
        )
    header = ["Data set", "Ensemble", "Baseline", "Δ acc (pp)", f"{intervals.level:.0%} interval"]
    return _markdown(header, body)


def selection_markdown(
    selected: Sequence[SelectedEnsemble],
    pools: Mapping[str, MemberPool],
    datasets: Mapping[str, DatasetScores],
    intervals: TableIntervals | None = None,
) -> str:
    """The ensembles chosen on validation rows: test metrics, interval, members per fold."""
    body = []
    for ensemble in selected:
        metrics = ensemble.metrics
        folds = datasets[ensemble.dataset].folds
        interval = (
            intervals.ensembles.get((ensemble.dataset, ensemble.label)) if intervals else None
        )
        members = (
            ensemble.multiset(pools[ensemble.dataset], folds)
            if ensemble.selections is not None
            else f"{int(ensemble.weights[0].sum())} members (every one not diverged)"
        )
        body.append(
            [
                ensemble.dataset,
                ensemble.label,
                _percent(metrics.accuracy) + _interval(interval),
                f"{metrics.nll:.4f}",
                f"{metrics.ece:.4f}",
                f"{metrics.brier:.4f}",
                members,
            ]
        )
    header = ["Data set", "Ensemble", "Acc %", "NLL", "ECE", "Brier", "Members (per fold)"]
    return _markdown(header, body)


def calibration_markdown(rows: Sequence[CalibrationRow]) -> str:
    """Ensembles, and each group's members on average, before and after temperature scaling."""
    body = []
    by_group: dict[tuple[str, str], list[CalibrationRow]] = {}
    for row in rows:
        if row.kind == "member":
            by_group.setdefault((row.dataset, row.name.split("#")[0]), []).append(row)
            continue
        body.append(_calibration_line(row.dataset, row.name, [row]))
    for (dataset, group), members in by_group.items():
        body.append(
            _calibration_line(dataset, f"{group} members (mean of {len(members)})", members)
        )
    header = ["Data set", "Ensemble", "T (per fold)", "NLL", "ECE", "Brier"]
    return _markdown(header, body)


def _calibration_line(dataset: str, name: str, rows: Sequence[CalibrationRow]) -> list[str]:
    def change(metric: str) -> str:
        before = np.mean([getattr(r.before, metric) for r in rows])
        after = np.mean([getattr(r.after, metric) for r in rows])
        return f"{before:.4f} → {after:.4f}"

    temperatures = (
        " ".join(f"{t:.2f}" for t in rows[0].temperatures)
        if len(rows) == 1
        else f"{np.mean([r.temperatures for r in rows]):.2f} (mean)"
    )
    return [dataset, name, temperatures, change("nll"), change("ece"), change("brier")]


def ensemble_metrics_markdown(entries: Sequence[Table2Entry]) -> str:
    """All metrics of the available Table 2 entries, with the members left out."""
    body = []
    for entry in entries:
        if entry.result is None:
            continue
        result = entry.result
        metrics = result.metrics
        body.append(
            [
                entry.dataset,
                entry.spec.label,
                _percent(metrics.accuracy),
                _percent(metrics.macro_f1),
                f"{metrics.nll:.4f}",
                f"{metrics.ece:.4f}",
                f"{metrics.brier:.4f}",
                "–" if math.isnan(result.diversity) else f"{result.diversity:.4f}",
                ", ".join(map(str, result.left_out)) or "none",
            ]
        )
    header = ["Data set", "Ensemble", "Acc %", "Macro F1 %", "NLL", "ECE", "Brier", "Diversity"]
    return _markdown([*header, "Left out (diverged)"], body)


def sweep_names(rows: Sequence[SweepRow]) -> list[str]:
    """The hyperparameters the sweeps vary, in the order they first appear."""
    return list(dict.fromkeys(name for row in rows for name, _ in row.hyperparameters))


def sweep_markdown(rows: Sequence[SweepRow], rule: str = "sum") -> str:
    """The sweep table as Markdown: per data set, optimizer and grid point, its values, the
    members, the diverged members, stand-alone accuracy (%) mean ± std and fused accuracy (%).

    A grid point where members diverged is marked ``†`` after its optimizer's name; ``–``
    is a missing value (no member left, or no fused decision).
    """
    names = sweep_names(rows)
    body = []
    for row in rows:
        values = dict(row.hyperparameters)
        diverged = "none"
        if row.diverged_members:
            noun = "member" if len(row.diverged_members) == 1 else "members"
            diverged = (
                f"{len(row.diverged_members)}/{row.n_members} ({noun} "
                f"{', '.join(map(str, row.diverged_members))})"
            )
        body.append(
            [
                row.dataset,
                display_name(row.optimizer) + (" †" if row.diverged_members else ""),
                *(format_hyperparameter(values[n]) if n in values else "" for n in names),
                str(row.n_members),
                diverged,
                f"{_percent(row.accuracy_mean)} ± {_percent(row.accuracy_std)}",
                _percent(row.fused_accuracy),
            ]
        )
    header = ["Data set", "Optimizer", *names, "Members", "Diverged", "Stand-alone acc %"]
    table = _markdown([*header, f"Fused acc % ({rule})"], body)
    if not any(row.diverged_members for row in rows):
        return table
    note = (
        "†: members diverged at this grid point; they are left out of the stand-alone mean "
        "and std, and of fusion in the folds where they diverged."
    )
    return "\n".join([table, "", note])


def markdown_report(evaluation: Evaluation) -> str:
    """The whole report as Markdown, as ``ensemble.py`` prints it and writes ``tables.md``:
    the runs, Table 1, stand-alone metrics, Table 2, ensemble metrics, then, where there are
    any, the ensembles chosen on validation rows, the differences from the baseline, the
    temperature scaling and the sweep table."""
    e, intervals = evaluation, evaluation.intervals
    level = f"{intervals.level:.0%}"
    sections = [
        "## Runs",
        runs_markdown(e.datasets),
        f"## Table 1: stand-alone accuracy (%), mean ± std over members [{level} bootstrap "
        "interval of the mean]",
        table1_markdown(e.table1_rows, intervals),
        "## Stand-alone metrics, mean over members (diverged members left out)",
        member_metrics_markdown(e.members),
        f"## Table 2: fused accuracy (%), {e.rule} rule [{level} bootstrap interval] "
        "(†n: n member-folds left out as diverged)",
        table2_markdown(e.table2_entries, intervals),
        "## Ensemble metrics",
        ensemble_metrics_markdown(e.table2_entries),
    ]
    if e.selected:
        sections += [
            "## Ensembles chosen on validation rows (the test folds only measure them) "
            f"[{level} bootstrap interval]",
            selection_markdown(e.selected, e.pools, e.datasets, intervals),
        ]
    sections += [
        f"## Difference from the baseline (paired bootstrap, {intervals.n_resamples} "
        "resamples of the test images within folds; * the interval excludes 0)",
        differences_markdown(intervals),
    ]
    if e.calibration:
        sections += [
            "## Temperature scaling, fitted on validation rows per fold: test metrics "
            "before → after",
            calibration_markdown(e.calibration),
        ]
    if e.sweep_rows:
        sections += [
            "## Hyperparameter sweep: accuracy (%) per grid point, stand-alone mean ± std "
            "over members and fused",
            sweep_markdown(e.sweep_rows, e.rule),
        ]
    return "\n\n".join(sections)
