"""The run directory's contract: one owner for what the trainer writes and ensemble.py reads.

``training`` writes a run directory and ``ensembling`` reads it; both take every fact about
it from here, and this module imports neither. The layout::

    config.json                     the run's settings (``TrainConfig`` as JSON) and its
                                    provenance (below)
    train.lock                      held by the process that trains into the directory
    scores/fold{F}/{group}.npz      softmax scores per fold and group (``ensembling.score_files``)
    logs/fold{F}/{group}.csv        per epoch and member: loss, train accuracy, diverged
    checkpoints/fold{F}/members/    orbax checkpoints of an unfinished fold (every group's
                                    members on one member axis)
    checkpoints/fold{F}/members.set-aside/   checkpoints that could not be used, kept
    ensemble/                       ensemble.py's default output (tables and plots)

**Provenance.** ``config.json`` holds, beside the settings, ``"provenance"``: the format
number, the folds the run plans to train, the names of the settings that affect results, and
their digest (:func:`config_digest`). Every score file carries the same digest beside its
group, fold, member seeds and grid points, so a file is reused (on resume) or pooled (by
ensemble.py) only with the settings it was trained with. Directories written before
provenance existed have neither; ensemble.py reads them with a warning and the trainer
refuses to resume them.

**Sweeps.** The names a sweep may vary are :data:`SWEEPABLE`. A grid's members come grid
point by grid point, the points in :func:`grid_points` order: the product of the value lists
with the names in ``SWEEPABLE`` order, whatever order the user gave them in.

**Whose directory.** The trainer empties (``--overwrite``) only a directory it can prove it
wrote: one whose ``config.json`` reads as a run's, holding nothing but :data:`TRAINER_ENTRIES`
and ``ensemble/`` (which is kept). A directory without ``config.json`` may receive a new run
only if it holds none of the trainer's entries.

**Writes.** Every file is written atomically (:func:`atomic_file`: a temporary file in the
same directory, flushed to disk, then renamed), so a kill or a full disk leaves the old file
or the new one and no partial file.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import math
import os
import re
import secrets
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import IO, Any, NamedTuple

import numpy as np

FORMAT = 2  # 1: main before provenance (no "provenance" in config.json)

CONFIG_FILE = "config.json"
LOCK_FILE = "train.lock"
SCORES_DIR = "scores"
LOGS_DIR = "logs"
CHECKPOINTS_DIR = "checkpoints"
ENSEMBLE_DIR = "ensemble"
TRAINER_ENTRIES = (CONFIG_FILE, LOCK_FILE, SCORES_DIR, LOGS_DIR, CHECKPOINTS_DIR)
SET_ASIDE_SUFFIX = ".set-aside"
PARTIAL_INFIX = ".partial"  # in the name of every write in progress; never read

# The hyperparameters a sweep may vary, in the grid's canonical order.
SWEEPABLE = ("learning_rate", "b1", "b2", "eps", "weight_decay", "momentum")


class RunDirectoryError(ValueError):
    """A run directory that cannot be used as asked (names the directory and why)."""


# --- layout ------------------------------------------------------------------------------


def scores_path(run_dir: str | os.PathLike, fold: int, group: str) -> str:
    return os.path.join(run_dir, SCORES_DIR, f"fold{fold}", f"{group}.npz")


def log_path(run_dir: str | os.PathLike, fold: int, group: str) -> str:
    return os.path.join(run_dir, LOGS_DIR, f"fold{fold}", f"{group}.csv")


# Every group of a fold trains on one member axis, so the fold has one checkpoint series;
# no group is called this (group names are optimizer names).
FOLD_CHECKPOINTS = "members"


def checkpoint_dir(run_dir: str | os.PathLike, fold: int) -> str:
    return os.path.join(run_dir, CHECKPOINTS_DIR, f"fold{fold}", FOLD_CHECKPOINTS)


def set_aside_dir(run_dir: str | os.PathLike, fold: int) -> str:
    """Where checkpoints that cannot be used are moved (never deleted)."""
    return checkpoint_dir(run_dir, fold) + SET_ASIDE_SUFFIX


def group_checkpoint_dirs(run_dir: str | os.PathLike, fold: int, groups: Iterable[str]) -> list:
    """Checkpoints of a fold's groups kept one per group (trainers before one member axis
    for the whole run); this trainer cannot continue from them."""
    folder = os.path.join(run_dir, CHECKPOINTS_DIR, f"fold{fold}")
    return [os.path.join(folder, g) for g in groups if os.path.isdir(os.path.join(folder, g))]


# --- sweeps ------------------------------------------------------------------------------


def format_hyperparameter(value: float) -> str:
    """A hyperparameter value as grid-point names and specs compare it: ``f"{value:g}"``.

    Example:
      >>> format_hyperparameter(3e-4), format_hyperparameter(0.9), format_hyperparameter(1e-8)
      ('0.0003', '0.9', '1e-08')
    """
    return f"{float(value):g}"


def canonical_names(names: Iterable[str]) -> list[str]:
    """``names`` in ``SWEEPABLE`` order (names that are not sweepable follow, as given)."""
    names = list(names)
    known = [name for name in SWEEPABLE if name in names]
    return known + [name for name in names if name not in SWEEPABLE]


def canonical_sweep(
    sweep: Mapping[str, Sequence[float]] | None,
) -> dict[str, tuple[float, ...]] | None:
    """A sweep with its names in ``SWEEPABLE`` order and its values as float tuples; None
    for no sweep (None or empty)."""
    if not sweep:
        return None
    return {name: tuple(float(v) for v in sweep[name]) for name in canonical_names(sweep)}


def grid_points(sweep: Mapping[str, Sequence[float]] | None) -> list[dict[str, float]]:
    """The grid in its member order: the product of the value lists, names canonical.

    Example:
      >>> grid_points({"b1": [0.9, 0.0], "learning_rate": [1e-3]})
      [{'learning_rate': 0.001, 'b1': 0.9}, {'learning_rate': 0.001, 'b1': 0.0}]
    """
    sweep = canonical_sweep(sweep)
    if sweep is None:
        return [{}]
    return [dict(zip(sweep, values, strict=True)) for values in itertools.product(*sweep.values())]


def grid_members(
    sweep: Mapping[str, Sequence[float]] | None, per_point: int
) -> tuple[tuple[int, ...], np.ndarray]:
    """Each member's index within its grid point and its values ``[members, names]``.

    Members come grid point by grid point, ``per_point`` each, so member ``i`` of every grid
    point shares its seed with member ``i`` of a run without the sweep.
    """
    points = grid_points(sweep)
    values = np.array(
        [list(point.values()) for point in points for _ in range(per_point)], np.float64
    ).reshape(per_point * len(points), len(points[0]))
    return tuple(range(per_point)) * len(points), values


# --- config.json -------------------------------------------------------------------------


def result_values(values: Mapping[str, Any], result_fields: Sequence[str]) -> dict[str, Any]:
    """The settings that reach a fold's scores: ``result_fields``, without ``folds`` (which
    folds run does not change any fold's scores) and without the plain value of every swept
    hyperparameter (the sweep's values replace it)."""
    swept = set((values.get("sweep") or {}).keys())
    return {
        name: values.get(name) for name in result_fields if name != "folds" and name not in swept
    }


def config_digest(values: Mapping[str, Any], result_fields: Sequence[str]) -> str:
    """A digest of :func:`result_values`: equal exactly when they are (as JSON)."""
    canonical = json.dumps(result_values(values, result_fields), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


class Provenance(NamedTuple):
    """``config.json``'s ``"provenance"``: who wrote the run and with which settings."""

    format: int
    planned_folds: tuple[int, ...]
    result_fields: tuple[str, ...]
    digest: str


class RunConfig(NamedTuple):
    """A run's ``config.json``, checked.

    Attributes:
      path: the file.
      values: every setting as stored.
      groups: ``optimizers``: group name -> members (per grid point in a sweep).
      folds: the folds asked for, or None for all of the protocol's.
      sweep: the sweep in canonical order, or None.
      provenance: None for a directory written before provenance existed.
    """

    path: str
    values: dict[str, Any]
    groups: dict[str, int]
    folds: tuple[int, ...] | None
    sweep: dict[str, tuple[float, ...]] | None
    provenance: Provenance | None

    def stale_settings(self) -> bool:
        """Whether the settings no longer match the digest written with them (config.json
        was edited after the run wrote it)."""
        if self.provenance is None:
            return False
        digest = config_digest(self.values, self.provenance.result_fields)
        return digest != self.provenance.digest


def config_json(
    values: Mapping[str, Any], result_fields: Sequence[str], planned_folds: Sequence[int]
) -> str:
    """The text of a run's ``config.json``: the settings and their provenance."""
    provenance = {
        "format": FORMAT,
        "planned_folds": [int(f) for f in planned_folds],
        "result_fields": list(result_fields),
        "digest": config_digest(values, result_fields),
    }
    return json.dumps({**values, "provenance": provenance}, indent=2)


# A group name as the trainer writes it (config.json's "optimizers", the score file's name):
# lower case, starting with a letter.
GROUP_NAME = re.compile(r"[a-z][a-z0-9_-]*")


def _is_int(value: Any, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def read_config(run_dir: str | os.PathLike) -> RunConfig:
    """Reads and checks a run's ``config.json``.

    Raises:
      RunDirectoryError: naming the file and what is wrong with it (missing, unreadable,
        empty, not JSON, or a setting the run directory's readers rely on malformed).
    """
    path = os.path.join(run_dir, CONFIG_FILE)

    def expect(condition: bool, problem: str) -> None:
        if not condition:
            raise RunDirectoryError(f"{path}: {problem}")

    if not os.path.isfile(path):
        raise RunDirectoryError(f"{path}: not found; is {run_dir} a train.py run directory?")
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as error:
        raise RunDirectoryError(f"{path}: cannot be read: {error}") from None
    expect(
        bool(text.strip()),
        "empty; expected the run's configuration as a JSON object (was the run interrupted "
        "while writing it?)",
    )
    try:
        values = json.loads(text)
    except json.JSONDecodeError as error:
        raise RunDirectoryError(f"{path}: not valid JSON: {error}") from None
    expect(isinstance(values, dict), f"expected a JSON object, got {type(values).__name__}")
    groups = values.get("optimizers")
    expect(
        isinstance(groups, dict) and bool(groups),
        f"'optimizers' must map group names to member counts, e.g. {{\"sgd\": 14}}; got {groups!r}",
    )
    for name, count in groups.items():
        expect(
            GROUP_NAME.fullmatch(name) is not None and _is_int(count, 1),
            f"'optimizers' entry {name!r}: {count!r}; expected a group name (lower case: a "
            "letter, then letters, digits, '_' or '-') and a positive member count",
        )
    folds = values.get("folds")
    expect(
        folds is None or (isinstance(folds, list) and all(_is_int(f, 0) for f in folds)),
        f"'folds' must be null or a list of folds (integers >= 0), got {folds!r}",
    )
    sweep = values.get("sweep")
    expect(
        sweep is None or isinstance(sweep, dict),
        "'sweep' must map hyperparameter names to value lists, e.g. "
        f'{{"learning_rate": [0.003, 0.001]}}, or be null; got {sweep!r}',
    )
    for name, swept in (sweep or {}).items():
        expect(
            name in SWEEPABLE
            and isinstance(swept, list)
            and bool(swept)
            and all(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                for v in swept
            ),
            f"'sweep' entry {name!r}: {swept!r}; expected a name from {list(SWEEPABLE)} and a "
            "non-empty list of finite numbers",
        )
        formatted = [format_hyperparameter(v) for v in swept]
        expect(
            len(set(formatted)) == len(formatted),
            f"'sweep' entry {name!r} repeats a value (compared as {formatted}, formatted with :g)",
        )
    provenance = values.pop("provenance", None)
    if provenance is not None:
        expect(
            isinstance(provenance, dict)
            and _is_int(provenance.get("format"), 2)
            and isinstance(provenance.get("planned_folds"), list)
            and all(_is_int(f, 0) for f in provenance["planned_folds"])
            and isinstance(provenance.get("result_fields"), list)
            and all(isinstance(name, str) for name in provenance["result_fields"])
            and isinstance(provenance.get("digest"), str),
            f"'provenance' must hold format, planned_folds, result_fields and digest; got "
            f"{provenance!r}",
        )
        provenance = Provenance(
            provenance["format"],
            tuple(provenance["planned_folds"]),
            tuple(provenance["result_fields"]),
            provenance["digest"],
        )
    return RunConfig(
        path=path,
        values=values,
        groups=dict(groups),
        folds=tuple(folds) if folds is not None else None,
        sweep=canonical_sweep(sweep),
        provenance=provenance,
    )


# --- score-file provenance ---------------------------------------------------------------


class ScoreProvenance(NamedTuple):
    """What a score file was trained with; the trainer reuses a file only if all match."""

    config_digest: str | None
    group: str
    fold: int
    member_seeds: np.ndarray  # int64 [members]
    hyperparameter_names: tuple[str, ...]
    hyperparameter_values: np.ndarray  # float64 [members, names]


def provenance_mismatch(found: ScoreProvenance, expected: ScoreProvenance) -> str | None:
    """Why a score file's provenance is not the expected one, or None when it is."""
    if found.config_digest is None:
        return "it was written without provenance (by a trainer before the format had it)"
    if found.config_digest != expected.config_digest:
        return (
            f"it was trained with other settings (digest {found.config_digest}, the run's "
            f"is {expected.config_digest})"
        )
    if (found.group, found.fold) != (expected.group, expected.fold):
        return f"it holds group {found.group!r} fold {found.fold}"
    if not np.array_equal(found.member_seeds, expected.member_seeds):
        return f"its member seeds are {found.member_seeds.tolist()}, expected " + str(
            expected.member_seeds.tolist()
        )
    found_names = tuple(found.hyperparameter_names)
    if found_names != tuple(expected.hyperparameter_names) or not np.array_equal(
        found.hyperparameter_values, expected.hyperparameter_values
    ):
        return (
            f"its members' grid points ({list(found_names)}: "
            f"{found.hyperparameter_values.tolist()}) are not the run's "
            f"({list(expected.hyperparameter_names)}: {expected.hyperparameter_values.tolist()})"
        )
    return None


# --- whose directory ---------------------------------------------------------------------


def foreign_entries(path: str) -> list[str]:
    """Entries of ``path`` that neither the trainer nor ensemble.py writes there."""
    if not os.path.isdir(path):
        return []
    return sorted(set(os.listdir(path)) - {*TRAINER_ENTRIES, ENSEMBLE_DIR})


def trainer_entries_present(path: str) -> list[str]:
    """The trainer's entries that ``path`` holds (``train.lock`` aside: it holds no data)."""
    if not os.path.isdir(path):
        return []
    return sorted(set(os.listdir(path)) & (set(TRAINER_ENTRIES) - {LOCK_FILE}))


# --- atomic writes -----------------------------------------------------------------------


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w") -> Iterator[IO[Any]]:
    """A file to write ``path`` through: a temporary file beside it, flushed to disk and
    renamed over ``path`` when the block ends; removed, and ``path`` untouched, if it fails.

    The temporary file is named ``.{name}.{random}.partial{suffix}`` (readers skip it); it is
    created exclusively and with the permissions an ordinary ``open`` would give.
    """
    path = os.fspath(path)
    directory, name = os.path.split(path)
    os.makedirs(directory or ".", exist_ok=True)
    stem, suffix = os.path.splitext(name)
    temporary = os.path.join(directory, f".{stem}.{secrets.token_hex(4)}{PARTIAL_INFIX}{suffix}")
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as error:
        raise OSError(error.errno, error.strerror, path) from error
    try:
        text_options = {} if "b" in mode else {"encoding": "utf-8", "newline": ""}
        with os.fdopen(descriptor, mode, **text_options) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        if isinstance(error, OSError) and error.filename in (None, temporary):
            # A failed write names no file; the user's file is ``path``, not the temporary.
            raise OSError(error.errno, error.strerror or str(error), path) from error
        raise


def write_atomically(path: str | os.PathLike, text: str) -> None:
    """Writes ``text`` to ``path`` through :func:`atomic_file`."""
    with atomic_file(path, "w") as file:
        file.write(text)


def describe_os_error(error: OSError) -> str:
    """One line naming the path(s) and the cause: ``"/sys/runx: Permission denied"``."""
    paths = [p for p in (error.filename, error.filename2) if p is not None]
    cause = error.strerror or str(error)
    return f"{' -> '.join(map(str, paths))}: {cause}" if paths else cause
