"""The run directory's contract (``rundir``): each case a new user found losing data or giving
a wrong result without a warning, reproduced as they ran it."""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
from trainer_testing import (
    STRATEGY_SPREAD,
    fast_config,
    load_scores,
    small_digits,
)

import ensemble
import ensembling
import rundir
import train
import training
from training import RESULT_FIELDS, TrainConfig, config_to_json, parse_mesh, resolve_placement

ROOT = Path(__file__).resolve().parent.parent
TINY_CLI = ["--optimizers", "sgd:1", "--epochs", "1", "--folds", "0", "--batch-size", "64",
            "--strategy", "loop", "--no-progress"]  # fmt: skip
ONE_FOLD = dict(optimizers={"sgd": 1}, folds=(0,), epochs=1)


def _train(config: TrainConfig, **kwargs) -> training.TrainResult:
    return training.train_ensemble(config, dataset=small_digits(), progress=False, **kwargs)


def _cli(*args: str, limit_bytes: int | None = None) -> subprocess.CompletedProcess:
    """Runs ``python *args`` from the repository root; ``limit_bytes`` limits the size of
    every file it writes (RLIMIT_FSIZE: a write past it fails with EFBIG, as on a full disk;
    Python ignores SIGXFSZ). The limit is set in a small launcher that then becomes the
    command, so the test process never forks (JAX is multithreaded)."""
    command = [sys.executable, *args]
    if limit_bytes is not None:
        launcher = (
            "import os, resource, sys; "
            f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit_bytes}, {limit_bytes})); "
            "os.execv(sys.argv[1], sys.argv[1:])"
        )
        command = [sys.executable, "-c", launcher, *command]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


