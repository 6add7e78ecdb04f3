"""Run directories read for ensembling: their score files checked, pooled and merged.

The layout, ``config.json`` and the grid's member order are ``rundir``'s. A hyperparameter
sweep trains ``optimizers[group]`` members per grid point; a group's score file holds them
grid point by grid point, each member's values in its ``hyperparameter_values``.
``load_run`` splits such a group into one group per grid point, ``dgrad[learning_rate=0.003]``
(``specs.grid_point_group``), its members counted from 0: everything downstream sees ordinary
groups.

A run's score files must carry the digest of its ``config.json`` (``rundir``'s provenance);
a run written before provenance existed is read with a ``RunWarning``, as is one whose
planned folds are not all trained yet (they are named in ``DatasetScores.missing_folds``).
Runs of one data set can be merged, each optimizer group (or grid point) from one run. A
problem raises ``ScoreFileError`` naming the file(s) and what was expected.
"""

import math
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ensembling.score_files import (
    PARTIAL_SUFFIX,
    FoldScores,
    ScoreFileError,
    expect,
    read_score_file,
)
from ensembling.specs import grid_point_group, paper_order, split_group
from rundir import (
    SCORES_DIR,
    RunConfig,
    RunDirectoryError,
    canonical_names,
    format_hyperparameter,
    read_config,
    scores_path,
)

_FOLD_DIR = re.compile(r"fold(\d+)")


class RunWarning(UserWarning):
    """A run directory that is read, but whose tables the reader should know more about."""


class GroupScores(NamedTuple):
    """One optimizer group's members, the folds' test samples concatenated in fold order.

    Attributes:
      optimizer: the group name; for a sweep's grid point ``dgrad[learning_rate=0.003]``.
      run_dir: the run it comes from.
      scores: float32 ``[members, n_samples, n_classes]``.
      diverged: bool ``[members, len(folds)]``: the member diverged in that fold.
      member_seeds: int64 ``[members, len(folds)]``.
      hyperparameters: a grid point's ``(name, value)`` pairs in the grid's order; ``()``
        for a group without a sweep.
      validation_scores: per fold (in ``folds`` order), float32 ``[members, n_val, n_classes]``
        on that fold's held-out validation rows; None for a run without a validation split.
    """

    optimizer: str
    run_dir: Path
    scores: np.ndarray
    diverged: np.ndarray
    member_seeds: np.ndarray
    hyperparameters: tuple[tuple[str, float], ...] = ()
    validation_scores: tuple[np.ndarray, ...] | None = None

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
      missing_folds: planned folds without scores yet (a run not finished), ascending.
      validation_labels: per fold, int64 ``[n_val]`` labels of the held-out validation rows;
        None for a run without a validation split (``train.py --validation-fraction``), or
        for merged runs that did not hold out the same rows.
      validation_indices: per fold, int64 ``[n_val]``: those rows' indices into the data set
        (None where ``validation_labels`` is).
      validation_mismatch: why merged runs share no validation rows (None when they do, or
        when none of them held any out).
    """

    dataset: str
    class_names: tuple[str, ...]
    labels: np.ndarray
    test_indices: np.ndarray
    folds: tuple[int, ...]
    sample_fold: np.ndarray
    groups: dict[str, GroupScores]
    run_dirs: tuple[Path, ...]
    missing_folds: tuple[int, ...] = ()
    validation_labels: tuple[np.ndarray, ...] | None = None
    validation_indices: tuple[np.ndarray, ...] | None = None
    validation_mismatch: str | None = None

    @property
    def sample_fold_position(self) -> np.ndarray:
        """int64 ``[n_samples]``: the position of each sample's fold in ``folds``."""
        return np.searchsorted(self.folds, self.sample_fold)


class _Fold(NamedTuple):
    """One fold's score files, checked against ``config.json`` and against each other.

    Attributes:
      fold: the fold number.
      files: by configured group, in ``config.json``'s order.
      grid_points: by configured group, each grid point's group name (the group itself
        without a sweep) -> its ``(name, value)`` pairs and its members in the file.
    """

    fold: int
    files: dict[str, FoldScores]
    grid_points: dict[str, dict[str, tuple[tuple[tuple[str, float], ...], slice]]]

    @property
    def reference(self) -> FoldScores:
        """The fold's first file, which every other file of the fold agrees with."""
        return next(iter(self.files.values()))


