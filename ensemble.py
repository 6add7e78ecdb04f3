"""Sum-rule fusion of ensemble members, the paper's tables, uncertainty metrics and plots.

Reads the score files that ``train.py`` writes with ``write_score_file`` (it never imports
the trainer)::

  RUN_DIR/config.json                        "optimizers" ({"sgd": 14, ...}), "folds", ...
  RUN_DIR/scores/fold{F}/{OPTIMIZER}.npz     scores [members, n_test, n_classes] (softmax),
                                             labels, test_indices, class_names, member_seeds,
                                             diverged [members], optimizer, fold, dataset,
                                             and for a hyperparameter sweep
                                             hyperparameter_names [H] and
                                             hyperparameter_values [members, H]

and reproduces Nanni, Maguolo & Lumini (arXiv 2103.14689):

- Table 1: per optimizer, the mean and standard deviation over its members of each member's
  stand-alone accuracy, pooled over the folds the run trained.
- Table 2: ensembles fused with the sum rule, ``argmax_c sum_m p_m(c | x)``, named in the
  paper's notation (``"SGD(14) + DGrad(7) + Cos#1(7)"``) or a plain one (``sgd:14+dgrad:7``);
  an ensemble takes the first ``k`` members of each group.

Decisions (docs/ensembles.md explains them):

- Runs of the same data set are merged; a group present in two runs of one data set is an
  error. Different data sets become the columns of the tables.
- A member the trainer marked as diverged in a fold is left out of every fusion in *that fold*
  only (each fold trains its own networks); the results list each one left out. For Table 1 a
  member that diverged in any fold has no pooled accuracy: it is counted and named apart from
  the mean and standard deviation, which use the other members.
- The paper's default Table 2 rows that no run can serve (a group missing or smaller than
  asked) are named in one line under the table and kept in table2.csv with the reason; an
  ensemble given explicitly must be servable, otherwise it is an error.
- Which optimizer groups exist is what the runs hold (the trainer owns the list); the paper's
  display names (``PAPER_NAMES``) and table order are a reporting convention, and a group the
  paper does not have is shown as its own name.
- A plot skips ensemble sizes that cannot be fused (every member diverged in a fold) and says
  so in its legend.
- Standard deviations use ``ddof=1`` (MATLAB's ``std``, which the paper used).
- The data set's name (a table column) is the one in the score files.
- A hyperparameter sweep (config.json's ``sweep``) is split into one group per grid point,
  ``dgrad[learning_rate=0.0003]`` (shown ``DGrad[learning_rate=0.0003]``): Table 1 has a row
  per grid point, a spec picks one (``DGrad[learning_rate=3e-4](3)``,
  ``dgrad@learning_rate=3e-4:3``) and a plain ``DGrad(3)`` is an error listing them; the
  sweep table (``sweep.csv``) and ``hyperparameter_sweep.png`` show each grid point's
  stand-alone and fused accuracy, marking grid points where members diverged. Runs without a
  sweep give exactly the output they gave before sweeps existed.

The helpers live in the ``ensembling`` package, one concept per module (specs, score_files,
runs, fusion, metrics, tables, report, plots); this module is their public face and the CLI.

Example::

  python ensemble.py runs/hela runs/bg --out results/
  python ensemble.py runs/hela --ensembles "SGD(14) + DGrad(7)" sgd:7 --fusion vote

References:
  Nanni, Maguolo & Lumini, "Exploiting Adam-like Optimization Algorithms to Improve the
  Performance of Convolutional Neural Networks", arXiv 2103.14689, 2021.
  Guo, Pleiss, Sun & Weinberger, "On Calibration of Modern Neural Networks", ICML 2017 (ECE).
  Brier, "Verification of forecasts expressed in terms of probability", 1950.
"""

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from ensembling.fusion import FUSION_RULES, FusedScores, fuse, sum_rule_accuracy
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
from ensembling.logs import load_learning_curves
from ensembling.metrics import (
    ECE_BINS,
    ClassificationMetrics,
    ReliabilityCurve,
    brier_score,
    classification_metrics,
    expected_calibration_error,
    pairwise_disagreement,
    reliability_curve,
)
from ensembling.plots import (
    cyclic_factors,
    plot_accuracy_vs_size,
    plot_calibration,
    plot_cyclic_factors,
    plot_hyperparameter_sweep,
    plot_learning_curves,
    plot_reliability,
    size_curve_label,
    sweep_lines,
)
from ensembling.report import (
    calibration_markdown,
    describe_runs,
    differences_markdown,
    ensemble_metrics_markdown,
    member_metrics_markdown,
    runs_markdown,
    selection_markdown,
    sweep_markdown,
    table1_markdown,
    table2_markdown,
    write_tables,
)
from ensembling.runs import (
    DatasetScores,
    GroupScores,
    RunWarning,
    load_run,
    load_runs,
    merge_runs,
)
from ensembling.score_files import (
    OPTIONAL_KEYS,
    SCORE_FILE_KEYS,
    FoldScores,
    ScoreFileError,
    read_score_file,
    write_score_file,
)
from ensembling.selection import OBJECTIVES
from ensembling.specs import (
    PAPER_NAMES,
    PAPER_TABLE2_ENSEMBLES,
    EnsembleSpec,
    EnsembleSpecError,
    display_name,
    format_hyperparameter,
    grid_point_group,
    optimizer_group,
    paper_order,
    parse_ensemble_spec,
    split_group,
)
from ensembling.tables import (
    EnsembleResult,
    LeftOutMember,
    MemberResult,
    SweepRow,
    Table1Row,
    Table2Entry,
    accuracy_by_ensemble_size,
    accuracy_mean_and_std,
    evaluate_ensemble,
    member_results,
    resolve_group,
    sweep_table,
    table1,
    table2,
    trained_group_ensembles,
    unfusable_fold,
)
from rundir import ENSEMBLE_DIR, SWEEPABLE, describe_os_error

