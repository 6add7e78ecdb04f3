"""The tables as files: CSV, ``report.json`` and the Markdown report as ``tables.md``.

CSV and JSON hold fractions at full precision, with missing values empty (CSV) or null
(JSON); :mod:`ensembling.report` renders the same tables as Markdown, in percent.
"""

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from ensembling.bootstrap import Interval
from ensembling.evaluation import Evaluation
from ensembling.heldout import CalibrationRow, MemberPool, SelectedEnsemble
from ensembling.intervals import TableIntervals
from ensembling.metrics import ClassificationMetrics
from ensembling.report import describe_runs, sweep_names
from ensembling.runs import DatasetScores
from ensembling.tables import MemberResult, SweepRow, Table1Row, Table2Entry
from rundir import atomic_file, write_atomically


def write_tables(out_dir: str | Path, evaluation: Evaluation, markdown: str) -> list[Path]:
    """Writes the tables as CSV files, ``report.json`` and ``markdown`` as ``tables.md``.

    The CSV files are ``members.csv``, ``table1.csv``, ``table2.csv`` and, where there are
    rows, ``sweep.csv`` (some run has a hyperparameter sweep), ``selection.csv`` and
    ``calibration.csv``; without them the files are exactly those of a run without sweeps,
    selection or calibration. CSV and JSON hold fractions (not percent) at full precision;
    missing values are empty (CSV) or null (JSON). ``report.json`` holds the runs
    (``describe_runs``), the same tables under the CSV files' names, and the bootstrap's
    settings and baselines. Each file is written atomically.

    Returns:
      The files written, CSV files first.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tables = _result_tables(evaluation)
    paths = [_write_csv(out_dir / f"{name}.csv", rows) for name, rows in tables.items()]
    intervals = evaluation.intervals
    report = {
        "runs": describe_runs(evaluation.datasets),
        **tables,
        "bootstrap": {
            "resamples": intervals.n_resamples,
            "level": intervals.level,
            "baselines": intervals.baselines,
        },
    }
    json_path = out_dir / "report.json"
    write_atomically(json_path, json.dumps(report, indent=1, allow_nan=False) + "\n")
    markdown_path = out_dir / "tables.md"
    write_atomically(markdown_path, markdown + "\n")
    return [*paths, json_path, markdown_path]


def _result_tables(evaluation: Evaluation) -> dict[str, list[dict]]:
    """The tables as rows of fractions, by name (``members``, ``table1``, ``table2``, then
    ``sweep``, ``selection`` and ``calibration`` where they have rows): the CSV files' and
    ``report.json``'s content."""
    e, intervals = evaluation, evaluation.intervals
    tables = {
        "members": [_member_row(m) for m in e.members],
        "table1": [_table1_row(r, intervals) for r in e.table1_rows],
        "table2": [_table2_row(entry, intervals) for entry in e.table2_entries],
    }
    names = sweep_names(e.sweep_rows)
    optional = {
        "sweep": [_sweep_row(r, names, e.rule) for r in e.sweep_rows],
        "selection": [_selection_row(s, e.pools, e.datasets, intervals) for s in e.selected],
        "calibration": [_calibration_row(r) for r in e.calibration],
    }
    return tables | {name: rows for name, rows in optional.items() if rows}


def _write_csv(path: Path, rows: Sequence[dict]) -> Path:
    with atomic_file(path) as file:  # a full disk leaves the old table, not half of one
        writer = csv.DictWriter(file, fieldnames=list(rows[0]) if rows else [])
        writer.writeheader()
        writer.writerows(rows)
    return path


def _metric_columns(metrics: ClassificationMetrics | None) -> dict[str, float | None]:
    return {k: (getattr(metrics, k) if metrics else None) for k in ClassificationMetrics._fields}


def _member_row(m: MemberResult) -> dict:
    return {
        "dataset": m.dataset,
        "optimizer": m.optimizer,
        "member": m.member,
        "diverged_folds": " ".join(map(str, m.diverged_folds)),
        **_metric_columns(m.metrics),
    }


def _table1_row(r: Table1Row, intervals: TableIntervals) -> dict:
    return {
        "dataset": r.dataset,
        "optimizer": r.optimizer,
        "members": r.n_members,
        "diverged": len(r.diverged_members),
        "diverged_members": " ".join(map(str, r.diverged_members)),
        "accuracy_mean": _finite_or_none(r.accuracy_mean),
        "accuracy_std": _finite_or_none(r.accuracy_std),
        **_interval_columns(intervals.table1.get((r.dataset, r.optimizer))),
    }


def _table2_row(entry: Table2Entry, intervals: TableIntervals) -> dict:
    result = entry.result
    return {
        "dataset": entry.dataset,
        "ensemble": entry.spec.label,
        "fusion": result.rule if result else None,
        "members": entry.spec.size,
        "left_out": len(result.left_out) if result else None,
        "left_out_members": " ".join(map(str, result.left_out)) if result else None,
        **_metric_columns(result.metrics if result else None),
        "diversity": _finite_or_none(result.diversity) if result else None,
        "unavailable": entry.unavailable,
        **_row_intervals(intervals, entry.dataset, entry.spec.label),
    }


def _sweep_row(r: SweepRow, names: Sequence[str], rule: str) -> dict:
    return {
        "dataset": r.dataset,
        "optimizer": r.optimizer,
        "group": r.group,
        **{name: dict(r.hyperparameters).get(name) for name in names},
        "members": r.n_members,
        "diverged": len(r.diverged_members),
        "diverged_members": " ".join(map(str, r.diverged_members)),
        "accuracy_mean": _finite_or_none(r.accuracy_mean),
        "accuracy_std": _finite_or_none(r.accuracy_std),
        "fusion": rule,
        "fused_accuracy": _finite_or_none(r.fused_accuracy),
    }


def _selection_row(
    e: SelectedEnsemble,
    pools: Mapping[str, MemberPool],
    datasets: Mapping[str, DatasetScores],
    intervals: TableIntervals,
) -> dict:
    return {
        "dataset": e.dataset,
        "ensemble": e.label,
        **_metric_columns(e.metrics),
        **_row_intervals(intervals, e.dataset, e.label),
        "members": (
            e.multiset(pools[e.dataset], datasets[e.dataset].folds)
            if e.selections is not None and pools
            else "all not diverged"
        ),
    }


def _calibration_row(r: CalibrationRow) -> dict:
    return {
        "dataset": r.dataset,
        "kind": r.kind,
        "name": r.name,
        "temperatures": " ".join(f"{t:.6g}" for t in r.temperatures),
        "accuracy": r.after.accuracy,
        **{f"{k}_before": getattr(r.before, k) for k in ("nll", "ece", "brier")},
        **{f"{k}_after": getattr(r.after, k) for k in ("nll", "ece", "brier")},
    }


def _finite_or_none(value: float) -> float | None:
    return None if math.isnan(value) else value


def _interval_columns(
    interval: Interval | None, prefix: str = "accuracy"
) -> dict[str, float | None]:
    if interval is None:
        return {f"{prefix}_ci_low": None, f"{prefix}_ci_high": None}
    return {
        f"{prefix}_ci_low": _finite_or_none(interval.low),
        f"{prefix}_ci_high": _finite_or_none(interval.high),
    }


def _row_intervals(intervals: TableIntervals, dataset: str, label: str) -> dict:
    difference = intervals.differences.get((dataset, label))
    return {
        **_interval_columns(intervals.ensembles.get((dataset, label))),
        "baseline": difference.baseline if difference else None,
        "difference": difference.difference if difference else None,
        **_interval_columns(difference.interval if difference else None, "difference"),
    }