def load_run(run_dir: str | Path) -> DatasetScores:
    """Reads and cross-checks all score files of one run directory.

    Checks that every group of ``config.json`` has one file per trained fold (every
    ``fold{F}`` present, each one the run planned) with the configured number of members,
    that each file carries the run's settings digest (when the run has provenance), agrees
    with its place (optimizer, fold) and all name the same data set, that all groups of a
    fold share the labels, test indices and class names, that class names agree across
    folds, and that no sample is test data in two folds. The data set's name is the one in
    the score files. ``*.partial.npz`` files, the trainer's unfinished writes,
    are not score files and are not read. Planned folds without scores are warned about
    (``RunWarning``) and listed in ``missing_folds``.

    A sweep's group (config.json's ``sweep``) must hold ``optimizers[group]`` members per grid
    point, grid point by grid point, each point of the sweep once, with the sweep's names; it
    becomes one group per grid point (``specs.grid_point_group``), in the file's order.

    Raises:
      ScoreFileError: naming the file(s) and the problem.
    """
    run_dir = Path(run_dir)
    config = _read_config(run_dir)
    fold_dirs = _fold_directories(run_dir / SCORES_DIR)
    missing_folds = _missing_folds(config, fold_dirs, run_dir / SCORES_DIR)
    folds = [_read_fold(run_dir, config, fold, fold_dir) for fold, fold_dir in fold_dirs.items()]
    _check_folds_agree(folds)
    return _pooled_run(run_dir, folds, missing_folds)


def _read_config(run_dir: Path) -> RunConfig:
    """The run's checked ``config.json``; warns when it cannot vouch for its score files."""
    try:
        config = read_config(run_dir)
    except RunDirectoryError as error:
        raise ScoreFileError(str(error)) from None
    if config.provenance is None:
        warnings.warn(
            f"{config.path}: written without provenance (by a trainer before it existed); "
            "its score files are read as they are, unchecked against the settings",
            RunWarning,
            stacklevel=3,
        )
    elif config.stale_settings():
        warnings.warn(
            f"{config.path}: its settings were changed after the run wrote them (they no "
            "longer match the digest written with them); the tables describe the scores, "
            "which were trained with the original settings",
            RunWarning,
            stacklevel=3,
        )
    return config


def _fold_directories(scores_dir: Path) -> dict[int, Path]:
    """``scores/``'s ``fold{F}`` directories by fold, ascending; anything else is an error."""
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
    return dict(sorted(fold_dirs.items()))


def _missing_folds(
    config: RunConfig, fold_dirs: Mapping[int, Path], scores_dir: Path
) -> tuple[int, ...]:
    """The planned folds without scores, warned about; a fold the run did not plan is an error."""
    planned = config.folds
    if config.provenance is not None:
        planned = config.provenance.planned_folds
    if planned is None:
        return ()
    extra = sorted(set(fold_dirs) - set(planned))
    if extra:
        raise ScoreFileError(
            f"{scores_dir}: holds folds {sorted(fold_dirs)}; config.json plans folds "
            f"{sorted(planned)}"
        )
    missing_folds = tuple(sorted(set(planned) - set(fold_dirs)))
    if missing_folds:
        warnings.warn(
            f"{scores_dir}: folds {list(missing_folds)} of the planned {sorted(planned)} "
            "have no scores (the run has not finished them); the tables pool the folds "
            f"{sorted(fold_dirs)} only",
            RunWarning,
            stacklevel=3,
        )
    return missing_folds


