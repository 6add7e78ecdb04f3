"""Run directories: their ``config.json`` and score files, checked, pooled and merged.

The layout (the trainer writes it; score files in ``score_files``)::

  RUN_DIR/config.json                     "optimizers" ({"sgd": 14, ...}), "folds" (null or
                                          a list), "sweep" (absent, null or {} without a
                                          sweep), "dataset", "seed", ...
  RUN_DIR/scores/fold{F}/{OPTIMIZER}.npz  one per fold F (0-based) and optimizer group

A hyperparameter sweep (config.json's ``"sweep": {"learning_rate": [0.003, 0.001]}``) trains
``optimizers[group]`` members per grid point, the grid being the product of the value lists;
a group's score file holds them grid point by grid point, each member's values in its
``hyperparameter_values``. ``load_run`` splits such a group into one group per grid point,
``dgrad[learning_rate=0.003]`` (``specs.grid_point_group``), its members counted from 0:
everything downstream sees ordinary groups.

Runs of one data set can be merged, each optimizer group (or grid point) from one run. A
problem raises ``ScoreFileError`` naming the file(s) and what was expected.
"""

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ensembling.score_files import (
    PARTIAL_SUFFIX,
    FoldScores,
    ScoreFileError,
    read_score_file,
)
from ensembling.specs import (
    GROUP_NAME,
    HYPERPARAMETER_NAMES,
    format_hyperparameter,
    grid_point_group,
    paper_order,
    split_group,
)

_FOLD_DIR = re.compile(r"fold(\d+)")


def _expect(condition: bool, path: Path, problem: str) -> None:
    if not condition:
        raise ScoreFileError(f"{path}: {problem}")


class GroupScores(NamedTuple):
    """One optimizer group's members, the folds' test samples concatenated in fold order.

    Attributes:
      optimizer: the group name; for a sweep's grid point ``dgrad[learning_rate=0.003]``.
      run_dir: the run it comes from.
      scores: float32 ``[members, n_samples, n_classes]``.
      diverged: bool ``[members, len(folds)]``: the member diverged in that fold.
      member_seeds: int64 ``[members, len(folds)]``.
      hyperparameters: a grid point's ``(name, value)`` pairs in the score file's order;
        ``()`` for a group without a sweep.
    """

    optimizer: str
    run_dir: Path
    scores: np.ndarray
    diverged: np.ndarray
    member_seeds: np.ndarray
    hyperparameters: tuple[tuple[str, float], ...] = ()

    @property
    def n_members(self) -> int:
        return self.scores.shape[0]

    @property
    def base_optimizer(self) -> str:
        """The optimizer without its grid point (``"dgrad"``)."""
        return split_group(self.optimizer)[0]


class DatasetScores(NamedTuple):
    """All groups' scores on one data set, test samples pooled over the folds.

    Attributes:
      dataset: the data set's name.
      class_names: the class names, in class-index order.
      labels: int64 ``[n_samples]``.
      test_indices: int64 ``[n_samples]``, indices into the data set.
      folds: the folds trained, ascending (all of the protocol's, or those the run chose).
      sample_fold: int64 ``[n_samples]``: the fold in which the sample is test data.
      groups: the optimizer groups, in the paper's order (``specs.paper_order``).
      run_dirs: the runs merged here.
    """

    dataset: str
    class_names: tuple[str, ...]
    labels: np.ndarray
    test_indices: np.ndarray
    folds: tuple[int, ...]
    sample_fold: np.ndarray
    groups: dict[str, GroupScores]
    run_dirs: tuple[Path, ...]

    @property
    def sample_fold_position(self) -> np.ndarray:
        """int64 ``[n_samples]``: the position of each sample's fold in ``folds``."""
        return np.searchsorted(self.folds, self.sample_fold)


def _first_difference(a: np.ndarray, b: np.ndarray) -> str:
    if a.shape != b.shape:
        return f"{a.shape[0]} vs {b.shape[0]} entries"
    position = int(np.flatnonzero(a != b)[0])
    return f"first difference at position {position}: {a[position]} vs {b[position]}"


def _first(fold_files: dict[str, FoldScores]) -> FoldScores:
    return next(iter(fold_files.values()))


