"""``train_ensemble``: a run from config to score files, and its result and summary.

It reads top-down as the data flows: config -> data and folds -> the member axis (every
group's members) and its placement -> checks (weights, run directory) -> run directory ->
programs -> per fold: the groups left to train, trained side by side -> a score file per
group.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Sequence

import jax
import numpy as np
from tqdm.auto import tqdm

from data import ImageDataset, iter_folds, load_dataset
from data.folds import validation_split
from ensembling.fusion import sum_rule_accuracy
from ensembling.score_files import ScoreFileError, read_score_file, write_score_file
from ensembling.specs import grid_point_group
from ensembling.tables import accuracy_mean_and_std
from models.pretrained import check_pretrained, preprocessing_for
from rundir import (
    ScoreProvenance,
    grid_members,
    grid_points,
    group_checkpoint_dirs,
    provenance_mismatch,
)
from training.config import TrainConfig, validate_config
from training.fold import (
    Fold,
    FoldMembers,
    FoldOutcome,
    MemberGroup,
    StepCallback,
    train_fold,
    warn,
)
from training.members import member_seed
from training.placement import Placement, describe_placement, resolve_placement
from training.programs import ProgramFactory, ProgramSpec, RunPrograms, run_programs
from training.run_dir import RunDirectory


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


def select_folds(config: TrainConfig, dataset: ImageDataset) -> list[Fold]:
    """The folds ``config`` asks for; ValueError if one is missing or a batch does not fit."""
    folds = [
        Fold(index, train, test)
        for index, train, test in iter_folds(dataset)
        if config.folds is None or index in config.folds
    ]
    if config.validation_fraction > 0:
        folds = [_held_out(fold, dataset, config) for fold in folds]
    if config.folds is not None:
        missing = sorted(set(config.folds) - {fold.index for fold in folds})
        if missing:
            raise ValueError(
                f"folds {missing} do not exist; {dataset.name} has "
                f"{len(dataset.folds)} folds (0-based)"
            )
    smallest = min(len(fold.train_indices) for fold in folds)
    if config.batch_size > smallest:
        raise ValueError(
            f"batch_size {config.batch_size} is larger than the smallest training "
            f"split ({smallest} images) of {dataset.name}"
        )
    return folds


def _held_out(fold: Fold, dataset: ImageDataset, config: TrainConfig) -> Fold:
    """``fold`` with ``config.validation_fraction`` of its training rows held out."""
    train, validation = validation_split(
        fold.train_indices,
        dataset.labels,
        config.validation_fraction,
        seed=config.seed,
        fold=fold.index,
    )
    return fold._replace(train_indices=train, validation_indices=validation)


def _check_weights(config: TrainConfig, num_classes: int) -> None:
    """Opens the weight file and matches it against the model, without initialising it."""
    if config.weights is None:
        return
    placement = Placement("loop", "loop", "python", None, 1, chunk=1)
    spec = ProgramSpec.for_run(config, num_classes, placement, preprocessing_for(config.weights))
    programs = RunPrograms(spec)
    shapes = jax.eval_shape(programs.init, jax.random.split(jax.random.key(0), 1))
    one_member = (
        lambda tree: jax.tree.map(  # noqa: E731
            lambda leaf: jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype), tree
        )
    )
    variables = {"params": one_member(shapes.params), "batch_stats": one_member(shapes.batch_stats)}
    check_pretrained(config.weights, variables, stride_placement=config.stride_placement)


def _expected_provenance(
    config: TrainConfig, group: MemberGroup, fold: Fold, digest: str
) -> ScoreProvenance:
    """What a fold/group's score file must say it was trained with."""
    return ScoreProvenance(
        config_digest=digest,
        group=group.name,
        fold=fold.index,
        member_seeds=np.array(
            [member_seed(config.seed, group.name, m) for m in group.member_indices], np.int64
        ),
        hyperparameter_names=tuple(config.sweep or ()),
        hyperparameter_values=group.swept_values,
    )