def _read_fold(run_dir: Path, config: RunConfig, fold: int, fold_dir: Path) -> _Fold:
    """Every configured group's score file of one fold, each checked against ``config.json``,
    all agreeing on the data set, the test split and the validation rows."""
    present = {
        path.stem: path for path in fold_dir.glob("*.npz") if not path.name.endswith(PARTIAL_SUFFIX)
    }
    unexpected = sorted(set(present) - set(config.groups))
    if unexpected:
        raise ScoreFileError(
            f"{fold_dir}: score files {unexpected} for groups not in config.json's "
            f"'optimizers' {sorted(config.groups)}"
        )
    files, grid_points = {}, {}
    for optimizer, members in config.groups.items():
        path = Path(scores_path(run_dir, fold, optimizer))
        if optimizer not in present:
            raise ScoreFileError(
                f"{path}: missing; config.json lists {optimizer!r} with {members} members"
            )
        files[optimizer] = scores = _read_group_file(path, config, optimizer, fold)
        grid_points[optimizer] = {
            group: (pairs, members_slice)
            for group, pairs, members_slice in _grid_points(scores, members, config.sweep or {})
        }
    checked = _Fold(fold, files, grid_points)
    for scores in files.values():
        where = f"{scores.path} and {checked.reference.path}"
        _require_agreement(
            scores,
            checked.reference,
            ("dataset", "class_names", "test_indices", "labels"),
            where=where,
            why="every group of a fold must be scored on the same test split",
        )
        _require_agreement(
            scores,
            checked.reference,
            ("validation_indices", "validation_labels"),
            where=where,
            why="every group of a fold must hold out the same validation rows",
        )
    return checked


def _read_group_file(path: Path, config: RunConfig, optimizer: str, fold: int) -> FoldScores:
    """One group's score file of one fold, checked against its place and ``config.json``: the
    optimizer and fold, the sweep's names, the settings digest and the member count."""
    scores = read_score_file(path)
    expect(
        (scores.optimizer, scores.fold) == (optimizer, fold),
        path,
        f"holds optimizer={scores.optimizer!r} fold={scores.fold}; its place says "
        f"{optimizer!r}, fold {fold}",
    )
    sweep = config.sweep or {}
    _check_sweep_names(scores, sweep)
    if config.provenance is not None:
        digest = config.provenance.digest
        expect(
            scores.config_digest == digest,
            path,
            f"was trained with settings of digest {scores.config_digest}; this run's "
            f"config.json has {digest}: the file does not belong to this run",
        )
    members = config.groups[optimizer]
    n_points = math.prod(len(values) for values in sweep.values())
    per_grid_point = (
        f" per grid point x {n_points} grid points of its 'sweep' = {members * n_points}"
        if sweep
        else ""
    )
    expect(
        scores.scores.shape[0] == members * n_points,
        path,
        f"{scores.scores.shape[0]} members; config.json says {members}{per_grid_point}",
    )
    return scores


def _check_sweep_names(scores: FoldScores, sweep: Mapping[str, Sequence[float]]) -> None:
    """A sweep's file holds the sweep's hyperparameter names; another file holds none."""
    path, names = scores.path, scores.hyperparameter_names
    if not sweep:
        expect(
            not names,
            path,
            f"holds hyperparameters {list(names)}, but config.json has no 'sweep' (a sweep's "
            "score files hold them, other runs' files do not)",
        )
        return
    expect(
        set(names) == set(sweep),
        path,
        f"holds hyperparameters {list(names)}; config.json's 'sweep' varies {list(sweep)} "
        "(a sweep's score files hold each member's values)",
    )


def _grid_points(
    scores: FoldScores, per_point: int, sweep: Mapping[str, Sequence[float]]
) -> list[tuple[str, tuple[tuple[str, float], ...], slice]]:
    """A score file's grid points: ``(group, (name, value) pairs, members)``, in file order,
    the pairs in the grid's canonical order (``rundir.SWEEPABLE``).

    Without a sweep the whole file is one group. With one, the members must come in blocks
    of ``per_point``, one grid point each, every grid point of the sweep once (the file's
    hyperparameter names are the sweep's: ``_check_sweep_names`` has checked them).
    """
    path, names = scores.path, scores.hyperparameter_names
    if not sweep:
        return [(scores.optimizer, (), slice(None))]
    allowed = {name: [format_hyperparameter(v) for v in values] for name, values in sweep.items()}
    points, starts = [], {}
    for start in range(0, scores.scores.shape[0], per_point):
        block = scores.hyperparameters[start : start + per_point]
        formatted = {tuple(map(format_hyperparameter, row)) for row in block}
        expect(
            len(formatted) == 1,
            path,
            f"members {start}..{start + per_point - 1} must be one grid point (config.json: "
            f"{per_point} members per grid point, grid point by grid point), but hold "
            f"{sorted(formatted)} for {list(names)}",
        )
        (point,) = formatted
        for name, value in zip(names, point, strict=True):
            expect(
                value in allowed[name],
                path,
                f"member {start}: {name}={value} is not among config.json's 'sweep' values "
                f"{allowed[name]}",
            )
        group = grid_point_group(scores.optimizer, zip(names, point, strict=True))
        expect(
            group not in starts,
            path,
            f"grid point {group} holds members {starts.get(group)}.. and {start}..; each grid "
            f"point's {per_point} members must be consecutive",
        )
        starts[group] = start
        values = dict(zip(names, map(float, block[0]), strict=True))
        pairs = tuple((name, values[name]) for name in canonical_names(values))
        points.append((group, pairs, slice(start, start + per_point)))
    return points


