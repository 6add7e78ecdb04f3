"""The command line of ``ensembling``: fuses the members of ``train.py`` runs and writes the
paper's Table 1 and Table 2 with uncertainty metrics, intervals and plots.

  python ensemble.py runs/hela runs/bg --out results/
  python ensemble.py runs/hela --ensembles "SGD(14) + DGrad(7)" sgd:7 --fusion vote

``--help`` lists the flags; docs/ensembles.md explains the outputs and the decisions behind
them. The Python API is the ``ensembling`` package: this module only parses the command line
and hands it on.
"""

import argparse
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import ensembling
from optimizer_figures import plot_cyclic_factors
from rundir import ENSEMBLE_DIR, describe_os_error


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
        "gives each reason), then each trained group (each grid point of a sweep) whole "
        "and, for runs without a sweep, all groups together. A "
        "sweep's grid point: 'DGrad[learning_rate=3e-4](3)' or dgrad@learning_rate=3e-4:3 "
        "(several hyperparameters comma-separated).",
    )
    parser.add_argument(
        "--fusion",
        choices=ensembling.FUSION_RULES,
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
        default=ensembling.DEFAULT_RESAMPLES,
        metavar="N",
        help="resamples of the test images (within folds, fixed seed) behind every "
        "accuracy's 95%% interval and every paired difference from the baseline. Default "
        f"{ensembling.DEFAULT_RESAMPLES}.",
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
        choices=ensembling.OBJECTIVES,
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
            warnings.simplefilter("always", ensembling.RunWarning)
            datasets = ensembling.load_runs(args.run_dirs)
        for warning in caught:
            print(f"ensemble.py: warning: {warning.message}", file=sys.stderr)
        evaluation = ensembling.evaluate_runs(
            datasets,
            ensembles=args.ensembles,
            rule=args.fusion,
            select=args.select == "greedy",
            objective=args.select_objective,
            max_rounds=args.select_rounds,
            calibrate=args.calibrate == "temperature",
            baseline=args.baseline or None,
            n_resamples=args.bootstrap,
        )
    except (ensembling.ScoreFileError, ensembling.EnsembleSpecError) as error:
        parser.exit(1, f"ensemble.py: error: {error}\n")
    markdown = ensembling.markdown_report(evaluation)
    print(markdown)
    try:
        written = ensembling.write_tables(args.out, evaluation, markdown)
        if not args.no_plots:
            written += _write_plots(args.out, evaluation, args.run_dirs)
    except OSError as error:
        parser.exit(1, f"ensemble.py: error: {describe_os_error(error)}\n")
    print("\nwrote " + ", ".join(str(path) for path in written), file=sys.stderr)
    return 0


def _write_plots(
    out: Path, evaluation: ensembling.Evaluation, run_dirs: Sequence[Path]
) -> list[Path]:
    """Draws the plots ``--no-plots`` skips, under the names docs/ensembles.md gives them;
    returns the files written."""
    datasets, rule = evaluation.datasets, evaluation.rule
    written = [
        ensembling.plot_accuracy_vs_size(datasets, out / "accuracy_vs_size.png", rule),
        ensembling.plot_reliability(datasets, out / "reliability.png", rule),
        # The paper's Figure 1 is of the optimizers, not of the runs; written beside the
        # plots as it always was.
        plot_cyclic_factors(out / "cyclic_factors.png"),
    ]
    if evaluation.sweep_rows:
        written.append(
            ensembling.plot_hyperparameter_sweep(
                evaluation.sweep_rows, out / "hyperparameter_sweep.png", rule
            )
        )
    if evaluation.calibration:
        written.append(ensembling.plot_calibration(evaluation.calibration, out / "calibration.png"))
    for run_dir in run_dirs:
        curves = ensembling.load_learning_curves(run_dir)
        if curves:
            name = "learning_curves.png" if len(run_dirs) == 1 else (
                f"learning_curves_{run_dir.name}.png"
            )  # fmt: skip
            written.append(ensembling.plot_learning_curves(curves, out / name))
    return written


if __name__ == "__main__":
    sys.exit(main())
