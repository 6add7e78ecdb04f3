"""Plots: accuracy against ensemble size, reliability diagrams, hyperparameter sweeps,
learning curves, calibration. The paper's Figure 1 draws the optimizers, not an ensemble:
it is ``optimizer_figures``'s.

matplotlib's object API on the Agg canvas: no pyplot, no global backend switch, so importing
this in a notebook changes nothing.
"""

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ensembling.heldout import CalibrationRow
from ensembling.logs import LearningCurves
from ensembling.metrics import ECE_BINS, reliability_curve
from ensembling.runs import DatasetScores
from ensembling.specs import EnsembleSpec, display_name, format_hyperparameter
from ensembling.tables import (
    SweepRow,
    accuracy_by_ensemble_size,
    evaluate_ensemble,
    unfusable_fold,
)

# Swept hyperparameters spanning orders of magnitude: a log x axis (when every value is > 0).
LOG_SCALE_HYPERPARAMETERS = ("learning_rate", "eps", "weight_decay")


def _agg_figure(width: float, height: float):
    """An empty figure (inches) on its own Agg canvas, laid out by matplotlib's constrained
    layout."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _new_figure(n_panels: int, height: float = 3.2):
    """A figure of ``n_panels`` side by side, and their axes."""
    figure = _agg_figure(3.6 * n_panels + 0.8, height)
    return figure, figure.subplots(1, n_panels, squeeze=False)[0]


def size_curve_label(optimizer: str, accuracies: np.ndarray) -> str:
    """The legend entry of one group's curve, noting sizes that could not be fused.

    ``accuracies`` is ``accuracy_by_ensemble_size``'s result: NaN for sizes ``k = 1 .. j``
    whose members all diverged in some fold.
    """
    name = display_name(optimizer)
    skipped = np.flatnonzero(np.isnan(accuracies)) + 1
    if skipped.size == 0:
        return name
    sizes = f"k={skipped[0]}" if skipped.size == 1 else f"k={skipped[0]}..{skipped[-1]}"
    return f"{name} ({sizes} skipped: all diverged in a fold)"


def plot_accuracy_vs_size(
    datasets: Mapping[str, DatasetScores], path: str | Path, rule: str = "sum"
) -> Path:
    """Fused accuracy of the first ``k`` members against ``k``, one line per optimizer.

    Sizes that cannot be fused (all of the first ``k`` members diverged in some fold) have
    no point; the group's legend entry names them (``size_curve_label``).
    """
    from matplotlib.ticker import MaxNLocator

    figure, axes = _new_figure(len(datasets))
    for axis, data in zip(axes, datasets.values(), strict=True):
        for optimizer in data.groups:
            accuracies = accuracy_by_ensemble_size(data, optimizer, rule)
            sizes = np.arange(1, len(accuracies) + 1)
            label = size_curve_label(optimizer, accuracies)
            axis.plot(sizes, 100 * accuracies, marker="o", ms=3, label=label)
        largest = max(group.n_members for group in data.groups.values())
        # Every size on the axis, skipped ones included, so a gap reads as a gap.
        axis.set(
            title=data.dataset,
            xlabel="ensemble size k (first k members)",
            xlim=(0.5, largest + 0.5),
        )
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
    axes[0].set_ylabel(f"accuracy % ({rule} rule)")
    axes[-1].legend(fontsize="small")
    figure.savefig(path, dpi=90)
    return Path(path)


def plot_reliability(
    datasets: Mapping[str, DatasetScores],
    path: str | Path,
    rule: str = "sum",
    n_bins: int = ECE_BINS,
) -> Path:
    """Reliability diagram of each optimizer's whole group fused, one panel per data set.

    Each point is a non-empty confidence bin: its accuracy against its mean confidence; the
    diagonal is perfect calibration; the legend gives each ensemble's ECE. A group whose
    members all diverged in some fold has no fused scores: its legend entry says so.
    """
    figure, axes = _new_figure(len(datasets), height=3.6)
    for axis, data in zip(axes, datasets.values(), strict=True):
        axis.plot([0, 1], [0, 1], color="gray", lw=1, ls="--")
        for optimizer, group in data.groups.items():
            spec = EnsembleSpec(((optimizer, group.n_members),))
            fold = unfusable_fold(data, spec)
            if fold is not None:
                axis.plot(
                    [], [], marker="o", ms=3, label=f"{spec.label}: all diverged in fold {fold}"
                )
                continue
            result = evaluate_ensemble(data, spec, rule)
            curve = reliability_curve(
                result.fused.probabilities, data.labels, n_bins, result.fused.predictions
            )
            filled = curve.count > 0
            axis.plot(
                curve.confidence[filled],
                curve.accuracy[filled],
                marker="o",
                ms=3,
                label=f"{result.spec.label} ECE {result.metrics.ece:.3f}",
            )
        axis.set(title=data.dataset, xlabel="confidence", xlim=(0, 1), ylim=(0, 1), aspect="equal")
        axis.grid(alpha=0.3)
        axis.legend(fontsize="x-small")
    axes[0].set_ylabel(f"accuracy ({rule} rule, {n_bins} bins)")
    figure.savefig(path, dpi=90)
    return Path(path)


def sweep_lines(
    rows: Sequence[SweepRow], name: str
) -> dict[tuple[str, str, tuple[tuple[str, float], ...]], list[SweepRow]]:
    """The lines of one panel of ``plot_hyperparameter_sweep``: the grid points that vary
    ``name``, keyed by (data set, optimizer, the other hyperparameters' values), each line's
    points sorted by the value of ``name``."""
    lines: dict[tuple[str, str, tuple[tuple[str, float], ...]], list[SweepRow]] = {}
    for row in rows:
        values = dict(row.hyperparameters)
        if name not in values:
            continue
        others = tuple((n, v) for n, v in row.hyperparameters if n != name)
        lines.setdefault((row.dataset, row.optimizer, others), []).append(row)
    return {
        key: sorted(points, key=lambda row: dict(row.hyperparameters)[name])
        for key, points in lines.items()
    }


def plot_hyperparameter_sweep(
    rows: Sequence[SweepRow], path: str | Path, rule: str = "sum"
) -> Path:
    """Stand-alone and fused accuracy against each swept hyperparameter.

    One panel per data set and swept hyperparameter; one colour per optimizer (and per value
    of the other swept hyperparameters, named in the legend), fused accuracy solid, the mean
    stand-alone accuracy of the grid point's non-diverged members dashed. A grid point where
    members diverged is marked ``x`` on both lines; where no accuracy is left (every member
    diverged) its points are missing and the ``x`` sits at the bottom of the panel. The x axis
    is logarithmic for ``LOG_SCALE_HYPERPARAMETERS`` when every value is positive.

    Args:
      rows: ``sweep_table``'s rows (at least one).
      path: the PNG to write.
      rule: the fusion rule (the y label names it).
    """
    from matplotlib.lines import Line2D
    from matplotlib.ticker import NullLocator

    panels = [
        (dataset, name)
        for dataset in dict.fromkeys(row.dataset for row in rows)
        for name in dict.fromkeys(
            n for row in rows if row.dataset == dataset for n, _ in row.hyperparameters
        )
    ]
    if not panels:
        raise ValueError("no grid points to plot: no run has a hyperparameter sweep")
    figure, axes = _new_figure(len(panels), height=4.4)
    for axis, (dataset, name) in zip(axes, panels, strict=True):
        lines = sweep_lines([row for row in rows if row.dataset == dataset], name)
        any_diverged = False
        for (_, optimizer, others), points in lines.items():
            x = np.array([dict(row.hyperparameters)[name] for row in points])
            fused = 100 * np.array([row.fused_accuracy for row in points])
            alone = 100 * np.array([row.accuracy_mean for row in points])
            label = display_name(optimizer) + "".join(
                f", {n}={format_hyperparameter(v)}" for n, v in others
            )
            (line,) = axis.plot(x, fused, marker="o", ms=4, label=f"{label} fused")
            color = line.get_color()
            axis.plot(x, alone, marker="o", ms=3, ls="--", color=color, label=f"{label} alone")
            diverged = np.array([bool(row.diverged_members) for row in points])
            any_diverged |= bool(diverged.any())
            for values in (fused, alone):
                shown = diverged & np.isfinite(values)
                axis.plot(x[shown], values[shown], ls="", marker="x", ms=9, mew=2, color=color)
            missing = diverged & ~(np.isfinite(fused) & np.isfinite(alone))
            axis.plot(
                x[missing],
                np.full(missing.sum(), 0.03),
                ls="",
                marker="x",
                ms=9,
                mew=2,
                color=color,
                transform=axis.get_xaxis_transform(),
                clip_on=False,
            )
        every_x = sorted({dict(row.hyperparameters)[name] for pts in lines.values() for row in pts})
        if name in LOG_SCALE_HYPERPARAMETERS and every_x[0] > 0:
            axis.set_xscale("log")
        # Ticks at the swept values only, labelled as the grid points are named.
        axis.set_xticks(every_x, labels=[format_hyperparameter(v) for v in every_x])
        axis.xaxis.set_minor_locator(NullLocator())
        axis.set(title=f"{dataset}: {name}", xlabel=name)
        axis.grid(alpha=0.3)
        handles, _ = axis.get_legend_handles_labels()
        if any_diverged:
            handles.append(
                Line2D(
                    [],
                    [],
                    ls="",
                    marker="x",
                    ms=9,
                    mew=2,
                    color="gray",
                    label="members diverged (bottom: none left)",
                )
            )
        axis.legend(
            handles=handles,
            fontsize="x-small",
            loc="upper center",
            bbox_to_anchor=(0.5, -0.2),
            ncols=2,
        )
    axes[0].set_ylabel(f"accuracy % (fused: {rule} rule; alone: mean)")
    figure.savefig(path, dpi=90)
    return Path(path)


def plot_learning_curves(curves: Mapping[str, LearningCurves], path: str | Path) -> Path:
    """Training loss (top) and accuracy (bottom) per epoch, one column per group.

    Each member of each fold is a thin line, the mean over the members that had not diverged
    is bold, and a member's last finite epoch before it diverged is marked with an ``x``: the
    Adam variants' instability, and how the members of a group differ, can be seen.
    """
    figure = _agg_figure(3.2 * len(curves) + 0.8, 5.6)
    axes = figure.subplots(2, len(curves), squeeze=False, sharex="col")
    for column, (group, curve) in enumerate(curves.items()):
        epochs = np.arange(1, curve.loss.shape[-1] + 1)
        for row, (values, label) in enumerate(
            ((curve.loss, "training loss"), (curve.accuracy, "training accuracy"))
        ):
            axis = axes[row, column]
            lines = values.reshape(-1, len(epochs))
            broken = curve.diverged.reshape(-1, len(epochs))
            color = f"C{column % 10}"
            for line, diverged in zip(lines, broken, strict=True):
                axis.plot(epochs, np.where(diverged, np.nan, line), color=color, lw=0.6, alpha=0.4)
                if diverged.any():
                    finite = np.flatnonzero(~diverged & np.isfinite(line))
                    last = finite[-1] if finite.size else 0
                    axis.plot(epochs[last], line[last] if finite.size else np.nan,
                              marker="x", color="black", ms=6)  # fmt: skip
            with np.errstate(invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # an epoch with no member left
                mean = np.nanmean(np.where(broken, np.nan, lines), axis=0)
            axis.plot(epochs, mean, color=color, lw=2.2, label="mean")
            axis.grid(alpha=0.3)
            if row == 0:
                diverged_members = int(broken.any(axis=1).sum())
                title = display_name(group)
                if diverged_members:
                    title += f" ({diverged_members} diverged, x)"
                axis.set_title(title, fontsize="small")
                if curve.loss[np.isfinite(curve.loss)].min(initial=1.0) > 0:
                    axis.set_yscale("log")
            else:
                axis.set_xlabel("epoch")
            if column == 0:
                axis.set_ylabel(label)
    figure.savefig(path, dpi=90)
    return Path(path)


def plot_calibration(
    rows: Sequence[CalibrationRow], path: str | Path, n_bins: int = ECE_BINS
) -> Path:
    """Reliability diagram of each ensemble before and after temperature scaling, one panel
    per ensemble (``heldout.calibrate_ensemble``'s rows; member rows are skipped)."""
    rows = [row for row in rows if row.kind == "ensemble"]
    columns = min(4, max(1, len(rows)))
    grid_rows = -(-len(rows) // columns)
    figure = _agg_figure(3.2 * columns + 0.6, 3.2 * grid_rows + 0.4)
    axes = figure.subplots(grid_rows, columns, squeeze=False).ravel()
    for axis, row in zip(axes, rows, strict=False):
        axis.plot([0, 1], [0, 1], color="gray", lw=1, ls="--")
        for probabilities, metrics, label in (
            (row.probabilities_before, row.before, "before"),
            (row.probabilities_after, row.after, "after"),
        ):
            curve = reliability_curve(probabilities, row.labels, n_bins)
            filled = curve.count > 0
            axis.plot(curve.confidence[filled], curve.accuracy[filled], marker="o", ms=3,
                      label=f"{label}: ECE {metrics.ece:.3f}, NLL {metrics.nll:.3f}")  # fmt: skip
        axis.set(xlim=(0, 1), ylim=(0, 1), aspect="equal", xlabel="confidence")
        axis.set_title(f"{row.dataset}: {row.name}", fontsize="small")
        axis.grid(alpha=0.3)
        axis.legend(fontsize="x-small")
    for axis in axes[len(rows) :]:
        axis.set_visible(False)
    figure.savefig(path, dpi=90)
    return Path(path)