def _check_folds_agree(folds: Sequence[_Fold]) -> None:
    """The folds name one data set and one list of class names, and no sample is test data
    in two of them."""
    first = folds[0].reference
    seen_indices: dict[int, Path] = {}
    for fold in folds:
        _require_agreement(
            fold.reference,
            first,
            ("dataset", "class_names"),
            where=f"{fold.reference.path} and {first.path}",
        )
        for index in fold.reference.test_indices.tolist():
            if index in seen_indices:
                raise ScoreFileError(
                    f"{fold.reference.path} and {seen_indices[index]} both hold test index "
                    f"{index}; each sample must be test data in exactly one fold"
                )
            seen_indices[index] = fold.reference.path


def _pooled_run(
    run_dir: Path, folds: Sequence[_Fold], missing_folds: tuple[int, ...]
) -> DatasetScores:
    """The run with its folds' test samples concatenated in fold order."""
    references = [fold.reference for fold in folds]
    has_validation = all(scores.validation_scores is not None for scores in references)
    return DatasetScores(
        dataset=references[0].dataset,
        class_names=references[0].class_names,
        labels=np.concatenate([scores.labels for scores in references]),
        test_indices=np.concatenate([scores.test_indices for scores in references]),
        folds=tuple(fold.fold for fold in folds),
        sample_fold=np.concatenate(
            [np.full(len(scores.labels), scores.fold, dtype=np.int64) for scores in references]
        ),
        groups=_pooled_groups(run_dir, folds, has_validation),
        run_dirs=(run_dir,),
        missing_folds=missing_folds,
        validation_labels=(
            tuple(scores.validation_labels for scores in references) if has_validation else None
        ),
        validation_indices=(
            tuple(scores.validation_indices for scores in references) if has_validation else None
        ),
    )


def _pooled_groups(
    run_dir: Path, folds: Sequence[_Fold], has_validation: bool
) -> dict[str, GroupScores]:
    """Every group (a sweep's: every grid point) with its folds' members side by side and its
    test samples concatenated in fold order; groups in the paper's order."""
    groups = {}
    for optimizer in paper_order(folds[0].files):
        per_fold = [fold.files[optimizer] for fold in folds]
        for group, (pairs, _) in folds[0].grid_points[optimizer].items():
            # The same grid points in every fold (each is checked against config.json).
            members = [fold.grid_points[optimizer][group][1] for fold in folds]
            in_folds = list(zip(per_fold, members, strict=True))
            groups[group] = GroupScores(
                optimizer=group,
                run_dir=run_dir,
                scores=np.concatenate([f.scores[m] for f, m in in_folds], axis=1),
                diverged=np.stack([f.diverged[m] for f, m in in_folds], axis=1),
                member_seeds=np.stack([f.member_seeds[m] for f, m in in_folds], axis=1),
                hyperparameters=pairs,
                validation_scores=(
                    tuple(f.validation_scores[m] for f, m in in_folds) if has_validation else None
                ),
            )
    return groups