__all__ = [
    "ECE_BINS",
    "FUSION_RULES",
    "SWEEPABLE",
    "OPTIONAL_KEYS",
    "PAPER_NAMES",
    "PAPER_TABLE2_ENSEMBLES",
    "SCORE_FILE_KEYS",
    "ClassificationMetrics",
    "DatasetScores",
    "EnsembleResult",
    "EnsembleSpec",
    "EnsembleSpecError",
    "FoldScores",
    "FusedScores",
    "GroupScores",
    "LeftOutMember",
    "MemberResult",
    "ReliabilityCurve",
    "RunWarning",
    "ScoreFileError",
    "SweepRow",
    "Table1Row",
    "Table2Entry",
    "accuracy_by_ensemble_size",
    "accuracy_mean_and_std",
    "brier_score",
    "build_parser",
    "classification_metrics",
    "cyclic_factors",
    "describe_runs",
    "display_name",
    "ensemble_metrics_markdown",
    "evaluate_ensemble",
    "expected_calibration_error",
    "format_hyperparameter",
    "fuse",
    "grid_point_group",
    "load_run",
    "load_runs",
    "main",
    "member_metrics_markdown",
    "member_results",
    "merge_runs",
    "optimizer_group",
    "pairwise_disagreement",
    "paper_order",
    "parse_ensemble_spec",
    "plot_accuracy_vs_size",
    "plot_cyclic_factors",
    "plot_hyperparameter_sweep",
    "plot_reliability",
    "read_score_file",
    "reliability_curve",
    "resolve_group",
    "runs_markdown",
    "size_curve_label",
    "split_group",
    "sum_rule_accuracy",
    "sweep_lines",
    "sweep_markdown",
    "sweep_table",
    "table1",
    "table1_markdown",
    "table2",
    "table2_markdown",
    "trained_group_ensembles",
    "unfusable_fold",
    "write_score_file",
    "write_tables",
]


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser; ``--help`` explains every flag."""
    parser = argparse.ArgumentParser(
        prog="ensemble.py",
        description=(
            "Fuse the ensemble members of train.py runs and print the paper's Table 1 "
            "(stand-alone accuracy per optimizer) and Table 2 (fused ensembles), with "
            "accuracy, macro F1, NLL, ECE (15 bins), Brier score and diversity. Writes "
            "members.csv, table1.csv, table2.csv, report.json, tables.md and plots to --out. "
            "A hyperparameter sweep's grid points are groups of their own "
            "(DGrad[learning_rate=0.0003]), with a sweep table (sweep.csv) and plot."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            "  python ensemble.py runs/hela runs/bg runs/lar --out results\n"
            "  python ensemble.py runs/hela --ensembles 'SGD(14) + DGrad(7)' dgrad:7+cos1:7\n"
            "  python ensemble.py runs/sweep --ensembles 'DGrad[learning_rate=3e-4](3)' "
            "dgrad@learning_rate=1e-3:3\n"
            "\nMembers marked diverged are left out of fusion in the folds where they "
            "diverged;\nthe tables say which."
        ),
    )
    parser.add_argument(
        "run_dirs",
        nargs="+",
        metavar="RUN_DIR",
        type=Path,
        help="train.py run directories (config.json + scores/). Runs of one data set are "
        "merged (each optimizer group may come from one run only); each data set is a column.",
    )
    parser.add_argument(
        "--ensembles",
        nargs="+",
        metavar="SPEC",
        help="ensembles for Table 2, in the paper's notation ('SGD(14) + DGrad(7) + Cos#1(7)'; "
        "quote it) or plain (sgd:14+dgrad:7+cos1:7), case-insensitive; each takes the first k "
        "members of each group. Every run must be able to serve them. Default: the paper's 15 "
        "rows that the runs can serve (the others are named under the table; table2.csv "
        "gives each reason), then each trained group whole and all groups together. A "
        "sweep's grid point: 'DGrad[learning_rate=3e-4](3)' or dgrad@learning_rate=3e-4:3 "
        "(several hyperparameters comma-separated).",
    )
    parser.add_argument(
        "--fusion",
        choices=FUSION_RULES,
        default="sum",
        help="how member probabilities are fused: sum (the paper's sum rule, default), "
        "mean_log (normalised geometric mean) or vote (majority vote, ties to the larger "
        "summed probability).",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help="output directory for the CSV/JSON/Markdown files and plots. Default: "
        "RUN_DIR/ensemble for one RUN_DIR; required for several.",
    )
    parser.add_argument(
        "--no-plots",
        action="store_true",
        help="skip the plots (accuracy_vs_size.png, reliability.png, cyclic_factors.png, "
        "learning_curves.png, and hyperparameter_sweep.png for a sweep, calibration.png with "
        "--calibrate).",
    )
    parser.add_argument(
        "--bootstrap",
        type=_positive_int("--bootstrap"),
        default=DEFAULT_RESAMPLES,
        metavar="N",
        help="resamples of the test images (within folds, fixed seed) behind every "
        "accuracy's 95%% interval and every paired difference from the baseline. Default "
        f"{DEFAULT_RESAMPLES}.",
    )
    parser.add_argument(
        "--baseline",
        metavar="SPEC",
        help="the row every ensemble's difference is taken from (paired bootstrap). Default: "
        "the most accurate Table 2 row of each data set.",
    )
    parser.add_argument(
        "--select",
        choices=("greedy",),
        help="choose an ensemble from every member of the runs (all groups, grid points and "
        "seeds) by greedy forward selection with replacement on the validation rows, fold by "
        "fold (needs train.py --validation-fraction); shown beside the whole pool.",
    )
    parser.add_argument(
        "--select-objective",
        choices=OBJECTIVES,
        default="nll",
        help="what --select minimises on the validation rows: nll (default), accuracy (the "
        "error rate) or brier.",
    )
    parser.add_argument(
        "--select-rounds",
        type=_positive_int("--select-rounds"),
        metavar="N",
        help="at most N picks per fold (default: twice the members); it stops earlier when "
        "no pick improves the objective.",
    )
    parser.add_argument(
        "--calibrate",
        choices=("temperature",),
        help="temperature scaling fitted on the validation rows per fold (needs train.py "
        "--validation-fraction): one temperature per member and per ensemble; NLL, ECE and "
        "Brier before and after, calibration.csv and calibration.png.",
    )
    return parser


def _positive_int(flag: str):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} {text!r} is not an integer") from None
        if value < 1:
            raise argparse.ArgumentTypeError(f"{flag} {value}: must be at least 1")
        return value

    return parse


class Evaluation(NamedTuple):
    """Everything ``ensemble.py`` computes from the runs, before it is printed or written."""

    datasets: dict[str, DatasetScores]
    members: list[MemberResult]
    table1_rows: list[Table1Row]
    table2_entries: list[Table2Entry]
    sweep_rows: list[SweepRow]
    pools: dict[str, MemberPool]
    selected: list[SelectedEnsemble]
    calibration: list[CalibrationRow]
    intervals: TableIntervals


def evaluate(args: argparse.Namespace, datasets: dict[str, DatasetScores]) -> Evaluation:
    """Tables 1 and 2, the sweep table, the ensembles chosen and calibrated on validation
    rows (``--select``, ``--calibrate``) and every row's bootstrap interval."""
    members = [result for data in datasets.values() for result in member_results(data)]
    table2_entries = table2(datasets, args.ensembles, args.fusion)
    pools, selected, calibration = {}, [], []
    if args.select or args.calibrate:
        for data in datasets.values():
            pool = pools[data.dataset] = member_pool(data)
            chosen = (
                [greedy_ensemble(data, args.select_objective, args.select_rounds),
                 pool_ensemble(data)]  # fmt: skip
                if args.select
                else []
            )
            selected += chosen
            if args.calibrate:
                calibration += [
                    calibrate_ensemble(data, pool, e.spec.label, spec_weights(data, pool, e.spec))
                    for e in table2_entries
                    if e.dataset == data.dataset and e.result is not None
                ]
                calibration += [calibrate_ensemble(data, pool, e.label, e.weights) for e in chosen]
                calibration += calibrate_members(data, pool)
    baseline = parse_ensemble_spec(args.baseline) if args.baseline else None
    intervals = table_intervals(
        datasets,
        table2_entries,
        selected,
        n_resamples=args.bootstrap,
        baseline=baseline,
        rule=args.fusion,
    )
    return Evaluation(
        datasets=datasets,
        members=members,
        table1_rows=table1(members),
        table2_entries=table2_entries,
        sweep_rows=sweep_table(datasets, members, args.fusion),
        pools=pools,
        selected=selected,
        calibration=calibration,
        intervals=intervals,
    )


