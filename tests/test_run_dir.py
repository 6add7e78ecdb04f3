"""The run directory under misuse: overwrite, bad weights, damaged files, locks, Ctrl-C."""

from __future__ import annotations

import dataclasses
import fcntl
import os
import signal
import subprocess
import sys
from pathlib import Path

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
from rundir import RunDirectoryError

ROOT = Path(__file__).resolve().parent.parent
TINY_CLI = ["--optimizers", "sgd:1", "--epochs", "1", "--folds", "0", "--batch-size", "64",
            "--strategy", "loop", "--no-progress"]  # fmt: skip
RESUMABLE = dict(optimizers={"diffgrad": 2}, folds=(0,), epochs=3, augment="paper")


@pytest.fixture
def uninterrupted(shared_runs):
    return shared_runs.finished(**RESUMABLE)


@pytest.fixture
def interrupted(tmp_path, shared_runs):
    """This test's copy of the RESUMABLE run killed in its second epoch, after the checkpoint
    of its first; the config that resumes it."""
    return shared_runs.interrupted(tmp_path, **RESUMABLE)


# --- 1. --overwrite validates first and removes only what the trainer wrote ---------------


def test_overwrite_checks_everything_before_deleting(tmp_path, capsys):
    out = tmp_path / "run"
    assert train.main([*TINY_CLI, "--out-dir", str(out)]) == 0
    before = (out / "scores" / "fold0" / "sgd.npz").read_bytes()
    assert train.main([*TINY_CLI, "--out-dir", str(out), "--overwrite", "--epochs", "0"]) == 2
    assert "epochs must be >= 1" in capsys.readouterr().err
    assert (out / "scores" / "fold0" / "sgd.npz").read_bytes() == before

    (out / "sub").mkdir()
    (out / "sub" / "thesis.tex").write_text("months of work")
    assert train.main([*TINY_CLI, "--out-dir", str(out), "--overwrite"]) == 2
    error = capsys.readouterr().err
    assert "removes only what the trainer writes" in error and "'sub'" in error
    assert (out / "sub" / "thesis.tex").read_text() == "months of work"
    assert (out / "config.json").exists() and (out / "scores" / "fold0" / "sgd.npz").exists()

    (out / "sub" / "thesis.tex").unlink()
    (out / "sub").rmdir()
    assert train.main([*TINY_CLI, "--out-dir", str(out), "--overwrite", "--seed", "3"]) == 0
    assert (out / "scores" / "fold0" / "sgd.npz").read_bytes() != before  # a new run


# --- 2. a bad weight file leaves no run directory behind ---------------------------------


def test_a_bad_weight_file_is_refused_before_the_run_directory_exists(tmp_path, capsys):
    out = tmp_path / "run"
    not_weights = tmp_path / "hostname"
    not_weights.write_text("my-laptop\n")
    assert train.main([*TINY_CLI, "--out-dir", str(out), "--weights", str(not_weights)]) == 2
    assert str(not_weights) in capsys.readouterr().err
    assert not out.exists()
    assert train.main([*TINY_CLI, "--out-dir", str(out)]) == 0  # the corrected command runs


# --- 3. a damaged checkpoint is reported, dropped, and the result is unchanged -----------


def _largest_file(directory: Path) -> Path:
    return max((p for p in directory.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def _truncate(checkpoint: Path) -> None:
    data = _largest_file(checkpoint / "state")
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])


def _remove_state(checkpoint: Path) -> None:
    import shutil

    shutil.rmtree(checkpoint / "state")


def _flip_bytes(checkpoint: Path) -> None:
    data = _largest_file(checkpoint / "state")
    content = bytearray(data.read_bytes())
    middle = len(content) // 2
    content[middle : middle + 64] = bytes(b ^ 0xFF for b in content[middle : middle + 64])
    data.write_bytes(bytes(content))