def _require_agreement(
    first: FoldScores | DatasetScores,
    second: FoldScores | DatasetScores,
    keys: Sequence[str],
    *,
    where: str,
    why: str = "",
) -> None:
    """The one check that two score files, or two runs, agree on ``keys``, in order: the data
    set's name, the class names, or a per-sample array (a missing one is empty).

    Raises:
      ScoreFileError: ``"{where} ..."``, naming the first key they disagree on and, for an
        array, its first difference and ``why`` it must agree.
    """
    for key in keys:
        ours, theirs = getattr(first, key), getattr(second, key)
        if key == "dataset":
            if ours != theirs:
                raise ScoreFileError(f"{where} name different data sets: {ours!r} vs {theirs!r}")
        elif key == "class_names":
            if ours != theirs:
                raise ScoreFileError(
                    f"{where} disagree on 'class_names': {list(ours)} vs {list(theirs)}"
                )
        else:
            ours = np.zeros(0, np.int64) if ours is None else ours
            theirs = np.zeros(0, np.int64) if theirs is None else theirs
            if ours.shape != theirs.shape or np.any(ours != theirs):
                raise ScoreFileError(
                    f"{where} disagree on {key!r} ({_first_difference(ours, theirs)}); {why}"
                )


def _first_difference(a: np.ndarray, b: np.ndarray) -> str:
    if a.shape != b.shape:
        return f"{a.shape[0]} vs {b.shape[0]} entries"
    position = int(np.flatnonzero(a != b)[0])
    return f"first difference at position {position}: {a[position]} vs {b[position]}"


def merge_runs(first: DatasetScores, second: DatasetScores) -> DatasetScores:
    """Merges two runs of the same data set: same folds and labels, disjoint groups.

    Raises:
      ScoreFileError: if the data sets, class names, folds or labels differ, or if an
        optimizer group is in both runs.
    """
    both = f"{', '.join(map(str, first.run_dirs))} and {', '.join(map(str, second.run_dirs))}"
    runs = f"{both}: runs of {first.dataset!r}"
    _require_agreement(first, second, ("dataset",), where=both)
    _require_agreement(first, second, ("class_names",), where=runs)
    if first.folds != second.folds:
        raise ScoreFileError(
            f"{runs} trained different folds: {list(first.folds)} vs {list(second.folds)}"
        )
    _require_agreement(
        first,
        second,
        ("sample_fold", "test_indices", "labels"),
        where=runs,
        why="merged runs must use the same folds",
    )
    for optimizer in first.groups.keys() & second.groups.keys():
        raise ScoreFileError(
            f"optimizer group {optimizer!r} of data set {first.dataset!r} is in two runs: "
            f"{first.groups[optimizer].run_dir} and {second.groups[optimizer].run_dir}"
        )
    merged = {**first.groups, **second.groups}
    mismatch = first.validation_mismatch or second.validation_mismatch or _validation_mismatch(
        first, second
    )
    return first._replace(
        validation_labels=None if mismatch else first.validation_labels,
        validation_indices=None if mismatch else first.validation_indices,
        validation_mismatch=mismatch,
        groups={name: merged[name] for name in paper_order(merged)},
        run_dirs=first.run_dirs + second.run_dirs,
        missing_folds=tuple(sorted(set(first.missing_folds) | set(second.missing_folds))),
    )


def _validation_mismatch(first: DatasetScores, second: DatasetScores) -> str | None:
    """Why two runs' validation rows cannot be pooled, or None (the same rows, or none).

    The rows are compared by index, not only by label: data sets read from class folders
    list their images class by class, so a stratified split of another seed holds out
    other images with the very same label sequence."""
    held = [data.validation_indices is not None for data in (first, second)]
    if not any(held):
        return None
    if not all(held):
        with_rows, without = (first, second) if held[0] else (second, first)
        return (
            f"{_names(with_rows.run_dirs)} held out validation rows and "
            f"{_names(without.run_dirs)} did not (train.py --validation-fraction)"
        )
    pairs = [(first.validation_indices, second.validation_indices),
             (first.validation_labels, second.validation_labels)]  # fmt: skip
    same = all(
        len(ours) == len(theirs)
        and all(np.array_equal(a, b) for a, b in zip(ours, theirs, strict=True))
        for ours, theirs in pairs
    )
    return None if same else (
        f"{_names(first.run_dirs)} and {_names(second.run_dirs)} held out different "
        "validation rows (another --seed or --validation-fraction)"
    )  # fmt: skip


def _names(run_dirs: Sequence[Path]) -> str:
    return ", ".join(str(run_dir) for run_dir in run_dirs)


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
