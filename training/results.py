"""What a run returns: each group's accuracies pooled over its folds, and their summary."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from ensembling.fusion import sum_rule_accuracy
from ensembling.tables import accuracy_mean_and_std
from training.fold import Fold, FoldOutcome


@dataclasses.dataclass
class GroupResult:
    """One optimizer group's outcome over the trained folds.

    Attributes:
      member_accuracy: each member's accuracy on the test splits of all trained folds pooled.
      fused_accuracy: the sum-rule accuracy of the group's non-diverged members.
      diverged: indices of members whose loss became NaN or inf in any fold.
      seconds: wall time of the folds the group trained in. The groups of a fold train
        side by side, so they share these seconds; the first fold's include compiling.
      scores: the members' test scores of all trained folds [members, n, classes].
      valid: bool [members, n], False in the folds where a member diverged.
    """

    member_accuracy: np.ndarray
    fused_accuracy: float
    diverged: list[int]
    seconds: float
    scores: np.ndarray | None = dataclasses.field(repr=False, default=None)
    valid: np.ndarray | None = dataclasses.field(repr=False, default=None)


@dataclasses.dataclass
class TrainResult:
    """What :func:`train_ensemble` returns; the score files in ``run_dir`` hold the rest."""

    run_dir: str
    strategy: str
    step_loop: str
    groups: dict[str, GroupResult]  # by group, or by group and grid point for a sweep
    fused_accuracy: float  # all non-diverged members of all groups, sum rule


def group_result(
    outcomes: Sequence[FoldOutcome], folds: Sequence[Fold], labels: np.ndarray, seconds: float
) -> GroupResult:
    """Pooled accuracies of members over the folds; a member diverged in a fold is left out
    of that fold's fusion, as ``ensemble.py`` leaves it out."""
    scores = np.concatenate([o.scores for o in outcomes], axis=1)
    fold_sizes = [len(fold.test_indices) for fold in folds]
    valid = np.concatenate(
        [
            np.repeat(~o.diverged[:, None], size, 1)
            for o, size in zip(outcomes, fold_sizes, strict=True)
        ],
        axis=1,
    )
    diverged = np.any([o.diverged for o in outcomes], axis=0)
    return GroupResult(
        member_accuracy=(scores.argmax(-1) == labels).mean(-1),
        fused_accuracy=sum_rule_accuracy(scores, labels, valid),
        diverged=np.flatnonzero(diverged).tolist(),
        seconds=seconds,
        scores=scores,
        valid=valid,
    )


def format_summary(result: TrainResult) -> str:
    """A Markdown table of stand-alone and fused accuracies per group, and a note on what the
    seconds measure."""
    lines = [
        "| group | members | stand-alone accuracy (mean ± std) | fused (sum rule) | "
        "diverged | seconds |",
        "|---|---|---|---|---|---|",
    ]
    for group, outcome in result.groups.items():
        healthy = np.delete(outcome.member_accuracy, outcome.diverged)
        mean, std = accuracy_mean_and_std(healthy)
        spread = "n/a" if math.isnan(std) else f"{100 * std:.2f}"  # one member: no spread
        stand_alone = f"{100 * mean:.2f} ± {spread}" if healthy.size else "n/a"
        lines.append(
            f"| {group} | {len(outcome.member_accuracy)} | {stand_alone} | "
            f"{100 * outcome.fused_accuracy:.2f} | {outcome.diverged or '-'} | "
            f"{outcome.seconds:.0f} |"
        )
    members = sum(len(g.member_accuracy) - len(g.diverged) for g in result.groups.values())
    lines.append(f"| all | {members} | | {100 * result.fused_accuracy:.2f} | | |")
    lines.append(
        "seconds: wall time of the folds each group trained in; the groups of a fold train "
        "side by side and share it, and the first fold's include compiling"
    )
    return "\n".join(lines)