# orbax leaves the reads of a truncated file un-awaited when one fails; Python reports them
# when they are collected, in whichever test runs then.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("damage", [_truncate, _remove_state, _flip_bytes])
def test_a_damaged_checkpoint_is_set_aside_and_the_scores_are_unchanged(
    interrupted, uninterrupted, damage, capsys
):
    config = interrupted
    checkpoint = Path(config.out_dir) / "checkpoints" / "fold0" / "members" / "1"
    assert checkpoint.is_dir()
    damage(checkpoint)
    steps = []
    training.train_ensemble(
        config,
        dataset=small_digits(),
        progress=False,
        resume=True,
        on_step=lambda *where: steps.append(where),
    )
    error = capsys.readouterr().err
    assert f"checkpoint {checkpoint} cannot be used" in error and "moved to" in error
    assert {epoch for _, epoch, _ in steps} == {0, 1, 2}  # trained again from scratch
    # Never deleted: moved aside, named in the message, and kept.
    (kept,) = (checkpoint.parent.parent / "members.set-aside").iterdir()
    assert kept.name.startswith("1-") and str(kept) in error
    assert (kept / "meta").is_dir()
    np.testing.assert_array_equal(
        load_scores(config.out_dir, 0, "diffgrad")["scores"],
        load_scores(uninterrupted.run_dir, 0, "diffgrad")["scores"],
    )


def test_running_out_of_memory_on_restore_keeps_the_checkpoint(interrupted, monkeypatch):
    # A checkpoint that does not fit the device is not damaged: nothing is set aside.
    def exhausted(self, epoch, *args):
        raise RuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 8 GiB")

    monkeypatch.setattr(training.checkpoints.FoldCheckpoints, "_restore", exhausted)
    checkpoint = Path(interrupted.out_dir) / "checkpoints" / "fold0" / "members" / "1"
    with pytest.raises(MemoryError, match=f"restore checkpoint {checkpoint} \\(kept as it is\\)"):
        training.train_ensemble(interrupted, dataset=small_digits(), progress=False, resume=True)
    assert checkpoint.is_dir()
    assert not (checkpoint.parent.parent / "members.set-aside").exists()


# --- 4. checkpoints of finished fold/groups are removed unless asked to keep them --------


@pytest.mark.parametrize("keep", [False, True])
def test_finished_checkpoints_are_removed_unless_kept(tmp_path, keep):
    result = run(tmp_path, small_digits(), optimizers={"sgd": 1}, folds=(0,), epochs=1,
                 keep_checkpoints=keep)  # fmt: skip
    group_checkpoints = Path(result.run_dir) / "checkpoints" / "fold0" / "members"
    assert group_checkpoints.is_dir() == keep
    assert (Path(result.run_dir) / "scores" / "fold0" / "sgd.npz").exists()


# --- 5. one trainer per run directory -----------------------------------------------------


