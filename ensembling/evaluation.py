"""Everything the report is made of, computed from loaded runs in one call.

``evaluate_runs`` computes what ``ensemble.py`` prints and writes, before any of it is
printed or written: Table 1 and Table 2, the sweep table, the ensembles chosen and calibrated
on validation rows, and the bootstrap interval of every row. ``report.markdown_report`` and
``result_files.write_tables`` render the result; the plots draw parts of it.
"""

from collections.abc import Mapping, Sequence
from typing import NamedTuple

from ensembling.heldout import (
    CalibrationRow,
    MemberPool,
    SelectedEnsemble,
    calibrate_ensemble,
    calibrate_members,
    greedy_ensemble,
    member_pool,
    pool_ensemble,
    spec_weights,
)
from ensembling.intervals import DEFAULT_RESAMPLES, TableIntervals, table_intervals
from ensembling.runs import DatasetScores
from ensembling.specs import EnsembleSpec, EnsembleSpecError, parse_ensemble_spec
from ensembling.tables import (
    MemberResult,
    SweepRow,
    Table1Row,
    Table2Entry,
    member_results,
    sweep_table,
    table1,
    table2,
)


class Evaluation(NamedTuple):
    """The tables of one set of runs, before they are printed or written.

    Attributes:
      datasets: the runs, by data set (``runs.load_runs``).
      rule: the fusion rule of Table 2 and of the sweep table.
      members: every member's stand-alone metrics (``tables.member_results``).
      table1_rows: Table 1.
      table2_entries: Table 2, the rows no run can serve included (with the reason).
      sweep_rows: the sweep table; empty when no run has a sweep.
      pools: by data set, the member pool selection and calibration used; empty without
        either.
      selected: the ensembles chosen on validation rows, each beside the whole pool; empty
        without selection.
      calibration: Table 2's ensembles, the selected ones and every member before and after
        temperature scaling; empty without calibration.
      intervals: every row's bootstrap interval and paired difference from the baseline.
    """

    datasets: dict[str, DatasetScores]
    rule: str
    members: list[MemberResult]
    table1_rows: list[Table1Row]
    table2_entries: list[Table2Entry]
    sweep_rows: list[SweepRow]
    pools: dict[str, MemberPool]
    selected: list[SelectedEnsemble]
    calibration: list[CalibrationRow]
    intervals: TableIntervals


def evaluate_runs(
    datasets: Mapping[str, DatasetScores],
    *,
    ensembles: Sequence[str | EnsembleSpec] | None = None,
    rule: str = "sum",
    select: bool = False,
    objective: str = "nll",
    max_rounds: int | None = None,
    calibrate: bool = False,
    baseline: str | EnsembleSpec | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
) -> Evaluation:
    """Tables 1 and 2, the sweep table, the ensembles chosen and calibrated on validation
    rows, and every row's bootstrap interval (``ensemble.py``'s flags in brackets).

    Args:
      datasets: from ``runs.load_runs``.
      ensembles: Table 2's rows (``--ensembles``); default the paper's rows the runs can
        serve, then the trained groups (``tables.table2``).
      rule: the fusion rule (``--fusion``).
      select: choose an ensemble per data set by greedy selection on the validation rows,
        shown beside the whole pool (``--select greedy``).
      objective: what the selection minimises (``--select-objective``).
      max_rounds: at most this many picks per fold (``--select-rounds``).
      calibrate: fit temperatures on the validation rows to Table 2's ensembles, the
        selected ones and every member (``--calibrate temperature``).
      baseline: the row every difference is taken from (``--baseline``); default the most
        accurate Table 2 row of each data set.
      n_resamples: bootstrap resamples behind every interval (``--bootstrap``).

    Raises:
      EnsembleSpecError: an ensemble or baseline the runs cannot serve, selection or
        calibration on runs without validation rows, or calibration with a ``rule`` other
        than the sum rule.
    """
    if calibrate and rule != "sum":
        # Temperatures scale the sum rule's probabilities; under another rule the calibrated
        # rows would carry Table 2's names but not its numbers.
        raise EnsembleSpecError(
            f"calibration fits temperatures to the sum rule's probabilities, and Table 2 is "
            f"fused by {rule!r}: calibrate with the sum rule (the default fusion)"
        )
    datasets = dict(datasets)
    members = [result for data in datasets.values() for result in member_results(data)]
    table2_entries = table2(datasets, ensembles, rule)
    pools, selected, calibration = {}, [], []
    if select or calibrate:
        for data in datasets.values():
            pool = pools[data.dataset] = member_pool(data)
            chosen = (
                [greedy_ensemble(data, objective, max_rounds), pool_ensemble(data)]
                if select
                else []
            )
            selected += chosen
            if calibrate:
                calibration += _calibrated(data, pool, table2_entries, chosen)
    if isinstance(baseline, str):
        baseline = parse_ensemble_spec(baseline)
    intervals = table_intervals(
        datasets,
        table2_entries,
        selected,
        n_resamples=n_resamples,
        baseline=baseline,
        rule=rule,
    )
    return Evaluation(
        datasets=datasets,
        rule=rule,
        members=members,
        table1_rows=table1(members),
        table2_entries=table2_entries,
        sweep_rows=sweep_table(datasets, members, rule),
        pools=pools,
        selected=selected,
        calibration=calibration,
        intervals=intervals,
    )


def _calibrated(
    data: DatasetScores,
    pool: MemberPool,
    table2_entries: Sequence[Table2Entry],
    chosen: Sequence[SelectedEnsemble],
) -> list[CalibrationRow]:
    """One data set's Table 2 ensembles, then its selected ones, then its members, each
    before and after temperature scaling."""
    rows = [
        calibrate_ensemble(data, pool, e.spec.label, spec_weights(data, pool, e.spec))
        for e in table2_entries
        if e.dataset == data.dataset and e.result is not None
    ]
    rows += [calibrate_ensemble(data, pool, e.label, e.weights) for e in chosen]
    return rows + calibrate_members(data, pool)
