"""The training logs of a run: per group, fold, member and epoch, the loss and accuracy.

The trainer writes ``logs/fold{F}/{group}.csv`` (``rundir.log_path``) with the columns
``epoch, member, loss, train_accuracy, diverged``, one row per epoch and member. A sweep's
group holds its grid points' members block by block, as its score files do; here it is split
into one group per grid point, named as ``load_run`` names them.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ensembling.specs import grid_point_group
from rundir import grid_points, log_path, read_config


class LearningCurves(NamedTuple):
    """One group's training curves; NaN where an epoch was not logged (a fold not trained).

    Attributes:
      folds: the folds, in the order of the first axis.
      loss: float64 ``[folds, members, epochs]``, the mean training loss of each epoch.
      accuracy: float64 ``[folds, members, epochs]``, the training accuracy of each epoch.
      diverged: bool ``[folds, members, epochs]``: the member had diverged by that epoch.
    """

    folds: tuple[int, ...]
    loss: np.ndarray
    accuracy: np.ndarray
    diverged: np.ndarray


def _read_log(path: str, members: int, epochs: int) -> tuple[np.ndarray, ...]:
    loss = np.full((members, epochs), np.nan)
    accuracy = np.full((members, epochs), np.nan)
    diverged = np.zeros((members, epochs), bool)
    with open(path, newline="") as file:
        for row in csv.DictReader(file):
            member, epoch = int(row["member"]), int(row["epoch"]) - 1
            if 0 <= member < members and 0 <= epoch < epochs:
                loss[member, epoch] = float(row["loss"])
                accuracy[member, epoch] = float(row["train_accuracy"])
                diverged[member, epoch] = row["diverged"] == "True"
    return loss, accuracy, diverged


def load_learning_curves(run_dir: str | os.PathLike) -> dict[str, LearningCurves]:
    """Every group's curves from a run's logs, by group name (grid points split); groups
    without any log are left out.

    Raises:
      rundir.RunDirectoryError: the run's ``config.json`` cannot be read.
      ValueError: a log that is not the trainer's CSV (names the file).
    """
    config = read_config(run_dir)
    epochs = int(config.values.get("epochs") or 0)
    folds = sorted(
        int(entry.name[4:])
        for entry in (Path(run_dir) / "logs").glob("fold*")
        if entry.name[4:].isdigit()
    )
    points = grid_points(config.sweep)
    curves: dict[str, LearningCurves] = {}
    for group, per_point in config.groups.items():
        members = per_point * len(points)
        arrays = [np.full((len(folds), members, epochs), np.nan) for _ in range(2)]
        diverged = np.zeros((len(folds), members, epochs), bool)
        found = False
        for position, fold in enumerate(folds):
            path = log_path(run_dir, fold, group)
            if not os.path.isfile(path):
                continue
            try:
                loss, accuracy, fold_diverged = _read_log(path, members, epochs)
            except (KeyError, ValueError) as error:
                raise ValueError(f"{path}: not a training log ({error!r})") from None
            arrays[0][position], arrays[1][position] = loss, accuracy
            diverged[position] = fold_diverged
            found = True
        if not found:
            continue
        for index, point in enumerate(points):
            rows = slice(index * per_point, (index + 1) * per_point)
            name = grid_point_group(group, point.items()) if point else group
            curves[name] = LearningCurves(
                tuple(folds), arrays[0][:, rows], arrays[1][:, rows], diverged[:, rows]
            )
    return curves