def test_a_second_trainer_is_refused_while_the_first_holds_the_lock(tmp_path):
    config = fast_config(tmp_path, optimizers={"sgd": 1}, folds=(0,), epochs=1)
    os.makedirs(config.out_dir)
    with open(os.path.join(config.out_dir, "train.lock"), "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.write("pid 4242 on other-host\n")
        held.flush()
        with pytest.raises(RunDirectoryError, match="in use by pid 4242 on other-host"):
            training.train_ensemble(config, dataset=small_digits(), progress=False)
    assert not os.path.exists(os.path.join(config.out_dir, "config.json"))
    # The holder is gone; its lock file stays behind, stale, and does not block.
    training.train_ensemble(config, dataset=small_digits(), progress=False)
    assert os.path.exists(os.path.join(config.out_dir, "scores", "fold0", "sgd.npz"))


# --- 6. logs: a broken row of a killed run does not survive the resume -------------------


def test_a_truncated_log_is_rebuilt_on_resume(interrupted, uninterrupted):
    config = interrupted
    log = Path(config.out_dir) / "logs" / "fold0" / "diffgrad.csv"
    text = log.read_text()
    log.write_text(text[: len(text) - 7])  # cut the last row in the middle
    training.train_ensemble(config, dataset=small_digits(), progress=False, resume=True)
    expected = (Path(uninterrupted.run_dir) / "logs" / "fold0" / "diffgrad.csv").read_text()
    assert log.read_text() == expected


# --- 7. damaged files met on --resume -----------------------------------------------------


def test_a_damaged_score_file_is_trained_again(tmp_path, capsys):
    finished = run(tmp_path, small_digits(), optimizers={"sgd": 2}, folds=(0,), epochs=1)
    config = fast_config(tmp_path, optimizers={"sgd": 2}, folds=(0,), epochs=1)
    path = Path(finished.run_dir) / "scores" / "fold0" / "sgd.npz"
    original = load_scores(finished.run_dir, 0, "sgd")["scores"]
    path.write_bytes(path.read_bytes()[:100])
    training.train_ensemble(config, dataset=small_digits(), progress=False, resume=True)
    error = capsys.readouterr().err
    assert str(path) in error and "trained again" in error
    np.testing.assert_array_equal(load_scores(finished.run_dir, 0, "sgd")["scores"], original)

    other = run(tmp_path, small_digits(), "one", optimizers={"sgd": 1}, folds=(0,), epochs=1)
    path.write_bytes((Path(other.run_dir) / "scores" / "fold0" / "sgd.npz").read_bytes())
    training.train_ensemble(config, dataset=small_digits(), progress=False, resume=True)
    error = capsys.readouterr().err
    assert str(path) in error and "trained with other settings" in error
    np.testing.assert_array_equal(load_scores(finished.run_dir, 0, "sgd")["scores"], original)


def test_an_empty_config_json_is_named(tmp_path):
    config = fast_config(tmp_path, optimizers={"sgd": 1}, folds=(0,), epochs=1)
    os.makedirs(config.out_dir)
    Path(config.out_dir, "config.json").write_text("")
    with pytest.raises(ValueError, match=r"config\.json"):
        training.train_ensemble(config, dataset=small_digits(), progress=False, resume=True)


# --- 8. Ctrl-C -----------------------------------------------------------------------------


def test_ctrl_c_prints_one_line_and_exits_130(tmp_path):
    command = [sys.executable, "train.py", "--optimizers", "sgd:1", "--epochs", "50",
               "--no-progress", "--out-dir", str(tmp_path / "run")]  # fmt: skip
    env = {**os.environ, "XLA_FLAGS": "", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(command, cwd=ROOT, env=env, text=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    assert process.stdout.readline().startswith("member strategy:")
    process.send_signal(signal.SIGINT)
    _, error = process.communicate(timeout=120)
    assert process.returncode == 130
    assert "Traceback" not in error
    assert error.strip().splitlines()[-1].startswith("interrupted; run the same command with")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_a_ctrl_c_lost_in_a_finalizer_still_stops_the_run():
    """Python drops a KeyboardInterrupt raised inside a finalizer ("Exception ignored"); the
    CLI's handler also records it, and the next step raises it again."""
    interrupt = train._Interrupt()

    class Finalized:
        def __del__(self):
            interrupt._handle(signal.SIGINT, None)

    Finalized()  # collected at once: the interrupt is raised in __del__ and lost
    with pytest.raises(KeyboardInterrupt):
        interrupt.raise_if_requested("sgd", 0, 0, 0)


# --- 9-11. flags ---------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--learning-rate", "--b1", "--eps", "--weight-decay",
                                  "--momentum", "--b2"])  # fmt: skip
def test_non_finite_hyperparameters_are_refused(tmp_path, flag, capsys):
    assert train.main([*TINY_CLI, flag, "inf", "--out-dir", str(tmp_path / "r")]) == 2
    assert "must be a finite number" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_resume_accepts_settings_that_do_not_change_the_scores(interrupted, uninterrupted):
    config = interrupted
    changed = dataclasses.replace(config, strategy="vmap", step_loop="python", scan_unroll=3,
                                  eval_batch_size=7, checkpoint_every=2)  # fmt: skip
    training.train_ensemble(changed, dataset=small_digits(), progress=False, resume=True)
    np.testing.assert_allclose(
        load_scores(config.out_dir, 0, "diffgrad")["scores"],
        load_scores(uninterrupted.run_dir, 0, "diffgrad")["scores"],
        atol=STRATEGY_SPREAD,
    )
    with pytest.raises(ValueError, match=r"differs in \['learning_rate'\]"):
        training.train_ensemble(dataclasses.replace(config, learning_rate=0.1),
                             dataset=small_digits(), progress=False, resume=True)  # fmt: skip


def test_a_group_with_an_empty_member_count_is_an_error():
    with pytest.raises(ValueError, match="'dgrad:' in --optimizers 'dgrad:' has no member count"):
        training.parse_optimizer_groups("dgrad:")


# --- 12. the CLI's compilation cache ----------------------------------------------------


@pytest.mark.slow
def test_the_cli_caches_compiled_programs_per_user_unless_told_not_to(tmp_path):
    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("JAX_COMPILATION_CACHE", "JAX_PERSISTENT_CACHE"))}  # fmt: skip
    env.update(XLA_FLAGS="", XDG_CACHE_HOME=str(tmp_path / "cache"))
    command = [sys.executable, "train.py", *TINY_CLI]
    subprocess.run([*command, "--out-dir", str(tmp_path / "a")], cwd=ROOT, env=env, check=True,
                   capture_output=True, timeout=300)  # fmt: skip
    cache = tmp_path / "cache" / "optax-dgrad" / "jax"
    entries = [path for path in cache.iterdir() if "-cache" in path.name]
    assert len(entries) >= 3  # init, step and predict at least
    env["XDG_CACHE_HOME"] = str(tmp_path / "other")
    subprocess.run([*command, "--out-dir", str(tmp_path / "b"), "--no-compilation-cache"],
                   cwd=ROOT, env=env, check=True, capture_output=True, timeout=300)  # fmt: skip
    assert not (tmp_path / "other").exists()


