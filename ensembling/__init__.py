"""Ensembles of trained members: score files, sum-rule fusion, metrics, the paper's tables
and plots, and beyond the paper selection, calibration and confidence intervals.

This package is the Python API: every public name is imported from here (``__all__``);
``ensemble.py`` is only the command line over it, and docs/ensembles.md describes both. The
modules hold one concept each (``specs``, ``score_files``, ``runs``, ``fusion``, ``metrics``,
``tables``; ``selection``, ``calibration``, ``bootstrap``, ``heldout``, ``intervals``,
``logs``; ``evaluation``, ``report``, ``plots``); their other names are helpers of each
other. The trainer writes score files with ``write_score_file``; this package never imports
the trainer. The run directory's contract is ``rundir``'s, below both.

Example:
  >>> import numpy as np
  >>> import ensembling
  >>> ensembling.parse_ensemble_spec("SGD(14) + Cos#1(7)").terms
  (('sgd', 14), ('cos1', 7))
  >>> member_scores = np.array([[[0.9, 0.1]], [[0.4, 0.6]], [[0.4, 0.6]]])  # 3 members, 1 sample
  >>> ensembling.fuse(member_scores, "sum").predictions  # the sum rule: 1.7 against 1.3
  array([0])

  On a run directory that ``train.py`` wrote::

    datasets = ensembling.load_runs(["runs/default"])  # {data set: DatasetScores}
    evaluation = ensembling.evaluate_runs(datasets, ensembles=["SGD(3) + DGrad(3)"])
    print(ensembling.markdown_report(evaluation))
"""

from ensembling.bootstrap import (
    Interval,
    mean_ci,
    member_mean_ci,
    paired_difference_ci,
    resample_indices,
)
from ensembling.calibration import apply_temperature, fit_temperature
from ensembling.evaluation import Evaluation, evaluate_runs
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
from ensembling.logs import LearningCurves, load_learning_curves
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
    plot_accuracy_vs_size,
    plot_calibration,
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
    markdown_report,
    member_metrics_markdown,
    runs_markdown,
    selection_markdown,
    sweep_markdown,
    table1_markdown,
    table2_markdown,
)
from ensembling.result_files import write_tables
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
from ensembling.selection import OBJECTIVES, Selection, greedy_select
from ensembling.specs import (
    PAPER_NAMES,
    PAPER_TABLE2_ENSEMBLES,
    EnsembleSpec,
    EnsembleSpecError,
    display_name,
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

__all__ = [
    # specs: ensembles in the paper's notation, and its reporting convention
    "PAPER_NAMES",
    "PAPER_TABLE2_ENSEMBLES",
    "EnsembleSpec",
    "EnsembleSpecError",
    "display_name",
    "grid_point_group",
    "optimizer_group",
    "paper_order",
    "parse_ensemble_spec",
    "split_group",
    # score_files and runs: reading what the trainer wrote
    "OPTIONAL_KEYS",
    "SCORE_FILE_KEYS",
    "DatasetScores",
    "FoldScores",
    "GroupScores",
    "RunWarning",
    "ScoreFileError",
    "load_run",
    "load_runs",
    "merge_runs",
    "read_score_file",
    "write_score_file",
    # fusion, metrics and the paper's tables
    "ECE_BINS",
    "FUSION_RULES",
    "ClassificationMetrics",
    "EnsembleResult",
    "FusedScores",
    "LeftOutMember",
    "MemberResult",
    "ReliabilityCurve",
    "SweepRow",
    "Table1Row",
    "Table2Entry",
    "accuracy_by_ensemble_size",
    "accuracy_mean_and_std",
    "brier_score",
    "classification_metrics",
    "evaluate_ensemble",
    "expected_calibration_error",
    "fuse",
    "member_results",
    "pairwise_disagreement",
    "reliability_curve",
    "resolve_group",
    "sum_rule_accuracy",
    "sweep_table",
    "table1",
    "table2",
    "trained_group_ensembles",
    "unfusable_fold",
    # beyond the paper: selection, calibration and intervals, on arrays and on runs
    "DEFAULT_RESAMPLES",
    "OBJECTIVES",
    "CalibrationRow",
    "Interval",
    "MemberPool",
    "SelectedEnsemble",
    "Selection",
    "TableIntervals",
    "apply_temperature",
    "calibrate_ensemble",
    "calibrate_members",
    "fit_temperature",
    "greedy_ensemble",
    "greedy_select",
    "mean_ci",
    "member_mean_ci",
    "member_pool",
    "paired_difference_ci",
    "pool_ensemble",
    "resample_indices",
    "spec_weights",
    "table_intervals",
    # training logs
    "LearningCurves",
    "load_learning_curves",
    # everything at once, and its report and plots
    "Evaluation",
    "evaluate_runs",
    "calibration_markdown",
    "describe_runs",
    "differences_markdown",
    "ensemble_metrics_markdown",
    "markdown_report",
    "member_metrics_markdown",
    "runs_markdown",
    "selection_markdown",
    "sweep_markdown",
    "table1_markdown",
    "table2_markdown",
    "write_tables",
    "plot_accuracy_vs_size",
    "plot_calibration",
    "plot_hyperparameter_sweep",
    "plot_learning_curves",
    "plot_reliability",
    "size_curve_label",
    "sweep_lines",
]
