"""The score-file format: one owner, who writes it (``write_score_file``) and reads it.

The trainer writes one file per fold and optimizer group with ``write_score_file``;
``ensemble.py`` reads it with ``read_score_file``; both apply the same checks (``_checked``)::

  RUN_DIR/scores/fold{F}/{OPTIMIZER}.npz  one per fold F (0-based) and optimizer group:
    scores        float32 [members, n_test, n_classes]  softmax probabilities
    labels        int64 [n_test]
    test_indices  int64 [n_test]   indices into the data set, each in exactly one fold
    class_names   unicode [n_classes]
    member_seeds  int64 [members]
    diverged      bool [members]   the member's loss became NaN/inf (its scores may be NaN)
    optimizer, dataset  0-d str;  fold  0-d int64
  and, only in a hyperparameter sweep's files (both or neither):
    hyperparameter_names   unicode [H]  names from ``rundir.SWEEPABLE``
    hyperparameter_values  float64 [members, H]  each member's values (finite)
  and, in every file the trainer writes since provenance exists (``rundir``):
    config_digest          0-d str  the digest of the settings the scores were trained with
  and, only with a validation split (``--validation-fraction``; all three or none):
    validation_scores      float32 [members, n_val, n_classes]  softmax on held-out rows
    validation_labels      int64 [n_val]
    validation_indices     int64 [n_val]  indices into the data set, none a test index

A sweep's members are ordered grid point by grid point (``runs.load_run`` splits them into
one group per grid point); ``member_seeds`` then repeats from one grid point to the next.

A problem raises ``ScoreFileError`` naming the file and what was expected. Keys beyond
``SCORE_FILE_KEYS`` and ``OPTIONAL_KEYS`` are ignored on reading, so a later optional field is
added by giving ``FoldScores`` a field with a default, ``write_score_file`` a keyword argument
that defaults to absent, and ``_checked`` and ``_arrays`` its check and its arrays (as the
hyperparameters were); files without it keep reading.
"""

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np

from rundir import (
    GROUP_NAME,
    PARTIAL_INFIX,
    SWEEPABLE,
    ScoreProvenance,
    atomic_file,
    scores_path,
)

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
# Keys only a hyperparameter sweep's score files hold; a file holds both or neither.
HYPERPARAMETER_KEYS = ("hyperparameter_names", "hyperparameter_values")
# Keys only a run with a validation split writes; a file holds all three or none.
VALIDATION_KEYS = ("validation_scores", "validation_labels", "validation_indices")
# Keys a file may lack (older files, hand-written ones).
OPTIONAL_KEYS = (*HYPERPARAMETER_KEYS, "config_digest", *VALIDATION_KEYS)
# Softmax scores are float32: rows sum to one within rounding; anything further off is not a
# probability vector (logits written by mistake, say).
PROBABILITY_TOLERANCE = 1e-3
# The suffix of a write in progress; ``load_run`` never reads such a file.
PARTIAL_SUFFIX = f"{PARTIAL_INFIX}.npz"
# What reading a damaged .npz raises varies (zipfile.BadZipFile, EOFError, OSError, ValueError,
# NotImplementedError for a flipped compression method, RuntimeError, zlib.error, ...): every
# exception while reading is reported as a damaged file, with the original error in the message
# (test_every_truncation_and_corruption_is_a_score_file_error).
_UNREADABLE = Exception


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
      hyperparameter_names: a sweep's hyperparameter names, ``()`` for a file without.
      hyperparameter_values: float64 ``[members, len(hyperparameter_names)]`` (``[members,
        0]`` for a file without).
      config_digest: the digest of the settings it was trained with (``rundir``); None for
        a file written without provenance.
      validation_scores: float32 ``[members, n_val, n_classes]`` on the held-out validation
        rows, or None (no validation split).
      validation_labels: int64 ``[n_val]`` or None.
      validation_indices: int64 ``[n_val]`` or None.
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
    hyperparameter_names: tuple[str, ...] = ()
    hyperparameter_values: np.ndarray | None = None
    config_digest: str | None = None
    validation_scores: np.ndarray | None = None
    validation_labels: np.ndarray | None = None
    validation_indices: np.ndarray | None = None

    @property
    def validation_indices_or_empty(self) -> np.ndarray:
        """``validation_indices``, or an empty int64 array without a validation split."""
        if self.validation_indices is None:
            return np.zeros(0, np.int64)
        return self.validation_indices

    @property
    def provenance(self) -> ScoreProvenance:
        """What the file says it was trained with."""
        return ScoreProvenance(
            self.config_digest,
            self.optimizer,
            self.fold,
            self.member_seeds,
            self.hyperparameter_names,
            self.hyperparameters,
        )

    @property
    def hyperparameters(self) -> np.ndarray:
        """float64 ``[members, len(hyperparameter_names)]``, ``[members, 0]`` without a sweep."""
        if self.hyperparameter_values is None:
            return np.zeros((self.scores.shape[0], 0))
        return self.hyperparameter_values


