"""One optimizer group on one fold: epochs, divergence, checkpoints, test scores.

The data flow of a fold, in the order of :func:`train_fold`: member keys -> init (and
pretrained weights) -> the fold's arrays on the device(s) -> resume from the newest good
checkpoint -> per epoch: each member's order and augmentation key -> steps -> divergence
and log -> checkpoint -> test-set softmax scores per member.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from data import ImageDataset
from training.config import TrainConfig
from training.members import epoch_randomness, load_pretrained_members, member_keys
from training.placement import Placement, replicate, shard_members, to_host
from training.programs import GroupData, GroupPrograms, predict_members
from training.run_dir import RunDirectory

StepCallback = Callable[[str, int, int, int], None]


class Fold(NamedTuple):
    """One fold of the data set's protocol: its index and row indices; ``validation_indices``
    are held out of the training split (``--validation-fraction``), empty without."""

    index: int
    train_indices: np.ndarray
    test_indices: np.ndarray
    validation_indices: np.ndarray = np.zeros(0, np.int64)


@dataclasses.dataclass(frozen=True)
class GroupRun:
    """One optimizer group of a run, with what every fold of it shares.

    Attributes:
      config: the run's config.
      name: the group name (``"dgrad"``).
      members: how many members it trains (every grid point's, for a sweep).
      placement: the members' strategy, step loop and mesh.
      programs: its compiled programs.
      train_rows: rows of the padded training array (the largest fold's training split).
      member_indices: each member's index in a plain run (its keys); a sweep repeats
        ``0 .. n-1`` at each grid point.
      swept_values: float64 [members, swept hyperparameters], each member's grid point.
    """

    config: TrainConfig
    name: str
    members: int
    placement: Placement
    programs: GroupPrograms
    train_rows: int
    member_indices: tuple[int, ...]
    swept_values: np.ndarray

    def slot_indices(self) -> list[int]:
        """The member index of each slot; padding slots continue after the members."""
        extra = range(self.members, self.placement.slots)
        return [*self.member_indices, *extra]

    def slot_swept_values(self) -> np.ndarray:
        """``swept_values`` for every slot; padding slots repeat the first member's."""
        padding = self.placement.slots - self.members
        return np.concatenate([self.swept_values, np.repeat(self.swept_values[:1], padding, 0)])


class FoldOutcome(NamedTuple):
    """A trained fold/group: softmax scores [members, n_test, classes], bool diverged, and
    the scores on the validation rows [members, n_validation, classes] (None without)."""

    scores: np.ndarray
    diverged: np.ndarray
    validation_scores: np.ndarray | None = None


def warn(message: str) -> None:
    """Prints a warning above the progress bar, once per run (process 0 of several)."""
    if jax.process_index() == 0:
        tqdm.write(message, file=sys.stderr)


def _fold_data(dataset: ImageDataset, fold: Fold, rows: int, placement: Placement) -> GroupData:
    images = np.zeros((rows,) + dataset.images.shape[1:], np.uint8)
    labels = np.zeros((rows,), np.int32)
    images[: len(fold.train_indices)] = dataset.images[fold.train_indices]
    labels[: len(fold.train_indices)] = dataset.labels[fold.train_indices]
    return GroupData(
        replicate(images, placement.mesh),
        replicate(labels, placement.mesh),
        jnp.asarray(len(fold.train_indices), jnp.int32),
    )


def _place_members(tree: Any, placement: Placement) -> Any:
    """Host arrays with a leading slot axis, laid out as the group's member states are."""
    if placement.mesh is None:
        return jax.tree.map(jnp.asarray, tree)
    return shard_members(tree, placement.mesh)


def _initial_state(group: GroupRun, init_keys: jax.Array) -> Any:
    state = group.programs.init(init_keys, jnp.asarray(group.slot_swept_values()))
    if group.config.weights is None:
        return state
    return load_pretrained_members(
        state,
        group.config.weights,
        init_optimizer=group.programs.tx.init,
        stride_placement=group.programs.model.stride_placement,
        sharding=group.programs.member_sharding,
    )


def _checkpoint_due(config: TrainConfig, epoch: int, seconds_since_save: float) -> bool:
    """Whether to checkpoint after ``epoch`` (0-based): every ``checkpoint_every`` epochs and
    after the last, or, by default, once ``checkpoint_minutes`` have passed since the last
    save. Every process takes process 0's answer: an orbax save is a collective."""
    last = epoch + 1 == config.epochs
    if config.checkpoint_every is not None:
        due = config.checkpoint_every > 0 and ((epoch + 1) % config.checkpoint_every == 0 or last)
    else:
        # Saving every epoch cost a third of `python train.py` (59 s against 40 s, measured);
        # a checkpoint only saves the work since the previous one.
        due = seconds_since_save >= 60 * config.checkpoint_minutes or (
            last and config.keep_checkpoints
        )
    if jax.process_count() > 1:
        due = bool(multihost_utils.broadcast_one_to_all(np.bool_(due)))
    return due


def train_fold(
    group: GroupRun,
    dataset: ImageDataset,
    fold: Fold,
    run_dir: RunDirectory,
    *,
    progress: tqdm | None = None,
    on_step: StepCallback | None = None,
) -> FoldOutcome:
    """Trains one group's members on one fold and returns their test scores and divergence.

    Resumes from the newest good checkpoint of this fold and group when there is one.
    """
    config, placement, programs = group.config, group.placement, group.programs
    slots, members = placement.slots, group.members
    init_keys, data_keys = member_keys(
        config.seed, group.name, fold.index, slots, group.slot_indices()
    )
    state = _initial_state(group, init_keys)
    data = _fold_data(dataset, fold, group.train_rows, placement)
    steps = len(fold.train_indices) // config.batch_size
    rule = programs.rule(group.name)  # which of the shared step's optimizers this group uses

    diverged = np.zeros(slots, bool)
    start_epoch, log_rows = 0, []
    last_save = time.monotonic()
    with run_dir.checkpoints(fold.index, group.name) as checkpoints:
        restored = checkpoints.restore_latest(
            state, diverged, members, lambda tree: _place_members(tree, placement), warn
        )
        if restored is not None:
            start_epoch, state, diverged, log_rows = restored
        if progress is not None:
            progress.update(start_epoch)
        for epoch in range(start_epoch, config.epochs):
            orders, augment_keys = epoch_randomness(
                data_keys, jnp.asarray(epoch), data.num_train, group.train_rows
            )
            # Placed as the step returns it, so the second step reuses the first's program.
            metrics = shard_members(np.zeros((slots, 3), np.float32), placement.mesh)
            if placement.step_loop == "scan":
                run_epoch = programs.train_epoch(steps)
                state, metrics = run_epoch(state, metrics, orders, augment_keys, data, rule=rule)
            else:
                for step in range(steps):
                    state, metrics = programs.train_step(
                        state, metrics, orders, step, augment_keys, data, rule=rule
                    )
                    if on_step is not None:
                        on_step(group.name, fold.index, epoch, step)
            loss_sum, correct, counted = to_host(metrics).T
            loss = loss_sum / counted
            accuracy = correct / (counted * config.batch_size)
            for m in np.flatnonzero(~np.isfinite(loss[:members]) & ~diverged[:members]):
                warn(
                    f"warning: {group.name} member {m} diverged in fold {fold.index}, epoch "
                    f"{epoch + 1} (loss {loss[m]}); it is excluded from fusion"
                )
            diverged |= ~np.isfinite(loss)
            log_rows += [
                dict(
                    epoch=epoch + 1,
                    member=m,
                    loss=float(loss[m]),
                    train_accuracy=float(accuracy[m]),
                    diverged=bool(diverged[m]),
                )
                for m in range(members)
            ]
            if jax.process_index() == 0:
                run_dir.write_log(fold.index, group.name, log_rows)
            if _checkpoint_due(config, epoch, time.monotonic() - last_save):
                checkpoints.save(epoch + 1, state, diverged.copy(), list(log_rows), members)
                last_save = time.monotonic()
            if progress is not None:
                healthy = loss[:members][~diverged[:members]]
                progress.set_postfix(loss=f"{healthy.mean():.4f}" if healthy.size else "nan")
                progress.update(1)
    # The validation rows ride along in the test set's prediction calls.
    predicted = np.concatenate([fold.test_indices, fold.validation_indices])
    scores = predict_members(
        programs, state, dataset.images[predicted], config.eval_batch_size
    )[:members]
    diverged = diverged[:members]
    # The loss is computed before each update, so a last update that breaks a member shows
    # only in its scores.
    for m in np.flatnonzero(~np.isfinite(scores).all(axis=(1, 2)) & ~diverged):
        warn(f"warning: {group.name} member {m} gives non-finite test scores in fold "
             f"{fold.index}; it is excluded from fusion")  # fmt: skip
        diverged[m] = True
    n_test = len(fold.test_indices)
    validation = scores[:, n_test:] if len(fold.validation_indices) else None
    return FoldOutcome(scores[:, :n_test], diverged, validation)
