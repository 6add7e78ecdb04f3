"""A fold/group's score file as the trainer writes it, and when resume may trust it.

The file says what it was trained with (``rundir.ScoreProvenance``: the run's settings
digest, group, fold, member seeds, grid points), and :func:`read_finished` reuses it only
when all of that, and the fold's test and validation rows, are this run's.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from data import ImageDataset
from ensembling.score_files import ScoreFileError, read_score_file, write_score_file
from rundir import ScoreProvenance, provenance_mismatch
from training.console import warn
from training.fold import Fold, FoldOutcome, MemberGroup
from training.members import member_seed
from training.run_dir import RunDirectory


def expected_provenance(
    group: MemberGroup, fold: Fold, *, seed: int, swept: Sequence[str], digest: str
) -> ScoreProvenance:
    """What a fold/group's score file must say it was trained with."""
    return ScoreProvenance(
        config_digest=digest,
        group=group.name,
        fold=fold.index,
        member_seeds=np.array([member_seed(seed, group.name, m) for m in group.member_indices],
                              np.int64),
        hyperparameter_names=tuple(swept),
        hyperparameter_values=group.swept_values,
    )  # fmt: skip


def read_finished(
    run_dir: RunDirectory, fold: Fold, group: MemberGroup, *, seed: int, swept: Sequence[str]
) -> FoldOutcome | None:
    """A finished fold/group's saved scores, or None (with a warning) if it must train again:
    the file is missing or damaged, or was not trained with exactly this run's settings,
    members and grid points on this fold's test split."""
    path = run_dir.scores_path(fold.index, group.name)
    if not os.path.exists(path):
        return None
    try:
        saved = read_score_file(path)
    except (ScoreFileError, OSError) as error:
        warn(f"warning: {error}; fold {fold.index} of {group.name} is trained again")
        return None
    expected = expected_provenance(group, fold, seed=seed, swept=swept, digest=run_dir.digest)
    problem = provenance_mismatch(saved.provenance, expected)
    if problem is None and not np.array_equal(saved.test_indices, fold.test_indices):
        problem = "its test samples are not this fold's"
    if problem is None and not np.array_equal(
        saved.validation_indices_or_empty, fold.validation_indices
    ):
        problem = "its validation samples are not this fold's"
    if problem is not None:
        warn(
            f"warning: score file {path} is not reused: {problem}; fold {fold.index} of "
            f"{group.name} is trained again"
        )
        return None
    return FoldOutcome(saved.scores, saved.diverged, saved.validation_scores)


def write_fold_scores(
    run_dir: RunDirectory,
    dataset: ImageDataset,
    fold: Fold,
    group: MemberGroup,
    outcome: FoldOutcome,
    *,
    seed: int,
    swept: Sequence[str],
) -> None:
    """Writes a trained fold/group's score file, saying what it was trained with as
    :func:`read_finished` will check it."""
    provenance = expected_provenance(group, fold, seed=seed, swept=swept, digest=run_dir.digest)
    names, values = provenance.hyperparameter_names, provenance.hyperparameter_values
    extra = {"hyperparameters": {k: values[:, j] for j, k in enumerate(names)}} if names else {}
    if outcome.validation_scores is not None:
        extra["validation"] = dict(
            scores=outcome.validation_scores,
            labels=dataset.labels[fold.validation_indices],
            indices=fold.validation_indices,
        )
    write_score_file(
        run_dir.scores_path(fold.index, group.name),
        scores=outcome.scores,
        labels=dataset.labels[fold.test_indices],
        test_indices=fold.test_indices,
        class_names=dataset.class_names,
        member_seeds=provenance.member_seeds,
        diverged=outcome.diverged,
        optimizer=provenance.group,
        fold=provenance.fold,
        dataset=dataset.name,
        config_digest=provenance.config_digest,
        **extra,
    )