# --- 13. checkpoints by time ----------------------------------------------------------------


@pytest.mark.parametrize("minutes, retrained", [(0.0, {1, 2}), (60.0, {0, 1, 2})])
def test_checkpoints_by_time_resume_bit_identical(tmp_path, uninterrupted, minutes, retrained):
    # With an interval longer than the run (an hour; not the 1-minute default, which a first
    # compile on a loaded machine could reach) nothing is saved before the kill and the
    # resumed run starts over; with 0 minutes every epoch is saved.
    overrides = dict(checkpoint_every=None, checkpoint_minutes=minutes)
    config = fast_config(tmp_path, "resumed", **RESUMABLE, **overrides)
    with pytest.raises(Killed):
        training.train_ensemble(
            config, dataset=small_digits(), progress=False, on_step=kill_at(1, 3)
        )
    steps = []
    training.train_ensemble(config, dataset=small_digits(), progress=False, resume=True,
                         on_step=lambda *where: steps.append(where))  # fmt: skip
    assert {epoch for _, epoch, _ in steps} == retrained
    np.testing.assert_array_equal(
        load_scores(config.out_dir, 0, "diffgrad")["scores"],
        load_scores(uninterrupted.run_dir, 0, "diffgrad")["scores"],
    )


def test_by_default_a_kept_fold_keeps_its_last_epoch(tmp_path):
    result = run(tmp_path, small_digits(), optimizers={"sgd": 1}, folds=(0,), epochs=2,
                 checkpoint_every=None, keep_checkpoints=True)  # fmt: skip
    steps = Path(result.run_dir) / "checkpoints" / "fold0" / "members"
    assert [p.name for p in steps.iterdir() if p.name.isdigit()] == ["2"]