def _read_finished(
    run_dir: RunDirectory, config: TrainConfig, fold: Fold, group: MemberGroup
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
    problem = provenance_mismatch(
        saved.provenance, _expected_provenance(config, group, fold, run_dir.digest)
    )
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


def train_ensemble(
    config: TrainConfig,
    *,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    on_step: StepCallback | None = None,
    dataset: ImageDataset | None = None,
    devices: Sequence[jax.Device] | None = None,
    build_programs: ProgramFactory = run_programs,
) -> TrainResult:
    """Trains every optimizer group's members on every fold and writes their scores.

    Every member of every group and grid point sits on one member axis: a fold trains them
    side by side with one set of compiled programs, and writes a score file per group.
    Everything is checked (config, data, folds, weights, run directory) before anything is
    written or deleted.

    Args:
      config: the run (see :class:`TrainConfig`).
      resume: continue the run in ``config.out_dir`` from its last checkpoints; folds and
        groups with a good score file are not trained again.
      overwrite: replace the run in ``config.out_dir``; only what the trainer wrote is
        removed, and a directory holding anything else is refused.
      progress: show a tqdm progress bar over epochs.
      on_step: called as ``on_step(fold, epoch, step)`` after each step of the Python step
        loop (for logging, or to interrupt a run); with ``step_loop="scan"`` the host sees
        no step boundary, so it is not called.
      dataset: an already loaded data set to use instead of loading ``config.dataset``.
      devices: the devices of the ``sharded`` strategy (default: all of them).
      build_programs: ``ProgramSpec -> RunPrograms``; the default caches compiled programs
        across calls. Pass another factory to wrap or instrument the programs.

    Returns:
      A :class:`TrainResult` with the stand-alone and fused accuracies per group.

    Example:
      >>> result = train_ensemble(TrainConfig(optimizers={"dgrad": 2}, epochs=1,
      ...                                     out_dir="/tmp/dgrad-run"))  # doctest: +SKIP
    """
    validate_config(config)
    if dataset is None:
        dataset = load_dataset(config.dataset, config.image_size, data_dir=config.data_dir)
    folds = select_folds(config, dataset)
    num_classes = len(dataset.class_names)
    points = grid_points(config.sweep)
    groups = tuple(
        MemberGroup(name, *grid_members(config.sweep, count))
        for name, count in config.optimizers.items()
    )
    placement = resolve_placement(
        config.strategy,
        config.step_loop,
        sum(group.members for group in groups),
        batch_size=config.batch_size,
        mesh_shape=dict(config.mesh) if config.mesh is not None else None,
        devices=devices,
        member_chunk=config.member_chunk,
    )
    _check_weights(config, num_classes)
    train_rows = max(len(fold.train_indices) for fold in folds)
    labels = np.concatenate([dataset.labels[fold.test_indices] for fold in folds])

    planned_folds = [fold.index for fold in folds]
    with RunDirectory.open(config, planned_folds, resume=resume, overwrite=overwrite) as run_dir:
        print(describe_placement(placement, config.strategy, config.step_loop))
        spec = ProgramSpec.for_run(config, num_classes, placement,
                                   preprocessing_for(config.weights))  # fmt: skip
        programs = build_programs(spec)
        bar = tqdm(total=len(folds) * config.epochs, unit="epoch",
                   disable=not progress or jax.process_index())  # fmt: skip
        outcomes: dict[str, list[FoldOutcome]] = {group.name: [] for group in groups}
        seconds = dict.fromkeys(outcomes, 0.0)
        for fold in folds:
            started = time.perf_counter()
            bar.set_description(f"fold {fold.index}")
            finished = {
                group.name: _read_finished(run_dir, config, fold, group) if resume else None
                for group in groups
            }
            left = tuple(group for group in groups if finished[group.name] is None)
            if left:
                axis = FoldMembers(config, left, placement, programs, train_rows)
                trained = _train_and_write(axis, dataset, fold, run_dir, resume, bar, on_step)
            else:
                trained = {}
                bar.update(config.epochs)
            if jax.process_index() == 0 and not config.keep_checkpoints:
                run_dir.remove_checkpoints(fold.index)
            elapsed = time.perf_counter() - started
            for group in groups:
                outcomes[group.name].append(finished[group.name] or trained[group.name])
                seconds[group.name] += elapsed if group.name in trained else 0.0
        bar.close()
    results: dict[str, GroupResult] = {}
    for group in groups:
        per_point = config.optimizers[group.name]
        for index, point in enumerate(points):
            rows = slice(index * per_point, (index + 1) * per_point)
            point_outcomes = [FoldOutcome(o.scores[rows], o.diverged[rows])
                              for o in outcomes[group.name]]  # fmt: skip
            name = grid_point_group(group.name, point.items()) if point else group.name
            results[name] = _group_result(point_outcomes, folds, labels, seconds[group.name])
    fused = sum_rule_accuracy(
        np.concatenate([g.scores for g in results.values()]),
        labels,
        np.concatenate([g.valid for g in results.values()]),
    )
    return TrainResult(run_dir.path, placement.strategy, placement.step_loop, results, fused)


def _train_and_write(axis, dataset, fold, run_dir, resume, bar, on_step):
    """Trains the fold's groups left to train and writes a score file for each."""
    config = axis.config
    if resume:
        for path in group_checkpoint_dirs(run_dir.path, fold.index, [g.name for g in axis.groups]):
            warn(
                f"warning: {path} holds a group's checkpoints from a trainer that kept one per "
                f"group; this trainer keeps one per fold and cannot continue from it: fold "
                f"{fold.index} trains from its start (the folder is kept)"
            )
    trained = train_fold(axis, dataset, fold, run_dir, progress=bar, on_step=on_step)
    if jax.process_index() == 0:
        for group in axis.groups:
            outcome = trained[group.name]
            # The file says what it was trained with, as _read_finished will check it.
            provenance = _expected_provenance(config, group, fold, run_dir.digest)
            names, values = provenance.hyperparameter_names, provenance.hyperparameter_values
            extra = (
                {"hyperparameters": {k: values[:, j] for j, k in enumerate(names)}} if names else {}
            )
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
    return trained


def _group_result(outcomes, folds, labels, seconds) -> GroupResult:
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