def markdown_report(args: argparse.Namespace, e: Evaluation) -> str:
    """The tables as Markdown, as printed and written to ``tables.md``."""
    level = f"{e.intervals.level:.0%}"
    sections = [
        "## Runs",
        runs_markdown(e.datasets),
        f"## Table 1: stand-alone accuracy (%), mean ± std over members [{level} bootstrap "
        "interval of the mean]",
        table1_markdown(e.table1_rows, e.intervals),
        "## Stand-alone metrics, mean over members (diverged members left out)",
        member_metrics_markdown(e.members),
        f"## Table 2: fused accuracy (%), {args.fusion} rule [{level} bootstrap interval] "
        "(†n: n member-folds left out as diverged)",
        table2_markdown(e.table2_entries, e.intervals),
        "## Ensemble metrics",
        ensemble_metrics_markdown(e.table2_entries),
    ]
    if e.selected:
        sections += [
            "## Ensembles chosen on validation rows (the test folds only measure them) "
            f"[{level} bootstrap interval]",
            selection_markdown(e.selected, e.pools, e.datasets, e.intervals),
        ]
    sections += [
        f"## Difference from the baseline (paired bootstrap, {e.intervals.n_resamples} "
        "resamples of the test images within folds; * the interval excludes 0)",
        differences_markdown(e.intervals),
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
            sweep_markdown(e.sweep_rows, args.fusion),
        ]
    return "\n\n".join(sections)


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the CLI; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.out is None:
        if len(args.run_dirs) > 1:
            parser.error("--out is required when several RUN_DIRs are given")
        args.out = args.run_dirs[0] / ENSEMBLE_DIR
    if args.out.exists() and not args.out.is_dir():
        parser.exit(1, f"ensemble.py: error: --out {args.out} exists and is not a directory\n")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RunWarning)
            datasets = load_runs(args.run_dirs)
        for warning in caught:
            print(f"ensemble.py: warning: {warning.message}", file=sys.stderr)
        evaluation = evaluate(args, datasets)
    except (ScoreFileError, EnsembleSpecError) as error:
        parser.exit(1, f"ensemble.py: error: {error}\n")
    markdown = markdown_report(args, evaluation)
    print(markdown)
    try:
        written = _write_outputs(args, evaluation, markdown)
    except OSError as error:
        parser.exit(1, f"ensemble.py: error: {describe_os_error(error)}\n")
    print("\nwrote " + ", ".join(str(path) for path in written), file=sys.stderr)
    return 0


