"""Reading and checking the score files that ``train.py`` writes.

The format (pinned; the trainer writes exactly this)::

  RUN_DIR/config.json                     "dataset", "seed", "optimizers" ({"sgd": 14, ...})
  RUN_DIR/scores/fold{F}/{OPTIMIZER}.npz  one per fold F (0-based) and optimizer group:
    scores        float32 [members, n_test, n_classes]  softmax probabilities
    labels        int64 [n_test]
    test_indices  int64 [n_test]   indices into the data set, each in exactly one fold
    class_names   unicode [n_classes]
    member_seeds  int64 [members]
    diverged      bool [members]   the member's loss became NaN/inf (its scores may be NaN)
    optimizer, dataset  0-d str;  fold  0-d int64

Everything is checked on reading; a problem raises ``ScoreFileError`` naming the file(s) and
what was expected. Runs of one data set can be merged, each optimizer group from one run.
"""

import json
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from ensembling.specs import OPTIMIZERS

SCORE_FILE_KEYS = (
    "scores",
    "labels",
    "test_indices",
    "class_names",
    "member_seeds",
    "diverged",
    "optimizer",
    "fold",
    "dataset",
)
# Softmax scores are float32: rows sum to one within rounding; anything further off is not a
# probability vector (logits written by mistake, say).
PROBABILITY_TOLERANCE = 1e-3
_FOLD_DIR = re.compile(r"fold(\d+)")


class ScoreFileError(ValueError):
    """A run directory or score file that does not follow the score-file format."""


class FoldScores(NamedTuple):
    """The contents of one score file, checked.

    Attributes:
      path: the file.
      scores: float32 ``[members, n_test, n_classes]`` softmax probabilities (NaN allowed only
        for diverged members).
      labels: int64 ``[n_test]``.
      test_indices: int64 ``[n_test]``, indices into the data set.
      class_names: the class names, in class-index order.
      member_seeds: int64 ``[members]``.
      diverged: bool ``[members]``.
      optimizer: the group name.
      fold: the fold number (0-based).
      dataset: the data set's name.
    """

    path: Path
    scores: np.ndarray
    labels: np.ndarray
    test_indices: np.ndarray
    class_names: tuple[str, ...]
    member_seeds: np.ndarray
    diverged: np.ndarray
    optimizer: str
    fold: int
    dataset: str


def _expect(condition: bool, path: Path, problem: str) -> None:
    if not condition:
        raise ScoreFileError(f"{path}: {problem}")


def read_score_file(path: str | Path) -> FoldScores:
    """Reads and checks one ``{OPTIMIZER}.npz`` score file.

    Raises:
      ScoreFileError: naming the file and the problem: not a readable ``.npz`` (malformed or
        truncated), missing keys, wrong dtypes or shapes, labels outside the classes, repeated
        test indices, or scores of a non-diverged member that are not probability vectors.
    """
    path = Path(path)
    unreadable = (OSError, ValueError, EOFError, zipfile.BadZipFile, zipfile.LargeZipFile)
    if not path.is_file():
        raise ScoreFileError(f"{path}: file not found")
    try:
        archive = np.load(path, allow_pickle=False)
    except unreadable as error:
        raise ScoreFileError(
            f"{path}: not a readable .npz archive (malformed or truncated?): {error}"
        ) from error
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ScoreFileError(f"{path}: a bare .npy array, not an .npz archive of named arrays")
    with archive:
        missing = [key for key in SCORE_FILE_KEYS if key not in archive.files]
        _expect(
            not missing, path, f"missing keys {missing}; a score file holds {list(SCORE_FILE_KEYS)}"
        )
        try:
            arrays = {key: archive[key] for key in SCORE_FILE_KEYS}
        except unreadable as error:
            raise ScoreFileError(
                f"{path}: cannot read its arrays (malformed or truncated?): {error}"
            ) from error

    scores = arrays["scores"]
    _expect(
        scores.ndim == 3 and np.issubdtype(scores.dtype, np.floating),
        path,
        f"'scores' must be float [members, n_test, n_classes], got {scores.dtype} {scores.shape}",
    )
    n_members, n_test, n_classes = scores.shape
    _expect(n_members >= 1 and n_test >= 1, path, f"'scores' is empty: shape {scores.shape}")
    _expect(n_classes >= 2, path, f"'scores' has {n_classes} class(es); need at least 2")

    def vector(key: str, length: int, kind: str, what: str) -> np.ndarray:
        array = arrays[key]
        _expect(
            array.ndim == 1 and array.shape[0] == length and array.dtype.kind in kind,
            path,
            f"{key!r} must be {what} [{length}], got {array.dtype} {array.shape}",
        )
        return array

    def scalar(key: str, kind: str, what: str):
        array = arrays[key]
        _expect(
            array.ndim == 0 and array.dtype.kind in kind,
            path,
            f"{key!r} must be a 0-d {what}, got {array.dtype} {array.shape}",
        )
        return array.item()

    labels = vector("labels", n_test, "iu", "integer").astype(np.int64)
    test_indices = vector("test_indices", n_test, "iu", "integer").astype(np.int64)
    class_names = tuple(str(name) for name in vector("class_names", n_classes, "U", "unicode"))
    member_seeds = vector("member_seeds", n_members, "iu", "integer").astype(np.int64)
    diverged = vector("diverged", n_members, "b", "bool")
    optimizer = scalar("optimizer", "U", "str")
    fold = int(scalar("fold", "iu", "integer"))
    dataset = scalar("dataset", "U", "str")

    bad_labels = labels[(labels < 0) | (labels >= n_classes)]
    _expect(
        bad_labels.size == 0,
        path,
        f"labels {sorted(set(bad_labels.tolist()))[:5]} outside the {n_classes} classes",
    )
    _expect(
        np.unique(test_indices).size == n_test and test_indices.min() >= 0,
        path,
        "'test_indices' must be distinct non-negative indices",
    )
    for member in np.flatnonzero(~diverged):
        member_scores = scores[member].astype(np.float64)
        _expect(
            bool(np.all(np.isfinite(member_scores))),
            path,
            f"member {member} has non-finite scores but is not marked diverged",
        )
        row_sums = member_scores.sum(axis=-1)
        _expect(
            member_scores.min() >= -PROBABILITY_TOLERANCE
            and np.abs(row_sums - 1).max() <= PROBABILITY_TOLERANCE,
            path,
            f"member {member}'s scores are not softmax probabilities (min "
            f"{member_scores.min():.4g}, row sums {row_sums.min():.4g}..{row_sums.max():.4g})",
        )
    return FoldScores(
        path=path,
        scores=scores.astype(np.float32, copy=False),
        labels=labels,
        test_indices=test_indices,
        class_names=class_names,
        member_seeds=member_seeds,
        diverged=diverged,
        optimizer=optimizer,
        fold=fold,
        dataset=dataset,
    )