def _read_config(
    run_dir: Path,
) -> tuple[dict[str, int], list[int] | None, dict[str, list[float]]]:
    """Returns config.json's ``optimizers``, ``folds`` (None: all folds) and ``sweep`` ({}:
    none)."""
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise ScoreFileError(f"{config_path}: not found; is {run_dir} a train.py run directory?")
    try:
        text = config_path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ScoreFileError(f"{config_path}: cannot be read: {error}") from error
    if not text.strip():
        raise ScoreFileError(
            f"{config_path}: empty; expected the run's configuration as a JSON object "
            "(was the run interrupted while writing it?)"
        )
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise ScoreFileError(f"{config_path}: not valid JSON: {error}") from error
    if not isinstance(config, dict):
        raise ScoreFileError(f"{config_path}: expected a JSON object, got {type(config).__name__}")
    groups = config.get("optimizers")
    if not isinstance(groups, dict) or not groups:
        raise ScoreFileError(
            f"{config_path}: 'optimizers' must map group names to member counts, "
            f'e.g. {{"sgd": 14}}; got {groups!r}'
        )
    for name, count in groups.items():
        if (
            GROUP_NAME.fullmatch(name) is None
            or not isinstance(count, int)
            or isinstance(count, bool)
            or count < 1
        ):
            raise ScoreFileError(
                f"{config_path}: 'optimizers' entry {name!r}: {count!r}; expected a group name "
                "(lower case: a letter, then letters, digits, '_' or '-') and a positive "
                "member count"
            )
    folds = config.get("folds")
    if folds is not None and (
        not isinstance(folds, list)
        or not all(isinstance(f, int) and not isinstance(f, bool) and f >= 0 for f in folds)
    ):
        raise ScoreFileError(
            f"{config_path}: 'folds' must be null or a list of folds (integers >= 0), got {folds!r}"
        )
    return groups, folds, _read_sweep(config_path, config.get("sweep"))


def _read_sweep(config_path: Path, sweep) -> dict[str, list[float]]:
    """config.json's ``sweep``: name -> distinct finite values; absent, null or {}: no sweep."""
    if sweep is None:
        return {}
    if not isinstance(sweep, dict):
        raise ScoreFileError(
            f"{config_path}: 'sweep' must map hyperparameter names to value lists, e.g. "
            f'{{"learning_rate": [0.003, 0.001]}}, or be null; got {sweep!r}'
        )
    for name, values in sweep.items():
        if (
            name not in HYPERPARAMETER_NAMES
            or not isinstance(values, list)
            or not values
            or not all(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                for v in values
            )
        ):
            raise ScoreFileError(
                f"{config_path}: 'sweep' entry {name!r}: {values!r}; expected a name from "
                f"{list(HYPERPARAMETER_NAMES)} and a non-empty list of finite numbers"
            )
        formatted = [format_hyperparameter(v) for v in values]
        if len(set(formatted)) < len(formatted):
            raise ScoreFileError(
                f"{config_path}: 'sweep' entry {name!r} repeats a value (compared as "
                f"{formatted}, formatted with :g)"
            )
    return {name: [float(v) for v in values] for name, values in sweep.items()}


def _check_sweep_names(scores: FoldScores, sweep: dict[str, list[float]]) -> None:
    """A sweep's file holds the sweep's hyperparameter names; another file holds none."""
    path, names = scores.path, scores.hyperparameter_names
    if not sweep:
        _expect(
            not names,
            path,
            f"holds hyperparameters {list(names)}, but config.json has no 'sweep' (a sweep's "
            "score files hold them, other runs' files do not)",
        )
        return
    _expect(
        set(names) == set(sweep),
        path,
        f"holds hyperparameters {list(names)}; config.json's 'sweep' varies {list(sweep)} "
        "(a sweep's score files hold each member's values)",
    )


def _grid_points(
    scores: FoldScores, per_point: int, sweep: dict[str, list[float]]
) -> list[tuple[str, tuple[tuple[str, float], ...], slice]]:
    """A score file's grid points: ``(group, (name, value) pairs, members)``, in file order.

    Without a sweep the whole file is one group. With one, the members must come in blocks
    of ``per_point``, one grid point each, every grid point of the sweep once.
    """
    path, names = scores.path, scores.hyperparameter_names
    _check_sweep_names(scores, sweep)
    if not sweep:
        return [(scores.optimizer, (), slice(None))]
    allowed = {name: [format_hyperparameter(v) for v in values] for name, values in sweep.items()}
    points, starts = [], {}
    for start in range(0, scores.scores.shape[0], per_point):
        block = scores.hyperparameters[start : start + per_point]
        formatted = {tuple(map(format_hyperparameter, row)) for row in block}
        _expect(
            len(formatted) == 1,
            path,
            f"members {start}..{start + per_point - 1} must be one grid point (config.json: "
            f"{per_point} members per grid point, grid point by grid point), but hold "
            f"{sorted(formatted)} for {list(names)}",
        )
        (point,) = formatted
        for name, value in zip(names, point, strict=True):
            _expect(
                value in allowed[name],
                path,
                f"member {start}: {name}={value} is not among config.json's 'sweep' values "
                f"{allowed[name]}",
            )
        group = grid_point_group(scores.optimizer, zip(names, point, strict=True))
        _expect(
            group not in starts,
            path,
            f"grid point {group} holds members {starts.get(group)}.. and {start}..; each grid "
            f"point's {per_point} members must be consecutive",
        )
        starts[group] = start
        pairs = tuple(zip(names, map(float, block[0]), strict=True))
        points.append((group, pairs, slice(start, start + per_point)))
    return points


