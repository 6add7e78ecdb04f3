"""One member axis for the whole run: every group's members train side by side, a member's
numbers do not depend on who trains beside it, and a fold's checkpoint serves its groups."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from trainer_testing import STRATEGY_SPREAD, load_scores, run, small_digits

import training

# Two groups of different optimizers and sizes: the axis holds sgd 0, sgd 1, adam 0.
TOGETHER = dict(optimizers={"sgd": 2, "adam": 1}, folds=(1,), epochs=1, augment="paper")


def _alone(shared_runs, group: str, **overrides):
    common = {**TOGETHER, "optimizers": {group: TOGETHER["optimizers"][group]}, **overrides}
    return shared_runs.finished(**common)


def test_a_member_trains_as_it_does_alone_beside_other_groups(shared_runs):
    # loop calls one member's program per member: the same arithmetic as a run of that
    # group alone, where the optimizer switch has one branch instead of two (measured:
    # bit-identical on XLA:CPU).
    together = shared_runs.finished(**TOGETHER)
    for group in TOGETHER["optimizers"]:
        np.testing.assert_array_equal(
            load_scores(together.run_dir, 1, group)["scores"],
            load_scores(_alone(shared_runs, group).run_dir, 1, group)["scores"],
        )


def test_vmap_trains_every_group_in_one_program_with_the_same_numbers(shared_runs):
    # Under vmap each member's optimizer is picked by its rule among all the run's (every
    # update computed, one kept); the convolutions are grouped over the members, which sums
    # in another order than loop: within the spread two strategies show.
    together = shared_runs.finished(strategy="vmap", **TOGETHER)
    assert together.strategy == "vmap"
    for group in TOGETHER["optimizers"]:
        np.testing.assert_allclose(
            load_scores(together.run_dir, 1, group)["scores"],
            load_scores(_alone(shared_runs, group).run_dir, 1, group)["scores"],
            atol=STRATEGY_SPREAD,
        )


def test_member_chunks_train_what_the_whole_axis_trains(tmp_path, shared_runs):
    # 3 members in chunks of 2: 4 slots, the chunk program called twice per step.
    chunked = run(tmp_path, small_digits(), "chunked", strategy="vmap", member_chunk=2,
                  **TOGETHER)  # fmt: skip
    whole = shared_runs.finished(strategy="vmap", **TOGETHER)
    for group in TOGETHER["optimizers"]:
        np.testing.assert_allclose(
            load_scores(chunked.run_dir, 1, group)["scores"],
            load_scores(whole.run_dir, 1, group)["scores"],
            atol=STRATEGY_SPREAD,
        )
    with pytest.raises(ValueError, match="member_chunk 2 needs the vmap inner strategy"):
        run(tmp_path, small_digits(), "loop-chunked", strategy="loop", member_chunk=2, **TOGETHER)


def test_a_fold_checkpoint_restores_the_groups_left_to_train(tmp_path, shared_runs):
    """A finished fold's kept checkpoint holds both groups; with one group's score file gone,
    resume restores that group's members from it and trains no step."""
    config = shared_runs.finished_copy(tmp_path, keep_checkpoints=True, **TOGETHER)
    original = {g: load_scores(config.out_dir, 1, g) for g in TOGETHER["optimizers"]}
    adam_file = Path(config.out_dir) / "scores" / "fold1" / "adam.npz"
    sgd_file = Path(config.out_dir) / "scores" / "fold1" / "sgd.npz"
    sgd_bytes = sgd_file.read_bytes()
    adam_file.unlink()
    steps = []
    training.train_ensemble(config, dataset=small_digits(), progress=False, resume=True,
                         on_step=lambda *where: steps.append(where))  # fmt: skip
    assert steps == []  # restored at its last epoch
    assert sgd_file.read_bytes() == sgd_bytes  # reused, not rewritten
    np.testing.assert_array_equal(
        load_scores(config.out_dir, 1, "adam")["scores"], original["adam"]["scores"]
    )


def test_checkpoints_of_a_trainer_that_kept_one_per_group_are_named_and_kept(
    tmp_path, shared_runs, capsys
):
    """The layout before one member axis: ``checkpoints/fold{F}/{group}/``. Resume cannot
    continue from it; it says so, keeps the folder and trains the fold from its start."""
    common = dict(optimizers={"diffgrad": 2}, folds=(0,), epochs=3, augment="paper")
    config = shared_runs.interrupted(tmp_path, **common)
    fold = Path(config.out_dir) / "checkpoints" / "fold0"
    shutil.move(fold / "members", fold / "diffgrad")  # as the earlier trainer named it
    steps = []
    training.train_ensemble(config, dataset=small_digits(), progress=False, resume=True,
                         on_step=lambda *where: steps.append(where))  # fmt: skip
    error = capsys.readouterr().err
    assert f"{fold / 'diffgrad'} holds a group's checkpoints" in error
    assert "trains from its start (the folder is kept)" in error
    assert {epoch for _, epoch, _ in steps} == {0, 1, 2}
    assert (fold / "diffgrad" / "1").is_dir()
    np.testing.assert_array_equal(
        load_scores(config.out_dir, 0, "diffgrad")["scores"],
        load_scores(shared_runs.finished(**common).run_dir, 0, "diffgrad")["scores"],
    )