class GroupScores(NamedTuple):
    """One optimizer group's members, the folds' test samples concatenated in fold order.

    Attributes:
      optimizer: the group name.
      run_dir: the run it comes from.
      scores: float32 ``[members, n_samples, n_classes]``.
      diverged: bool ``[members, len(folds)]``: the member diverged in that fold.
      member_seeds: int64 ``[members, len(folds)]``.
    """

    optimizer: str
    run_dir: Path
    scores: np.ndarray
    diverged: np.ndarray
    member_seeds: np.ndarray

    @property
    def n_members(self) -> int:
        return self.scores.shape[0]


class DatasetScores(NamedTuple):
    """All groups' scores on one data set, test samples pooled over the folds.

    Attributes:
      dataset: the data set's name.
      class_names: the class names, in class-index order.
      labels: int64 ``[n_samples]``.
      test_indices: int64 ``[n_samples]``, indices into the data set.
      folds: the folds trained, ascending (all of the protocol's, or those the run chose).
      sample_fold: int64 ``[n_samples]``: the fold in which the sample is test data.
      groups: the optimizer groups, in the paper's order.
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


def _read_config(run_dir: Path) -> tuple[dict[str, int], list[int] | None]:
    """Returns config.json's ``optimizers`` and ``folds`` (None: all folds)."""
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise ScoreFileError(f"{config_path}: not found; is {run_dir} a train.py run directory?")
    try:
        config = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ScoreFileError(f"{config_path}: not valid JSON: {error}") from error
    if not isinstance(config, dict):
        raise ScoreFileError(f"{config_path}: expected a JSON object")
    groups = config.get("optimizers")
    if not isinstance(groups, dict) or not groups:
        raise ScoreFileError(
            f"{config_path}: 'optimizers' must map group names to member counts, "
            f'e.g. {{"sgd": 14}}; got {groups!r}'
        )
    for name, count in groups.items():
        if name not in OPTIMIZERS or not isinstance(count, int) or count < 1:
            raise ScoreFileError(
                f"{config_path}: 'optimizers' entry {name!r}: {count!r}; expected a group in "
                f"{list(OPTIMIZERS)} and a positive member count"
            )
    folds = config.get("folds")
    if folds is not None and (
        not isinstance(folds, list) or not all(isinstance(f, int) and f >= 0 for f in folds)
    ):
        raise ScoreFileError(
            f"{config_path}: 'folds' must be null or a list of folds, got {folds!r}"
        )
    return groups, folds


def load_run(run_dir: str | Path) -> DatasetScores:
    """Reads and cross-checks all score files of one run directory.

    Checks that every group of ``config.json`` has one file per trained fold (config.json's
    ``folds``, or every ``fold{F}`` present when it is null) with the configured number of
    members, that each file agrees with its place (optimizer, fold) and all name the same data
    set, that all groups of a fold share the labels, test indices and class names, that class
    names agree across folds, and that no sample is test data in two folds. The data set's name
    is the one in the score files. ``*.partial.npz`` files, the trainer's unfinished writes,
    are not score files and are not read.

    Raises:
      ScoreFileError: naming the file(s) and the problem.
    """
    run_dir = Path(run_dir)
    configured, configured_folds = _read_config(run_dir)
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
    for fold, fold_dir in sorted(fold_dirs.items()):
        present = {
            path.stem: path
            for path in fold_dir.glob("*.npz")
            if not path.name.endswith(".partial.npz")
        }
        unexpected = sorted(set(present) - set(configured))
        if unexpected:
            raise ScoreFileError(
                f"{fold_dir}: score files {unexpected} for groups not in config.json's "
                f"'optimizers' {sorted(configured)}"
            )
        fold_files = {}
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
            _expect(
                scores.scores.shape[0] == members,
                path,
                f"{scores.scores.shape[0]} members; config.json says {members}",
            )
            fold_files[optimizer] = scores
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
    for optimizer in (name for name in OPTIMIZERS if name in configured):
        per_fold = [fold_files[optimizer] for fold_files in folds]
        groups[optimizer] = GroupScores(
            optimizer=optimizer,
            run_dir=run_dir,
            scores=np.concatenate([f.scores for f in per_fold], axis=1),
            diverged=np.stack([f.diverged for f in per_fold], axis=1),
            member_seeds=np.stack([f.member_seeds for f in per_fold], axis=1),
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
        groups={name: merged[name] for name in OPTIMIZERS if name in merged},
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