def load_run(run_dir: str | Path) -> DatasetScores:
    """Reads and cross-checks all score files of one run directory.

    Checks that every group of ``config.json`` has one file per trained fold (config.json's
    ``folds``, or every ``fold{F}`` present when it is null) with the configured number of
    members, that each file agrees with its place (optimizer, fold) and all name the same data
    set, that all groups of a fold share the labels, test indices and class names, that class
    names agree across folds, and that no sample is test data in two folds. The data set's name
    is the one in the score files. ``*.partial.npz`` files, the trainer's unfinished writes,
    are not score files and are not read.

    A sweep's group (config.json's ``sweep``) must hold ``optimizers[group]`` members per grid
    point, grid point by grid point, each point of the sweep once, with the sweep's names; it
    becomes one group per grid point (``specs.grid_point_group``), in the file's order.

    Raises:
      ScoreFileError: naming the file(s) and the problem.
    """
    run_dir = Path(run_dir)
    configured, configured_folds, sweep = _read_config(run_dir)
    n_points = math.prod(len(values) for values in sweep.values())
    scores_dir = run_dir / "scores"
    if not scores_dir.is_dir():
        raise ScoreFileError(f"{scores_dir}: not found; the run has written no scores")
    fold_dirs = {}
    for entry in sorted(scores_dir.iterdir()):
        if entry.name.startswith("."):
            continue
        match = _FOLD_DIR.fullmatch(entry.name)
        if match is None or not entry.is_dir():
            raise ScoreFileError(f"{entry}: unexpected; scores/ holds only fold{{F}} directories")
        fold_dirs[int(match.group(1))] = entry
    if not fold_dirs:
        raise ScoreFileError(f"{scores_dir}: holds no fold{{F}} directory")
    if configured_folds is not None and sorted(fold_dirs) != sorted(configured_folds):
        raise ScoreFileError(
            f"{scores_dir}: holds folds {sorted(fold_dirs)}; config.json's 'folds' says "
            f"{sorted(configured_folds)}"
        )

    folds: list[dict[str, FoldScores]] = []
    fold_points: list[dict[str, dict[str, tuple]]] = []
    for fold, fold_dir in sorted(fold_dirs.items()):
        present = {
            path.stem: path
            for path in fold_dir.glob("*.npz")
            if not path.name.endswith(PARTIAL_SUFFIX)
        }
        unexpected = sorted(set(present) - set(configured))
        if unexpected:
            raise ScoreFileError(
                f"{fold_dir}: score files {unexpected} for groups not in config.json's "
                f"'optimizers' {sorted(configured)}"
            )
        fold_files, points = {}, {}
        for optimizer, members in configured.items():
            path = fold_dir / f"{optimizer}.npz"
            if optimizer not in present:
                raise ScoreFileError(
                    f"{path}: missing; config.json lists {optimizer!r} with {members} members"
                )
            scores = read_score_file(path)
            _expect(
                (scores.optimizer, scores.fold) == (optimizer, fold),
                path,
                f"holds optimizer={scores.optimizer!r} fold={scores.fold}; its place says "
                f"{optimizer!r}, fold {fold}",
            )
            _check_sweep_names(scores, sweep)
            per_grid_point = (
                f" per grid point x {n_points} grid points of its 'sweep' = {members * n_points}"
                if sweep
                else ""
            )
            _expect(
                scores.scores.shape[0] == members * n_points,
                path,
                f"{scores.scores.shape[0]} members; config.json says {members}{per_grid_point}",
            )
            fold_files[optimizer] = scores
            points[optimizer] = {
                group: (pairs, members_slice)
                for group, pairs, members_slice in _grid_points(scores, members, sweep)
            }
        reference = next(iter(fold_files.values()))
        for scores in fold_files.values():
            if scores.dataset != reference.dataset:
                raise ScoreFileError(
                    f"{scores.path} and {reference.path} name different data sets: "
                    f"{scores.dataset!r} vs {reference.dataset!r}"
                )
            for key in ("test_indices", "labels"):
                ours, theirs = getattr(scores, key), getattr(reference, key)
                if ours.shape != theirs.shape or np.any(ours != theirs):
                    raise ScoreFileError(
                        f"{scores.path} and {reference.path} disagree on {key!r} "
                        f"({_first_difference(ours, theirs)}); every group of a fold must be "
                        "scored on the same test split"
                    )
        folds.append(fold_files)
        fold_points.append(points)

    reference = next(iter(folds[0].values()))
    seen_indices: dict[int, Path] = {}
    for fold_files in folds:
        fold_reference = next(iter(fold_files.values()))
        if fold_reference.dataset != reference.dataset:
            raise ScoreFileError(
                f"{fold_reference.path} and {reference.path} name different data sets: "
                f"{fold_reference.dataset!r} vs {reference.dataset!r}"
            )
        if fold_reference.class_names != reference.class_names:
            raise ScoreFileError(
                f"{fold_reference.path} and {reference.path} disagree on 'class_names': "
                f"{list(fold_reference.class_names)} vs {list(reference.class_names)}"
            )
        for index in fold_reference.test_indices.tolist():
            if index in seen_indices:
                raise ScoreFileError(
                    f"{fold_reference.path} and {seen_indices[index]} both hold test index "
                    f"{index}; each sample must be test data in exactly one fold"
                )
            seen_indices[index] = fold_reference.path

    def pooled(key: str) -> np.ndarray:
        return np.concatenate([getattr(_first(f), key) for f in folds])

    groups = {}
    for optimizer in paper_order(configured):
        per_fold = [fold_files[optimizer] for fold_files in folds]
        for group, (pairs, _) in fold_points[0][optimizer].items():
            # The same grid points in every fold (each is checked against config.json).
            slices = [points[optimizer][group][1] for points in fold_points]
            groups[group] = GroupScores(
                optimizer=group,
                run_dir=run_dir,
                scores=np.concatenate(
                    [f.scores[s] for f, s in zip(per_fold, slices, strict=True)], axis=1
                ),
                diverged=np.stack(
                    [f.diverged[s] for f, s in zip(per_fold, slices, strict=True)], axis=1
                ),
                member_seeds=np.stack(
                    [f.member_seeds[s] for f, s in zip(per_fold, slices, strict=True)], axis=1
                ),
                hyperparameters=pairs,
            )
    return DatasetScores(
        dataset=reference.dataset,
        class_names=reference.class_names,
        labels=pooled("labels"),
        test_indices=pooled("test_indices"),
        folds=tuple(sorted(fold_dirs)),
        sample_fold=np.concatenate(
            [np.full(len(f.labels), f.fold, dtype=np.int64) for f in map(_first, folds)]
        ),
        groups=groups,
        run_dirs=(run_dir,),
    )


