"""The (member, data) mesh: members over one axis, each member's batch over the other.

Eight simulated CPU devices (``tests/conftest.py``). A member's numbers must not depend on
how many devices hold it: its batch is augmented whole, split evenly, and its gradients and
BatchNorm statistics are averaged over the data axis, so it computes what one device
computes up to the order of float32 sums. Training amplifies those last-bit differences
(measured 1.5e-7 after one epoch of 18 steps), so the scores are compared with the same
1e-3 tolerance as the other member strategies, far below the 0.1-0.4 that a wrong slice,
key or statistic gives.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from trainer_testing import (
    STRATEGY_SPREAD,
    Killed,
    fast_config,
    kill_at,
    load_scores,
    run,
    small_digits,
)

import train
import training
from training import parse_mesh, resolve_placement
from training.placement import auto_mesh_shape

COMMON = dict(folds=(1,), epochs=1, augment="paper")


@pytest.mark.parametrize(
    "members, mesh",
    [(2, dict(member=2, data=4)), (3, dict(member=1, data=8)), (3, dict(member=3, data=2))],
    ids=["2-members-on-2x4", "3-members-on-1x8", "3-members-on-3x2"],
)
def test_a_mesh_gives_the_scores_of_one_device(tmp_path, shared_runs, members, mesh, capsys):
    result = run(tmp_path, small_digits(), optimizers={"dgrad": members}, strategy="sharded",
                 mesh=mesh, **COMMON)  # fmt: skip
    shape = f"member={mesh['member']} data={mesh['data']}"
    assert f"member strategy: sharded, mesh {shape}" in capsys.readouterr().out
    got = load_scores(result.run_dir, 1, "dgrad")
    loop = shared_runs.finished(optimizers={"dgrad": members}, **COMMON)
    want = load_scores(loop.run_dir, 1, "dgrad")
    assert got["scores"].shape == want["scores"].shape == (members, 300, 10)
    np.testing.assert_allclose(got["scores"], want["scores"], atol=STRATEGY_SPREAD)
    np.testing.assert_array_equal(got["member_seeds"], want["member_seeds"])
    # The members are different networks: agreement is not a coincidence.
    assert np.abs(want["scores"][0] - want["scores"][1]).max() > 1e-2


def test_resume_mid_epoch_on_a_mesh_is_bit_identical(tmp_path):
    common = dict(optimizers={"dgrad": 2}, folds=(0,), epochs=2, augment="paper",
                  strategy="sharded", mesh={"member": 2, "data": 4})  # fmt: skip
    whole = run(tmp_path, small_digits(), "whole", **common)
    config = fast_config(tmp_path, "resumed", **common)

    with pytest.raises(Killed):
        training.train_ensemble(
            config, dataset=small_digits(), progress=False, on_step=kill_at(1, 3)
        )
    training.train_ensemble(config, dataset=small_digits(), progress=False, resume=True)
    np.testing.assert_array_equal(
        load_scores(config.out_dir, 0, "dgrad")["scores"],
        load_scores(whole.run_dir, 0, "dgrad")["scores"],
    )


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(mesh={"member": 4, "data": 4}), "needs 16 devices; 8 are available"),
        (dict(mesh={"member": 1, "data": 3}), "data=3 does not divide batch_size 16"),
        (dict(mesh={"member": 3, "data": 1}), "member=3 is more than the run's 2 members"),
        (dict(mesh={"member": 2, "data": 1}, strategy="loop"), "needs strategy 'sharded'"),
        (dict(mesh={"member": 0, "data": 2}), "is not {'member': M, 'data': D}"),
    ],
)
def test_bad_mesh_shapes_fail_before_anything_is_written(tmp_path, overrides, message):
    config = fast_config(tmp_path, "bad", **{"optimizers": {"dgrad": 2}, "strategy": "sharded",
                                             **overrides})  # fmt: skip
    with pytest.raises(ValueError, match=message):
        training.train_ensemble(config, dataset=small_digits(), progress=False)
    assert not (tmp_path / "bad").exists()


def test_the_cli_parses_and_refuses_mesh_flags(capsys):
    assert parse_mesh("member=2,data=4") == {"member": 2, "data": 4}
    assert parse_mesh("data=8") == {"member": 1, "data": 8}
    with pytest.raises(SystemExit):
        train.main(["--mesh", "member=2,depth=4"])
    assert "expected 'member=M,data=D', got 'depth=4'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.main(["--mesh", "member=two"])
    assert "member size 'two' is not an integer" in capsys.readouterr().err


@pytest.mark.parametrize(
    "members, devices, batch, expected",
    [
        (2, 8, 16, (2, 4)),  # every device busy, members first
        (3, 8, 16, (1, 8)),  # 3 x 2 would leave 2 devices idle
        (14, 8, 30, (7, 1)),  # the paper's SGD group: data must divide 30
        (7, 8, 30, (7, 1)),
        (1, 8, 30, (1, 6)),
        (8, 8, 32, (8, 1)),
        (5, 2, 32, (1, 2)),  # 2 x 1 would pad 5 members to 6 slots
    ],
)
def test_auto_picks_the_mesh_by_hand(members, devices, batch, expected):
    shape = auto_mesh_shape(members, devices, batch)
    assert (shape["member"], shape["data"]) == expected


def test_auto_keeps_all_eight_devices_busy_for_two_members():
    before = resolve_placement(
        "sharded", "python", 2, batch_size=16, mesh_shape={"member": 2, "data": 1}
    )  # the 1-D layout
    after = resolve_placement("auto", "auto", 2, batch_size=16)
    assert jax.device_count() == 8
    assert before.mesh.size == 2 and after.mesh.size == 8
    assert after.mesh_shape == {"member": 2, "data": 4} and after.slots == 2
