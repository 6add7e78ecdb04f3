"""``train_ensemble``: a run from config to score files.

It reads top-down as the data flows: config -> data and folds -> the member axis (every
group's members) and its placement -> checks (weights, run directory) -> run directory ->
programs -> per fold: the groups left to train, trained side by side -> a score file per
group -> each group's result. The config stops here: the fold gets the fields it uses.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

import jax
import numpy as np
from tqdm.auto import tqdm

from data import ImageDataset, iter_folds, load_dataset
from data.folds import validation_split
from ensembling.fusion import sum_rule_accuracy
from ensembling.specs import grid_point_group
from models.pretrained import check_pretrained, preprocessing_for
from rundir import grid_members, grid_points, group_checkpoint_dirs
from training.checkpoints import CheckpointPolicy
from training.config import TrainConfig, validate_config
from training.console import warn
from training.fold import Fold, FoldMembers, FoldOutcome, MemberGroup, StepCallback, train_fold
from training.fold_scores import read_finished, write_fold_scores
from training.placement import Placement, describe_placement, resolve_placement
from training.programs import ProgramFactory, ProgramSpec, RunPrograms, run_programs
from training.results import GroupResult, TrainResult, group_result
from training.run_dir import RunDirectory


def select_folds(config: TrainConfig, dataset: ImageDataset) -> list[Fold]:
    """The folds ``config`` asks for; ValueError if one is missing or a batch does not fit."""
    folds = [
        Fold(index, train, test)
        for index, train, test in iter_folds(dataset)
        if config.folds is None or index in config.folds
    ]
    if config.validation_fraction > 0:
        folds = [
            _held_out(fold, dataset, config.validation_fraction, config.seed) for fold in folds
        ]
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


def _held_out(fold: Fold, dataset: ImageDataset, fraction: float, seed: int) -> Fold:
    """``fold`` with ``fraction`` of its training rows held out (stratified, seeded by the
    run seed and the fold)."""
    train, validation = validation_split(
        fold.train_indices, dataset.labels, fraction, seed=seed, fold=fold.index
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
        swept = tuple(config.sweep or ())
        policy = CheckpointPolicy(
            config.checkpoint_every, config.checkpoint_minutes, config.keep_checkpoints
        )
        for fold in folds:
            started = time.perf_counter()
            bar.set_description(f"fold {fold.index}")
            finished = {
                group.name: read_finished(run_dir, fold, group, seed=config.seed, swept=swept)
                if resume
                else None
                for group in groups
            }
            left = tuple(group for group in groups if finished[group.name] is None)
            trained: dict[str, FoldOutcome] = {}
            if left:
                if resume:
                    _name_group_checkpoints(run_dir, fold, left)
                trained = train_fold(
                    FoldMembers(left, placement, programs, train_rows),
                    dataset,
                    fold,
                    run_dir,
                    seed=config.seed,
                    epochs=config.epochs,
                    checkpoint_policy=policy,
                    eval_batch_size=config.eval_batch_size,
                    weights=config.weights,
                    progress=bar,
                    on_step=on_step,
                )
                if jax.process_index() == 0:
                    for group in left:
                        write_fold_scores(run_dir, dataset, fold, group, trained[group.name],
                                          seed=config.seed, swept=swept)  # fmt: skip
            else:
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
            results[name] = group_result(point_outcomes, folds, labels, seconds[group.name])
    fused = sum_rule_accuracy(
        np.concatenate([g.scores for g in results.values()]),
        labels,
        np.concatenate([g.valid for g in results.values()]),
    )
    return TrainResult(run_dir.path, placement.strategy, placement.step_loop, results, fused)


def _name_group_checkpoints(run_dir: RunDirectory, fold: Fold, groups) -> None:
    """Warns about checkpoints a trainer before one member axis kept per group, when the
    fold has none of its own: this trainer cannot continue from them, so the fold trains
    from its start; they are kept."""
    if os.path.isdir(run_dir.checkpoint_dir(fold.index)):
        return
    for path in group_checkpoint_dirs(run_dir.path, fold.index, [g.name for g in groups]):
        warn(
            f"warning: {path} holds a group's checkpoints from a trainer that kept one per "
            f"group; this trainer keeps one per fold and cannot continue from it: fold "
            f"{fold.index} trains from its start (the folder is kept)"
        )