def _write_outputs(args: argparse.Namespace, e: Evaluation, markdown: str) -> list[Path]:
    """Writes the tables and, unless ``--no-plots``, the plots; returns the files written."""
    datasets = e.datasets
    written = write_tables(
        args.out,
        datasets,
        e.members,
        e.table1_rows,
        e.table2_entries,
        markdown,
        e.sweep_rows,
        args.fusion,
        intervals=e.intervals,
        selected=e.selected,
        pools=e.pools,
        calibration=e.calibration,
    )
    if args.no_plots:
        return written
    written += [
        plot_accuracy_vs_size(datasets, args.out / "accuracy_vs_size.png", args.fusion),
        plot_reliability(datasets, args.out / "reliability.png", args.fusion),
        plot_cyclic_factors(args.out / "cyclic_factors.png"),
    ]
    if e.sweep_rows:
        written.append(
            plot_hyperparameter_sweep(
                e.sweep_rows, args.out / "hyperparameter_sweep.png", args.fusion
            )
        )
    if e.calibration:
        written.append(plot_calibration(e.calibration, args.out / "calibration.png"))
    for run_dir in args.run_dirs:
        curves = load_learning_curves(run_dir)
        if curves:
            name = "learning_curves.png" if len(args.run_dirs) == 1 else (
                f"learning_curves_{run_dir.name}.png"
            )  # fmt: skip
            written.append(plot_learning_curves(curves, args.out / name))
    return written


if __name__ == "__main__":
    sys.exit(main())