def expect(condition: bool, path: Path, problem: str) -> None:
    """ScoreFileError naming ``path`` and ``problem`` unless ``condition`` holds."""
    if not condition:
        raise ScoreFileError(f"{path}: {problem}")


def _checked(path: Path, arrays: dict[str, np.ndarray]) -> FoldScores:
    """Checks a score file's arrays (read or about to be written); returns them typed."""
    missing = [key for key in SCORE_FILE_KEYS if key not in arrays]
    expect(
        not missing, path, f"missing keys {missing}; a score file holds {list(SCORE_FILE_KEYS)}"
    )
    scores = arrays["scores"]
    expect(
        scores.ndim == 3 and np.issubdtype(scores.dtype, np.floating),
        path,
        f"'scores' must be float [members, n_test, n_classes], got {scores.dtype} {scores.shape}",
    )
    n_members, n_test, n_classes = scores.shape
    expect(n_members >= 1 and n_test >= 1, path, f"'scores' is empty: shape {scores.shape}")
    expect(n_classes >= 2, path, f"'scores' has {n_classes} class(es); need at least 2")
    scores = scores.astype(np.float32, copy=False)  # what is written, and what is returned

    def vector(key: str, length: int, kind: str, what: str) -> np.ndarray:
        array = arrays[key]
        expect(
            array.ndim == 1 and array.shape[0] == length and array.dtype.kind in kind,
            path,
            f"{key!r} must be {what} [{length}], got {array.dtype} {array.shape}",
        )
        return array

    def scalar(key: str, kind: str, what: str):
        array = arrays[key]
        expect(
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

    expect(
        GROUP_NAME.fullmatch(optimizer) is not None,
        path,
        f"'optimizer' {optimizer!r} is not a group name (lower case: a letter, then letters, "
        "digits, '_' or '-')",
    )
    expect(fold >= 0, path, f"'fold' must be a fold number >= 0, got {fold}")
    bad_labels = labels[(labels < 0) | (labels >= n_classes)]
    expect(
        bad_labels.size == 0,
        path,
        f"labels {sorted(set(bad_labels.tolist()))[:5]} outside the {n_classes} classes",
    )
    expect(
        np.unique(test_indices).size == n_test and test_indices.min() >= 0,
        path,
        "'test_indices' must be distinct non-negative indices",
    )
    _probability_rows(path, "scores", scores, diverged)
    names, values = _checked_hyperparameters(path, arrays, n_members)
    config_digest = scalar("config_digest", "U", "str") if "config_digest" in arrays else None
    validation = _checked_validation(path, arrays, diverged, class_names, test_indices)
    return FoldScores(
        path=path,
        scores=scores,
        labels=labels,
        test_indices=test_indices,
        class_names=class_names,
        member_seeds=member_seeds,
        diverged=diverged,
        optimizer=optimizer,
        fold=fold,
        dataset=dataset,
        hyperparameter_names=names,
        hyperparameter_values=values,
        config_digest=config_digest,
        **validation,
    )


def _probability_rows(path: Path, key: str, scores: np.ndarray, diverged: np.ndarray) -> None:
    """Every non-diverged member's rows of ``scores`` are finite probability vectors."""
    for member in np.flatnonzero(~diverged):
        member_scores = scores[member].astype(np.float64)
        expect(
            bool(np.all(np.isfinite(member_scores))),
            path,
            f"member {member} has non-finite {key} but is not marked diverged",
        )
        row_sums = member_scores.sum(axis=-1)
        expect(
            member_scores.min() >= -PROBABILITY_TOLERANCE
            and np.abs(row_sums - 1).max() <= PROBABILITY_TOLERANCE,
            path,
            f"member {member}'s {key} are not softmax probabilities (min "
            f"{member_scores.min():.4g}, row sums {row_sums.min():.4g}..{row_sums.max():.4g})",
        )


def _checked_validation(
    path: Path,
    arrays: dict[str, np.ndarray],
    diverged: np.ndarray,
    class_names: tuple[str, ...],
    test_indices: np.ndarray,
) -> dict[str, np.ndarray]:
    """The optional validation arrays, checked; ``{}`` when the file has none."""
    present = [key for key in VALIDATION_KEYS if key in arrays]
    if not present:
        return {}
    absent = [key for key in VALIDATION_KEYS if key not in arrays]
    expect(
        not absent,
        path,
        f"holds {present} without {absent}; a file with a validation split holds all of "
        f"{list(VALIDATION_KEYS)}",
    )
    scores = arrays["validation_scores"]
    members, n_classes = len(diverged), len(class_names)
    expect(
        scores.ndim == 3
        and np.issubdtype(scores.dtype, np.floating)
        and scores.shape[0] == members
        and scores.shape[2] == n_classes
        and scores.shape[1] >= 1,
        path,
        f"'validation_scores' must be float [members={members}, n_val >= 1, "
        f"classes={n_classes}], got {scores.dtype} {scores.shape}",
    )
    n_val = scores.shape[1]
    labels, indices = arrays["validation_labels"], arrays["validation_indices"]
    for key, array in (("validation_labels", labels), ("validation_indices", indices)):
        expect(
            array.ndim == 1 and array.shape[0] == n_val and array.dtype.kind in "iu",
            path,
            f"{key!r} must be integer [{n_val}], got {array.dtype} {array.shape}",
        )
    expect(
        bool(np.all((labels >= 0) & (labels < n_classes))),
        path,
        f"'validation_labels' outside the {n_classes} classes",
    )
    expect(
        np.unique(indices).size == n_val and not np.intersect1d(indices, test_indices).size,
        path,
        "'validation_indices' must be distinct and none of them a test index",
    )
    scores = scores.astype(np.float32, copy=False)
    _probability_rows(path, "validation scores", scores, diverged)
    return dict(
        validation_scores=scores,
        validation_labels=labels.astype(np.int64),
        validation_indices=indices.astype(np.int64),
    )


def _checked_hyperparameters(
    path: Path, arrays: dict[str, np.ndarray], n_members: int
) -> tuple[tuple[str, ...], np.ndarray | None]:
    """The optional ``hyperparameter_names`` and ``hyperparameter_values``, checked."""
    present = [key for key in HYPERPARAMETER_KEYS if key in arrays]
    if not present:
        return (), None
    absent = [key for key in HYPERPARAMETER_KEYS if key not in arrays]
    if absent:
        raise ScoreFileError(
            f"{path}: holds {present[0]!r} without {absent[0]!r}; a sweep's score file holds "
            f"both {list(HYPERPARAMETER_KEYS)}, other files neither"
        )
    names_array, values = arrays["hyperparameter_names"], arrays["hyperparameter_values"]
    expect(
        names_array.ndim == 1 and names_array.size >= 1 and names_array.dtype.kind == "U",
        path,
        "'hyperparameter_names' must be a non-empty unicode array [H], got "
        f"{names_array.dtype} {names_array.shape}",
    )
    names = tuple(str(name) for name in names_array)
    unknown = [name for name in names if name not in SWEEPABLE]
    expect(
        not unknown,
        path,
        f"'hyperparameter_names' {unknown} not among the sweepable {list(SWEEPABLE)}",
    )
    repeated = sorted({name for name in names if names.count(name) > 1})
    expect(not repeated, path, f"'hyperparameter_names' repeats {repeated}")
    expect(
        values.shape == (n_members, len(names)) and values.dtype.kind in "fiu",
        path,
        f"'hyperparameter_values' must be float [members={n_members}, H={len(names)}] (one "
        f"row per member, one column per name), got {values.dtype} {values.shape}",
    )
    values = values.astype(np.float64)
    bad = np.argwhere(~np.isfinite(values))
    if bad.size:
        member, column = bad[0]
        raise ScoreFileError(
            f"{path}: 'hyperparameter_values' must be finite; member {member} has "
            f"{names[column]}={values[member, column]}"
        )
    return names, values


def _arrays(checked: FoldScores) -> dict[str, np.ndarray]:
    """The arrays of a score file, in the pinned dtypes."""
    return {
        "scores": checked.scores,
        "labels": checked.labels,
        "test_indices": checked.test_indices,
        "class_names": np.asarray(checked.class_names, dtype=str),
        "member_seeds": checked.member_seeds,
        "diverged": checked.diverged,
        "optimizer": np.asarray(checked.optimizer, dtype=str),
        "fold": np.asarray(checked.fold, dtype=np.int64),
        "dataset": np.asarray(checked.dataset, dtype=str),
        **(
            {}
            if checked.hyperparameter_values is None
            else {
                "hyperparameter_names": np.asarray(checked.hyperparameter_names, dtype=str),
                "hyperparameter_values": checked.hyperparameter_values,
            }
        ),
        **(
            {}
            if checked.config_digest is None
            else {"config_digest": np.asarray(checked.config_digest, dtype=str)}
        ),
        **(
            {}
            if checked.validation_scores is None
            else {
                "validation_scores": checked.validation_scores,
                "validation_labels": checked.validation_labels,
                "validation_indices": checked.validation_indices,
            }
        ),
    }


def read_score_file(path: str | Path) -> FoldScores:
    """Reads and checks one ``{OPTIMIZER}.npz`` score file.

    Raises:
      ScoreFileError: naming the file and the problem: not a readable ``.npz`` (malformed or
        truncated), missing keys, wrong dtypes or shapes, labels outside the classes, repeated
        test indices, or scores of a non-diverged member that are not probability vectors.
    """
    path = Path(path)
    if not path.is_file():
        raise ScoreFileError(f"{path}: file not found")
    try:
        archive = np.load(path, allow_pickle=False)
    except _UNREADABLE as error:
        raise ScoreFileError(
            f"{path}: not a readable .npz archive (malformed or truncated?): {error!r}"
        ) from error
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ScoreFileError(f"{path}: a bare .npy array, not an .npz archive of named arrays")
    with archive:
        missing = [key for key in SCORE_FILE_KEYS if key not in archive.files]
        expect(
            not missing, path, f"missing keys {missing}; a score file holds {list(SCORE_FILE_KEYS)}"
        )
        try:
            arrays = {
                key: archive[key]
                for key in (*SCORE_FILE_KEYS, *OPTIONAL_KEYS)
                if key in archive.files
            }
        except _UNREADABLE as error:
            raise ScoreFileError(
                f"{path}: cannot read its arrays (malformed or truncated?): {error!r}"
            ) from error
    return _checked(path, arrays)


def _hyperparameter_arrays(
    path: Path, hyperparameters: Mapping[str, Sequence[float]], n_members: int
) -> dict[str, np.ndarray]:
    """``write_score_file``'s ``hyperparameters`` as the file's two arrays (checked there)."""
    expect(
        isinstance(hyperparameters, Mapping),
        path,
        "'hyperparameters' must map names to per-member values, e.g. "
        f"{{'learning_rate': [1e-3, 1e-3, 3e-4, 3e-4]}}; got {type(hyperparameters).__name__}",
    )
    columns = []
    for name, values in hyperparameters.items():
        expect(
            isinstance(name, str),
            path,
            f"hyperparameter name {name!r} is not a string (one of {list(SWEEPABLE)})",
        )
        column = np.asarray(values)
        expect(
            column.ndim == 1 and column.shape[0] == n_members and column.dtype.kind in "fiu",
            path,
            f"hyperparameter {name!r} must have one number per member ({n_members}), got "
            f"{column.dtype} {column.shape}",
        )
        columns.append(column.astype(np.float64))
    return {
        "hyperparameter_names": np.asarray(list(hyperparameters), dtype=str),
        "hyperparameter_values": np.stack(columns, axis=1),
    }


def write_score_file(
    path: str | Path,
    *,
    scores: np.ndarray,
    labels: np.ndarray,
    test_indices: np.ndarray,
    class_names: tuple[str, ...] | list[str] | np.ndarray,
    member_seeds: np.ndarray,
    diverged: np.ndarray,
    optimizer: str,
    fold: int,
    dataset: str,
    hyperparameters: Mapping[str, Sequence[float]] | None = None,
    config_digest: str | None = None,
    validation: Mapping[str, np.ndarray] | None = None,
) -> Path:
    """Checks and writes one ``{OPTIMIZER}.npz`` score file, atomically.

    The arrays are checked by the rules ``read_score_file`` applies (dtype kinds, shapes,
    probabilities), then stored in the pinned dtypes (scores float32, integers int64). The
    file is written to a temporary file in the same directory (named ``.*.partial.npz``,
    which ``load_run`` never reads), flushed to disk and renamed over ``path``: a kill at any
    moment leaves either the previous file or the new one, never a truncated one. Parent
    directories are created.

    Args:
      path: the file, ``RUN_DIR/scores/fold{F}/{OPTIMIZER}.npz`` in a run directory.
      scores: ``[members, n_test, n_classes]`` softmax probabilities; a diverged member's
        may be NaN.
      labels: integer ``[n_test]``.
      test_indices: integer ``[n_test]``, distinct indices into the data set.
      class_names: ``n_classes`` names, in class-index order.
      member_seeds: integer ``[members]``.
      diverged: bool ``[members]``.
      optimizer: the group name.
      fold: the fold number (0-based).
      dataset: the data set's name.
      hyperparameters: a hyperparameter sweep's per-member values, name -> ``[members]``
        values in the member order (grid point by grid point), names from
        ``specs.SWEEPABLE``; stored as ``hyperparameter_names`` and
        ``hyperparameter_values``. None (or empty) for a run without a sweep: the file then
        holds neither key, as before sweeps existed.
      config_digest: the digest of the settings the scores were trained with
        (``rundir.config_digest``); the trainer always gives it.
      validation: with a validation split, ``{"scores": [members, n_val, classes],
        "labels": [n_val], "indices": [n_val]}``; stored as the three ``validation_*`` keys.

    Returns:
      ``path``.

    Raises:
      ScoreFileError: naming ``path`` and the problem, before anything is written.
    """
    path = Path(path)
    given = {
        "scores": scores,
        "labels": labels,
        "test_indices": test_indices,
        "class_names": class_names,
        "member_seeds": member_seeds,
        "diverged": diverged,
        "optimizer": optimizer,
        "fold": fold,
        "dataset": dataset,
    }
    arrays = {key: np.asarray(value) for key, value in given.items()}
    if hyperparameters:
        arrays.update(_hyperparameter_arrays(path, hyperparameters, len(arrays["scores"])))
    if config_digest is not None:
        arrays["config_digest"] = np.asarray(config_digest, dtype=str)
    if validation is not None:
        for key in ("scores", "labels", "indices"):
            arrays[f"validation_{key}"] = np.asarray(validation[key])
    checked = _checked(path, arrays)
    expect(
        path.name == os.path.basename(scores_path("", checked.fold, checked.optimizer)),
        path,
        f"a score file of group {checked.optimizer!r} must be named {checked.optimizer}.npz "
        "(load_run finds a group's scores by the file name)",
    )
    with atomic_file(path, "wb") as file:
        np.savez(file, **_arrays(checked))
    return path