def merge_runs(first: DatasetScores, second: DatasetScores) -> DatasetScores:
    """Merges two runs of the same data set: same folds and labels, disjoint groups.

    Raises:
      ScoreFileError: if the data sets, class names, folds or labels differ, or if an
        optimizer group is in both runs.
    """
    both = f"{', '.join(map(str, first.run_dirs))} and {', '.join(map(str, second.run_dirs))}"
    if first.dataset != second.dataset:
        raise ScoreFileError(f"{both}: different data sets {first.dataset!r}, {second.dataset!r}")
    if first.class_names != second.class_names:
        raise ScoreFileError(
            f"{both}: runs of {first.dataset!r} disagree on class names: "
            f"{list(first.class_names)} vs {list(second.class_names)}"
        )
    if first.folds != second.folds:
        raise ScoreFileError(
            f"{both}: runs of {first.dataset!r} trained different folds: {list(first.folds)} "
            f"vs {list(second.folds)}"
        )
    for key in ("sample_fold", "test_indices", "labels"):
        ours, theirs = getattr(first, key), getattr(second, key)
        if ours.shape != theirs.shape or np.any(ours != theirs):
            raise ScoreFileError(
                f"{both}: runs of {first.dataset!r} disagree on {key!r} "
                f"({_first_difference(ours, theirs)}); merged runs must use the same folds"
            )
    for optimizer in first.groups.keys() & second.groups.keys():
        raise ScoreFileError(
            f"optimizer group {optimizer!r} of data set {first.dataset!r} is in two runs: "
            f"{first.groups[optimizer].run_dir} and {second.groups[optimizer].run_dir}"
        )
    merged = {**first.groups, **second.groups}
    return first._replace(
        groups={name: merged[name] for name in paper_order(merged)},
        run_dirs=first.run_dirs + second.run_dirs,
    )


def load_runs(run_dirs: Sequence[str | Path]) -> dict[str, DatasetScores]:
    """Loads run directories; runs of one data set are merged, keyed by data set name.

    The data sets keep the order in which they first appear.
    """
    datasets: dict[str, DatasetScores] = {}
    for run_dir in run_dirs:
        run = load_run(run_dir)
        datasets[run.dataset] = (
            merge_runs(datasets[run.dataset], run) if run.dataset in datasets else run
        )
    return datasets
