"""One fold of a run: every member of every group it trains, side by side on one axis.

The data flow of a fold, in the order of :func:`train_fold`: member keys -> init (and
pretrained weights) -> the fold's arrays on the device(s) -> resume from the newest good
checkpoint -> per epoch: each member's order and augmentation key -> steps -> divergence
and logs -> checkpoint -> test-set softmax scores per member, split by group.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from data import ImageDataset
from training.checkpoints import CheckpointPolicy
from training.console import warn
from training.members import epoch_randomness, load_pretrained_members, slot_keys
from training.placement import Placement
from training.programs import GroupData, RunPrograms, predict_members
from training.run_dir import RunDirectory
from training.transfer import replicate, shard_members, to_host

StepCallback = Callable[[int, int, int], None]


class Fold(NamedTuple):
    """One fold of the data set's protocol: its index and row indices; ``validation_indices``
    are held out of the training split (``--validation-fraction``), empty without."""

    index: int
    train_indices: np.ndarray
    test_indices: np.ndarray
    validation_indices: np.ndarray = np.zeros(0, np.int64)


@dataclasses.dataclass(frozen=True)
class MemberGroup:
    """One optimizer group's members: a label on a stretch of the run's member axis.

    Attributes:
      name: the group name (``"dgrad"``), also the optimizer its members use.
      member_indices: each member's index in a plain run (its keys); a sweep repeats
        ``0 .. n-1`` at each grid point.
      swept_values: float64 [members, swept hyperparameters], each member's grid point.
    """

    name: str
    member_indices: tuple[int, ...]
    swept_values: np.ndarray

    @property
    def members(self) -> int:
        return len(self.member_indices)


@dataclasses.dataclass(frozen=True)
class FoldMembers:
    """The members a fold trains: its groups one after another on one member axis, then
    padding slots up to the placement's slot count (their scores are dropped).

    Attributes:
      groups: the groups trained, in axis order.
      placement: where the members run.
      programs: the run's compiled programs.
      train_rows: rows of the padded training array (the largest fold's training split).
    """

    groups: tuple[MemberGroup, ...]
    placement: Placement
    programs: RunPrograms
    train_rows: int

    @property
    def members(self) -> int:
        return sum(group.members for group in self.groups)

    @property
    def slots(self) -> int:
        return self.placement.slots_for(self.members)

    def layout(self) -> list[tuple[str, int]]:
        """``(group, members)`` in axis order: what a checkpoint of this axis holds."""
        return [(group.name, group.members) for group in self.groups]

    def spans(self) -> dict[str, slice]:
        """Each group's slots."""
        spans, start = {}, 0
        for group in self.groups:
            spans[group.name] = slice(start, start + group.members)
            start += group.members
        return spans

    def slot_members(self) -> list[tuple[str, int]]:
        """Each slot's ``(group, member index)``, which gives its keys; the padding slots
        continue the first group's indices."""
        real = [(group.name, m) for group in self.groups for m in group.member_indices]
        first = self.groups[0]
        after = max(first.member_indices) + 1
        return real + [(first.name, after + k) for k in range(self.slots - self.members)]

    def slot_swept_values(self) -> np.ndarray:
        """Each slot's grid point; padding slots repeat the first member's."""
        values = np.concatenate([group.swept_values for group in self.groups])
        return np.concatenate([values, np.repeat(values[:1], self.slots - self.members, 0)])


class FoldOutcome(NamedTuple):
    """A trained fold/group: softmax scores [members, n_test, classes], bool diverged, and
    the scores on the validation rows [members, n_validation, classes] (None without)."""

    scores: np.ndarray
    diverged: np.ndarray
    validation_scores: np.ndarray | None = None


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


def _initial_state(axis: FoldMembers, init_keys: jax.Array, weights: str | None) -> Any:
    programs = axis.programs
    state = programs.init(init_keys, jnp.asarray(axis.slot_swept_values()))
    if weights is None:
        return state
    return load_pretrained_members(
        state,
        weights,
        init_optimizer=programs.tx.init,
        stride_placement=programs.model.stride_placement,
        sharding=programs.member_sharding,
    )


def train_fold(
    axis: FoldMembers,
    dataset: ImageDataset,
    fold: Fold,
    run_dir: RunDirectory,
    *,
    seed: int,
    epochs: int,
    checkpoint_policy: CheckpointPolicy,
    eval_batch_size: int,
    weights: str | None = None,
    progress: tqdm | None = None,
    on_step: StepCallback | None = None,
) -> dict[str, FoldOutcome]:
    """Trains every member of ``axis`` on one fold; returns each group's test scores and
    divergence.

    Resumes from the fold's newest good checkpoint when there is one.

    Args:
      axis: the members, their placement and programs.
      dataset, fold: the data and this fold's rows.
      run_dir: where the logs and checkpoints go.
      seed: the run seed (with each member's group and index, its keys).
      epochs: epochs to train (counting those a checkpoint restores).
      checkpoint_policy: when to save.
      eval_batch_size: test images per prediction call.
      weights: ImageNet weights every member starts from (each keeps its own new head).
      progress: a tqdm bar advanced per epoch.
      on_step: called as ``on_step(fold, epoch, step)`` after each step of a Python loop.
    """
    placement, programs = axis.placement, axis.programs
    slots, members, spans = axis.slots, axis.members, axis.spans()
    slot_members = axis.slot_members()
    init_keys, data_keys = slot_keys(seed, fold.index, slot_members)
    rules = programs.rules([group for group, _ in slot_members])
    state = _initial_state(axis, init_keys, weights)
    data = _fold_data(dataset, fold, axis.train_rows, placement)
    batch_size = programs.spec.batch_size
    steps = len(fold.train_indices) // batch_size

    diverged = np.zeros(slots, bool)
    start_epoch, log_rows = 0, {group.name: [] for group in axis.groups}
    last_save = time.monotonic()
    with run_dir.checkpoints(fold.index) as checkpoints:
        restored = checkpoints.restore_latest(
            state, diverged, axis.layout(), lambda tree: _place_members(tree, placement), warn
        )
        if restored is not None:
            start_epoch, state, diverged, log_rows = restored
        if progress is not None:
            progress.update(start_epoch)
        for epoch in range(start_epoch, epochs):
            orders, augment_keys = epoch_randomness(
                data_keys, jnp.asarray(epoch), data.num_train, axis.train_rows
            )
            # Placed as the step returns it, so the second step reuses the first's program.
            metrics = shard_members(np.zeros((slots, 3), np.float32), placement.mesh)
            if placement.step_loop == "scan":
                run_epoch = programs.train_epoch(steps)
                state, metrics = run_epoch(state, metrics, orders, augment_keys, data, rules)
            else:
                for step in range(steps):
                    state, metrics = programs.train_step(
                        state, metrics, orders, step, augment_keys, data, rules
                    )
                    if on_step is not None:
                        on_step(fold.index, epoch, step)
            loss_sum, correct, counted = to_host(metrics).T
            loss = loss_sum / counted
            accuracy = correct / (counted * batch_size)
            for name, span in spans.items():
                for m in np.flatnonzero(~np.isfinite(loss[span]) & ~diverged[span]):
                    warn(
                        f"warning: {name} member {m} diverged in fold {fold.index}, epoch "
                        f"{epoch + 1} (loss {loss[span][m]}); it is excluded from fusion"
                    )
            diverged |= ~np.isfinite(loss)
            for name, span in spans.items():
                log_rows[name] += [
                    dict(
                        epoch=epoch + 1,
                        member=m,
                        loss=float(loss[span][m]),
                        train_accuracy=float(accuracy[span][m]),
                        diverged=bool(diverged[span][m]),
                    )
                    for m in range(span.stop - span.start)
                ]
                if jax.process_index() == 0:
                    run_dir.write_log(fold.index, name, log_rows[name])
            if checkpoint_policy.due(epoch, epochs, time.monotonic() - last_save):
                checkpoints.save(
                    epoch + 1, state, diverged.copy(), axis.layout(),
                    {name: list(rows) for name, rows in log_rows.items()},
                )  # fmt: skip
                last_save = time.monotonic()
            if progress is not None:
                healthy = loss[:members][~diverged[:members]]
                progress.set_postfix(loss=f"{healthy.mean():.4f}" if healthy.size else "nan")
                progress.update(1)
    # The validation rows ride along in the test set's prediction calls.
    predicted = np.concatenate([fold.test_indices, fold.validation_indices])
    scores = predict_members(programs, state, dataset.images[predicted], eval_batch_size)
    n_test = len(fold.test_indices)
    outcomes = {}
    for name, span in spans.items():
        group_scores, group_diverged = scores[span], diverged[span]
        # The loss is computed before each update, so a last update that breaks a member
        # shows only in its scores.
        for m in np.flatnonzero(~np.isfinite(group_scores).all(axis=(1, 2)) & ~group_diverged):
            warn(f"warning: {name} member {m} gives non-finite test scores in fold "
                 f"{fold.index}; it is excluded from fusion")  # fmt: skip
            group_diverged[m] = True
        validation = group_scores[:, n_test:] if len(fold.validation_indices) else None
        outcomes[name] = FoldOutcome(group_scores[:, :n_test], group_diverged, validation)
    return outcomes