def _one_line_error(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr and len(lines) == 1, stderr
    return lines[0]


def _partial_files(path: Path) -> list[Path]:
    return [p for p in path.rglob("*") if rundir.PARTIAL_INFIX in p.name]


# --- 1. --overwrite never empties a directory the trainer cannot prove it wrote ----------


def test_overwrite_refuses_a_directory_without_config_json_and_loses_nothing(tmp_path, capsys):
    target = tmp_path / "P"
    (target / "logs").mkdir(parents=True)
    (target / "checkpoints").mkdir()
    (target / "logs" / "2024.txt").write_text("x\n")
    for extra in (["--overwrite"], []):
        status = train.main([*TINY_CLI, "--out-dir", str(target), *extra])
        error = _one_line_error(capsys.readouterr().err)
        assert status == 2
        assert "['checkpoints', 'logs'] but no config.json" in error, error
        assert (target / "logs" / "2024.txt").read_text() == "x\n"
        assert sorted(os.listdir(target)) == ["checkpoints", "logs"]


def test_overwrite_refuses_a_config_json_that_is_not_a_run(tmp_path, capsys):
    target = tmp_path / "P"
    (target / "scores").mkdir(parents=True)
    (target / "scores" / "mine.npz").write_bytes(b"data")
    (target / "config.json").write_text('{"theirs": true}')
    assert train.main([*TINY_CLI, "--out-dir", str(target), "--overwrite"]) == 2
    error = _one_line_error(capsys.readouterr().err)
    assert "empties only a run directory the trainer wrote" in error and "'optimizers'" in error
    assert (target / "scores" / "mine.npz").read_bytes() == b"data"


# --- 2. a score file carries what it was trained with; resume needs config.json ----------


def test_resume_without_config_json_is_an_error_and_keeps_the_scores(tmp_path, shared_runs):
    config = shared_runs.finished_copy(tmp_path, **ONE_FOLD)
    scores = Path(config.out_dir) / "scores" / "fold0" / "sgd.npz"
    before = scores.read_bytes()
    (Path(config.out_dir) / "config.json").unlink()
    with pytest.raises(rundir.RunDirectoryError, match="nothing to resume at .* no config.json"):
        _train(dataclasses.replace(config, learning_rate=0.1), resume=True)
    assert scores.read_bytes() == before


def test_a_score_file_carries_the_digest_of_its_settings(tmp_path, shared_runs):
    config = shared_runs.finished_copy(tmp_path, **ONE_FOLD)
    saved = rundir.read_config(config.out_dir)
    digest = ensembling.read_score_file(Path(config.out_dir) / "scores/fold0/sgd.npz").config_digest
    assert digest == saved.provenance.digest
    assert saved.provenance.planned_folds == (0,)

    def digest_of(**changes):
        return rundir.config_digest(
            config_to_json(dataclasses.replace(config, **changes)), RESULT_FIELDS
        )

    # Settings that do not change a fold's scores keep the digest; any that does changes it.
    assert digest_of(out_dir="elsewhere", strategy="vmap", folds=(0, 1)) == digest
    assert digest_of(checkpoint_every=0, eval_batch_size=7, mesh={"member": 1, "data": 1}) == (
        digest
    )
    for changes in (dict(learning_rate=0.1), dict(seed=1), dict(epochs=2), dict(b2=0.99)):
        assert digest_of(**changes) != digest, changes
    # In a learning-rate sweep the plain learning rate reaches no member.
    swept = dict(sweep={"learning_rate": (1e-3, 3e-3)})
    assert digest_of(**swept, learning_rate=0.5) == digest_of(**swept)


def test_resume_refuses_a_config_json_edited_after_the_run(tmp_path, shared_runs):
    config = shared_runs.finished_copy(tmp_path, **ONE_FOLD)
    path = Path(config.out_dir) / "config.json"
    values = json.loads(path.read_text())
    values["learning_rate"] = 0.1
    path.write_text(json.dumps(values))
    with pytest.raises(rundir.RunDirectoryError, match="was changed after the run wrote it"):
        _train(dataclasses.replace(config, learning_rate=0.1), resume=True)
    with pytest.warns(ensembling.RunWarning, match="settings were changed after the run"):
        ensembling.load_run(config.out_dir)


def test_a_run_directory_of_the_trainer_before_provenance(tmp_path, shared_runs):
    """Written by main 6bd4891: config.json without "provenance", score files without a
    digest. ensemble.py reads it with a warning; resume refuses it and says why."""
    config = shared_runs.finished_copy(tmp_path, **ONE_FOLD)
    path = Path(config.out_dir) / "config.json"
    values = json.loads(path.read_text())
    del values["provenance"]
    path.write_text(json.dumps(values))
    scores = Path(config.out_dir) / "scores/fold0/sgd.npz"
    with np.load(scores) as archive:
        arrays = {key: archive[key] for key in archive.files if key != "config_digest"}
    np.savez(scores, **arrays)
    with pytest.warns(ensembling.RunWarning, match="written without provenance"):
        data = ensembling.load_run(config.out_dir)
    assert data.groups["sgd"].n_members == 1
    with pytest.raises(rundir.RunDirectoryError, match="before score files carried provenance"):
        _train(config, resume=True)


# --- 3. a grid's member order does not depend on the order of the --sweep flags ----------

SWEPT = dict(optimizers={"adam": 1}, folds=(0, 1), epochs=1)
FLAGS_FIRST = {"learning_rate": (3e-3, 1e-4), "b1": (0.9, 0.0)}
FLAGS_SWAPPED = {"b1": (0.9, 0.0), "learning_rate": (3e-3, 1e-4)}


def test_the_order_of_sweep_flags_does_not_change_the_grid():
    parser = train.build_parser()
    first = ["--sweep", "learning_rate=3e-3,1e-4", "--sweep", "b1=0.9,0.0"]
    swapped = ["--sweep", "b1=0.9,0.0", "--sweep", "learning_rate=3e-3,1e-4"]
    a = train.config_from_args(parser.parse_args(first))
    b = train.config_from_args(parser.parse_args(swapped))
    assert a == b and list(b.sweep) == ["learning_rate", "b1"]
    assert rundir.grid_points(FLAGS_SWAPPED) == [
        {"learning_rate": 3e-3, "b1": 0.9}, {"learning_rate": 3e-3, "b1": 0.0},
        {"learning_rate": 1e-4, "b1": 0.9}, {"learning_rate": 1e-4, "b1": 0.0},
    ]  # fmt: skip


def test_resume_with_swapped_sweep_flags_and_an_unused_learning_rate(tmp_path, shared_runs):
    reference = shared_runs.finished(**SWEPT, sweep=FLAGS_FIRST)
    config = shared_runs.finished_copy(tmp_path, **SWEPT, sweep=FLAGS_FIRST)
    (Path(config.out_dir) / "scores" / "fold1" / "adam.npz").unlink()
    # The user's second command: the flags the other way round, and a --learning-rate that
    # no member uses (the sweep gives every member its own).
    resumed = _train(
        fast_config(tmp_path, "copy", **SWEPT, sweep=FLAGS_SWAPPED, learning_rate=0.5),
        resume=True,
    )
    for fold in (0, 1):
        np.testing.assert_array_equal(
            load_scores(config.out_dir, fold, "adam")["scores"],
            load_scores(reference.run_dir, fold, "adam")["scores"],
        )
    assert resumed.groups.keys() == reference.groups.keys()
    for group, outcome in resumed.groups.items():
        assert outcome.fused_accuracy == reference.groups[group].fused_accuracy, group
    data = ensembling.load_run(config.out_dir)
    assert list(data.groups) == list(reference.groups)
    # A file whose members hold the grid points in another order is not reused.
    path = Path(config.out_dir) / "scores" / "fold1" / "adam.npz"
    saved = ensembling.read_score_file(path)
    order = [1, 0, 2, 3]
    ensembling.write_score_file(
        path,
        scores=saved.scores[order],
        labels=saved.labels,
        test_indices=saved.test_indices,
        class_names=saved.class_names,
        member_seeds=saved.member_seeds[order],
        diverged=saved.diverged[order],
        optimizer="adam",
        fold=1,
        dataset=saved.dataset,
        hyperparameters=dict(
            zip(saved.hyperparameter_names, saved.hyperparameters[order].T, strict=True)
        ),
        config_digest=saved.config_digest,
    )
    warnings = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("training.fold_scores.warn", warnings.append)
        _train(config, resume=True)
    assert any("grid points" in w and "not reused" in w for w in warnings), warnings
    np.testing.assert_array_equal(
        load_scores(config.out_dir, 1, "adam")["scores"],
        load_scores(reference.run_dir, 1, "adam")["scores"],
    )


# --- 4. a checkpoint of another mesh restores its members; none is ever deleted ----------

MESHED = dict(optimizers={"dgrad": 3}, folds=(0,), epochs=2, strategy="sharded")


def test_resume_on_another_mesh_restores_the_padded_checkpoint(tmp_path, shared_runs, capsys):
    # dgrad:3 on member=2 trains 4 slots, one of them padding; member=1 trains 3.
    before = shared_runs.interrupted(tmp_path, **MESHED, mesh={"member": 2, "data": 2})
    checkpoint = Path(before.out_dir) / "checkpoints" / "fold0" / "members" / "1"
    assert checkpoint.is_dir()
    steps = []
    after = dataclasses.replace(before, mesh={"member": 1, "data": 4})
    _train(after, resume=True, on_step=lambda *where: steps.append(where))
    assert "cannot be used" not in capsys.readouterr().err
    assert {epoch for _, epoch, _ in steps} == {1}  # epoch 0 came from the checkpoint
    uninterrupted = shared_runs.finished(**MESHED, mesh={"member": 2, "data": 2})
    np.testing.assert_allclose(
        load_scores(after.out_dir, 0, "dgrad")["scores"],
        load_scores(uninterrupted.run_dir, 0, "dgrad")["scores"],
        atol=STRATEGY_SPREAD,
    )


# --- 5. a mesh that does not fit is refused, never dropped ---------------------------------


def test_a_mesh_on_too_few_devices_is_refused(tmp_path):
    one = jax.devices()[:1]
    with pytest.raises(ValueError, match="needs 4 devices; 1 are available"):
        resolve_placement("auto", "python", 2, batch_size=16,
                          mesh_shape={"member": 2, "data": 2}, devices=one)  # fmt: skip
    config = fast_config(tmp_path, **ONE_FOLD, strategy="auto", mesh={"member": 2, "data": 2})
    with pytest.raises(ValueError, match="needs 4 devices"):
        _train(config, devices=one)
    assert not os.path.exists(config.out_dir)


# --- 6. an OSError is one line that names the path; no partial file is left -------------


# sysfs refuses new entries even to root (tests run as root in CI, where chmod would not
# stop a write); it exists on every Linux machine, so this skips only elsewhere.
@pytest.mark.skipif(not os.path.isdir("/sys"), reason="needs /sys")
def test_an_unwritable_out_dir_is_one_line(capsys):
    assert train.main([*TINY_CLI, "--out-dir", "/sys/runx"]) != 0
    assert "/sys/runx" in _one_line_error(capsys.readouterr().err)


def test_ensemble_out_that_is_a_file_is_one_line_before_any_table(tmp_path, shared_runs):
    run_dir = shared_runs.finished(**ONE_FOLD).run_dir
    out = tmp_path / "tables.md"
    out.write_text("mine")
    result = _cli("ensemble.py", run_dir, "--out", str(out), "--no-plots")
    assert result.returncode == 1 and result.stdout == ""
    assert str(out) in _one_line_error(result.stderr)
    assert out.read_text() == "mine"


def test_a_full_disk_is_one_line_and_leaves_no_partial_file(tmp_path):
    # The score file (360 test images x 10 classes x 4 bytes) is the first write past 8 KB.
    out = tmp_path / "full"
    result = _cli(
        "train.py", *TINY_CLI, "--no-compilation-cache", "--out-dir", str(out), limit_bytes=8192
    )
    assert result.returncode == 1
    line = _one_line_error(result.stderr)
    assert line.startswith("error: ") and "sgd.npz" in line and "File too large" in line, line
    assert _partial_files(out) == []


def test_an_atomic_write_that_fails_leaves_the_old_file_and_no_partial(tmp_path):
    path = tmp_path / "logs" / "fold0" / "sgd.csv"
    rundir.write_atomically(path, "old\n")
    script = (
        "import sys, rundir\n"
        "try:\n"
        f"    rundir.write_atomically({str(path)!r}, 'x' * 100_000)\n"
        "except OSError as error:\n"
        "    print(rundir.describe_os_error(error)); sys.exit(3)\n"
    )
    result = _cli("-c", script, limit_bytes=4096)
    assert result.returncode == 3 and "File too large" in result.stdout
    assert path.read_text() == "old\n"
    assert _partial_files(tmp_path) == []


# --- 7. the small ones -------------------------------------------------------------------


def test_resume_of_a_directory_that_does_not_exist_is_an_error(tmp_path):
    with pytest.raises(rundir.RunDirectoryError, match="nothing to resume at .*does not exist"):
        _train(fast_config(tmp_path, "never", **ONE_FOLD), resume=True)
    assert not (tmp_path / "never").exists()


def test_ensemble_names_the_folds_a_run_has_not_finished(tmp_path, shared_runs, capsys):
    config = shared_runs.finished_copy(tmp_path, optimizers={"sgd": 1}, epochs=1)  # both folds
    (Path(config.out_dir) / "scores" / "fold1" / "sgd.npz").unlink()
    (Path(config.out_dir) / "scores" / "fold1").rmdir()
    assert ensemble.main([config.out_dir, "--no-plots", "--out", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    assert "warning:" in captured.err and "folds [1] of the planned [0, 1]" in captured.err
    assert "| 0 (missing: 1) |" in captured.out
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["runs"][0]["missing_folds"] == [1]


def test_ensemble_output_in_the_run_is_ours_and_overwrite_keeps_it(tmp_path, capsys):
    out_dir = tmp_path / "my run"  # a space: the printed command must quote it
    assert train.main([*TINY_CLI, "--out-dir", str(out_dir)]) == 0
    printed = capsys.readouterr().out
    assert f"python ensemble.py {shlex.quote(str(out_dir))}" in printed
    assert ensemble.main([str(out_dir), "--no-plots"]) == 0
    tables = out_dir / rundir.ENSEMBLE_DIR / "tables.md"
    assert tables.is_file()
    capsys.readouterr()
    # Checkpoints kept elsewhere through a link: the link goes, what it points to stays.
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    (scratch / "kept").write_text("x")
    (out_dir / "checkpoints").symlink_to(scratch, target_is_directory=True)
    # A removal that fails part way leaves config.json, so the same command can be retried.
    real_rmtree = shutil.rmtree

    def failing_rmtree(path, *args, **kwargs):
        if os.path.basename(path) == rundir.LOGS_DIR:
            raise PermissionError(13, "Permission denied", str(path))
        return real_rmtree(path, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(shutil, "rmtree", failing_rmtree)
        assert train.main([*TINY_CLI, "--out-dir", str(out_dir), "--overwrite"]) == 1
    assert "Permission denied" in capsys.readouterr().err
    assert (out_dir / rundir.CONFIG_FILE).is_file() and (out_dir / rundir.LOGS_DIR).is_dir()
    assert train.main([*TINY_CLI, "--out-dir", str(out_dir), "--overwrite"]) == 0
    err = capsys.readouterr().err
    assert f"note: kept {out_dir / rundir.ENSEMBLE_DIR}" in err
    assert f"note: removed the link {out_dir / 'checkpoints'} -> {scratch}" in err
    assert tables.is_file() and (scratch / "kept").read_text() == "x"


def test_mesh_flag_forms():
    with pytest.raises(ValueError, match="the member axis is given twice"):
        parse_mesh("member=1,member=2")
    assert parse_mesh("auto") is None  # the README's form
    args = train.build_parser().parse_args(["--mesh", "auto"])
    assert train.config_from_args(args).mesh is None
    assert parse_mesh("data=2") == {"member": 1, "data": 2}
