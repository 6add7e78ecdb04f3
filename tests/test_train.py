"""The ensemble trainer: reproducibility, strategies, resume, divergence, bad input, CLI."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from cli_testing import help_arguments
from trainer_testing import (
    FAST,
    STRATEGY_SPREAD,
    Killed,
    fast_config,
    kill_at,
    load_scores,
    programs_for,
    programs_with,
    run,
)
from trainer_testing import small_digits as small_digits_dataset

import rundir
import train
import training
from data import ImageDataset
from training import member_keys
from training.members import load_pretrained_members


@pytest.fixture(scope="module")
def small_digits() -> ImageDataset:
    return small_digits_dataset()


def test_members_differ_and_runs_reproduce(tmp_path, small_digits):
    first = run(tmp_path, small_digits, "a", optimizers={"dgrad": 2, "sgd": 1}, folds=(0,))
    again = run(tmp_path, small_digits, "b", optimizers={"dgrad": 2, "sgd": 1}, folds=(0,))
    scores = load_scores(first.run_dir, 0, "dgrad")
    np.testing.assert_array_equal(
        scores["scores"], load_scores(again.run_dir, 0, "dgrad")["scores"]
    )
    # Two members of one group: different seeds, different predictions.
    assert scores["member_seeds"][0] != scores["member_seeds"][1]
    assert np.abs(scores["scores"][0] - scores["scores"][1]).max() > 1e-3
    # The score file follows the format ensemble.py reads.
    assert scores["scores"].shape == (2, 300, 10)
    np.testing.assert_allclose(scores["scores"].sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(scores["labels"], small_digits.labels[:300])
    np.testing.assert_array_equal(scores["test_indices"], np.arange(300))
    assert list(scores["class_names"]) == list(small_digits.class_names)
    assert str(scores["optimizer"]) == "dgrad" and int(scores["fold"]) == 0
    assert str(scores["dataset"]) == "digits" and not scores["diverged"].any()
    # The returned accuracies are those of the score files.
    expected = (scores["scores"].argmax(-1) == scores["labels"]).mean(-1)
    np.testing.assert_allclose(first.groups["dgrad"].member_accuracy, expected)
    fused = (scores["scores"].sum(0).argmax(-1) == scores["labels"]).mean()
    assert first.groups["dgrad"].fused_accuracy == pytest.approx(fused)


def test_initial_parameters_differ_between_members(small_digits):
    config = training.TrainConfig(**FAST, optimizers={"adam": 2})
    programs = programs_for(config, 2)
    params = programs.init(member_keys(0, "adam", 0, 2)[0]).params
    kernels = [
        leaf
        for path, leaf in jax.tree_util.tree_leaves_with_path(params)
        if "kernel" in jax.tree_util.keystr(path)
    ]
    assert kernels and all(not np.allclose(k[0], k[1]) for k in kernels)


def test_training_learns(tmp_path, small_digits):
    result = run(tmp_path, small_digits, optimizers={"adam": 1}, epochs=6, folds=(0,))
    assert result.groups["adam"].member_accuracy[0] > 0.3  # chance is 0.1


@pytest.mark.parametrize(
    "other",
    [
        dict(strategy="vmap"),
        dict(strategy="sharded"),
        dict(step_loop="scan", scan_unroll=2),
    ],
    ids=["vmap", "sharded-8-devices", "scan"],
)
def test_strategies_compute_the_same_scores(tmp_path, small_digits, shared_runs, other):
    assert jax.device_count() == 8
    # With the paper's augmentation: every member and step draws its own reflections and
    # scales, whatever the strategy. Resampling sums in another order under vmap or scan,
    # so the scores agree to float32 rounding amplified by training (measured <= 2e-4).
    common = dict(optimizers={"cos2": 3}, folds=(1,), epochs=1, augment="paper")
    reference = shared_runs.finished(**common)
    candidate = run(tmp_path, small_digits, "other", **common, **other)
    assert candidate.strategy == other.get("strategy", "loop")
    np.testing.assert_allclose(
        load_scores(candidate.run_dir, 1, "cos2")["scores"],
        load_scores(reference.run_dir, 1, "cos2")["scores"],
        atol=STRATEGY_SPREAD,
    )


def test_members_that_do_not_fill_every_device_are_padded(tmp_path, small_digits, shared_runs):
    # test_mesh's 3-member reference; each device runs its members as loop does, one after
    # another, so the numbers are the same (measured: bit-identical).
    common = dict(optimizers={"dgrad": 3}, folds=(1,), epochs=1, augment="paper")
    reference = shared_runs.finished(**common)
    padded = run(tmp_path, small_digits, "padded", strategy="sharded",
                 mesh={"member": 2, "data": 1}, **common)  # 4 slots  # fmt: skip
    scores = load_scores(padded.run_dir, 1, "dgrad")
    assert scores["scores"].shape[0] == 3 and len(scores["member_seeds"]) == 3
    np.testing.assert_array_equal(
        scores["scores"], load_scores(reference.run_dir, 1, "dgrad")["scores"]
    )


@pytest.mark.parametrize("checkpoint_every", [1, 2])
def test_resume_after_interruption_gives_the_same_scores(
    tmp_path, small_digits, shared_runs, checkpoint_every
):
    # Every 2 epochs: the kill in epoch 2 comes before the first checkpoint, so the resumed
    # run starts over and must drop the logged epoch-1 rows.
    common = dict(
        optimizers={"diffgrad": 2},
        folds=(0,),
        epochs=3,
        augment="paper",
        checkpoint_every=checkpoint_every,
    )
    uninterrupted = shared_runs.finished(**{**common, "checkpoint_every": 1})
    config = fast_config(tmp_path, "resumed", **common)
    with pytest.raises(Killed):
        training.train_ensemble(config, dataset=small_digits, progress=False, on_step=kill_at(1, 3))
    assert not os.path.exists(os.path.join(config.out_dir, "scores", "fold0", "diffgrad.npz"))
    with pytest.raises(ValueError, match="--resume"):
        training.train_ensemble(config, dataset=small_digits, progress=False)
    steps = []
    respelled = dataclasses.replace(config, out_dir=config.out_dir + "/")  # the same run
    training.train_ensemble(
        respelled,
        dataset=small_digits,
        progress=False,
        resume=True,
        on_step=lambda *where: steps.append(where),
    )
    # With a checkpoint after epoch 1, only epochs 2 and 3 ran again.
    assert {epoch for _, epoch, _ in steps} == ({1, 2} if checkpoint_every == 1 else {0, 1, 2})
    np.testing.assert_array_equal(
        load_scores(config.out_dir, 0, "diffgrad")["scores"],
        load_scores(uninterrupted.run_dir, 0, "diffgrad")["scores"],
    )
    with open(os.path.join(config.out_dir, "logs", "fold0", "diffgrad.csv")) as f:
        rows = f.read().splitlines()
    assert len(rows) == 1 + 3 * 2  # header, then 3 epochs x 2 members, no duplicates


def test_a_diverging_member_is_reported_and_leaves_the_others_alone(
    tmp_path, small_digits, shared_runs, capsys
):
    common = dict(optimizers={"adam": 3}, folds=(0,), epochs=1)
    healthy = shared_runs.finished(**common)

    def poison_member_1(clean_init):
        def poisoned(*args):
            state = clean_init(*args)
            params = jax.tree.map(lambda leaf: leaf.at[1].set(jnp.nan), state.params)
            return state._replace(params=params)

        return poisoned

    config = training.TrainConfig(
        **{**FAST, **common, "out_dir": str(tmp_path / "broken"), "strategy": "loop"}
    )
    broken = training.train_ensemble(
        config, dataset=small_digits, progress=False, build_programs=programs_with(poison_member_1)
    )
    assert "adam member 1 diverged" in capsys.readouterr().err
    assert broken.groups["adam"].diverged == [1]
    scores = load_scores(broken.run_dir, 0, "adam")
    np.testing.assert_array_equal(scores["diverged"], [False, True, False])
    reference = load_scores(healthy.run_dir, 0, "adam")["scores"]
    np.testing.assert_array_equal(scores["scores"][[0, 2]], reference[[0, 2]])
    fused = (reference[[0, 2]].sum(0).argmax(-1) == scores["labels"]).mean()
    assert broken.groups["adam"].fused_accuracy == pytest.approx(fused)
    assert "[1]" in training.format_summary(broken)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(optimizers={"adamw": 2}), "unknown optimizer 'adamw'"),
        (dict(optimizers={"sgd": 0}), "at least 1 member"),
        (dict(batch_size=500), "batch_size 500 is larger than the smallest training split"),
        (dict(data_dir="/nonexistent/tfds"), "data directory '/nonexistent/tfds'"),
        (dict(strategy="pmap"), "strategy 'pmap'"),
        (dict(folds=(7,)), "folds \\[7\\] do not exist"),
        (dict(model="resnet999"), "unknown model 'resnet999'"),
        (dict(learning_rate=-1.0), "learning_rate must be > 0"),
        (dict(b2=1.0), "b2 must be in \\[0, 1\\)"),
        (dict(folds=()), "folds must be None \\(every fold\\) or fold indices >= 0, got \\(\\)"),
        (dict(epochs=2.0), "epochs must be an int, got 2.0 \\(float\\)"),
        (dict(eval_batch_size=256.0), "eval_batch_size must be an int, got 256.0"),
        (dict(seed=-1), "seed must be >= 0, got -1"),
        (dict(checkpoint_minutes="5"), "checkpoint_minutes must be a number >= 0"),
    ],
)
def test_bad_configs_fail_before_training(tmp_path, small_digits, overrides, message):
    config = training.TrainConfig(**{**FAST, "out_dir": str(tmp_path / "bad"), **overrides})
    with pytest.raises(ValueError, match=message):
        training.train_ensemble(config, dataset=small_digits, progress=False)
    assert not os.path.exists(tmp_path / "bad" / "scores")
    assert not os.path.exists(tmp_path / "bad" / "config.json")


def test_numpy_integers_give_the_digest_of_python_integers(tmp_path):
    # config.json is JSON: NumPy integers are written as Python's, with the same digest.
    plain = training.TrainConfig(optimizers={"dgrad": 3}, epochs=2, folds=(0, 1),
                                 mesh={"member": 2, "data": 1}, strategy="sharded")  # fmt: skip
    numpy = training.TrainConfig(optimizers={"dgrad": np.int64(3)}, epochs=np.int64(2),
                                 folds=(np.int64(0), np.int32(1)),
                                 mesh={"member": np.int64(2), "data": np.int64(1)},
                                 strategy="sharded")  # fmt: skip
    training.validate_config(numpy)
    values = [training.config_to_json(c) for c in (plain, numpy)]
    assert json.dumps(values[0], sort_keys=True) == json.dumps(values[1], sort_keys=True)
    assert rundir.config_digest(values[1], training.RESULT_FIELDS) == rundir.config_digest(
        values[0], training.RESULT_FIELDS
    )


def test_unwritable_output_directory(tmp_path, small_digits):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    config = training.TrainConfig(**{**FAST, "out_dir": str(blocker / "run")})
    with pytest.raises(ValueError, match="not writable"):
        training.train_ensemble(config, dataset=small_digits, progress=False)


def test_cli_errors_name_the_problem(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--optimizers", "adamw:2"])
    assert exit_info.value.code == 2
    assert "unknown optimizer 'adamw'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train.main(["--folds", "a"])
    assert "--folds 'a' is not a comma-separated list of integers" in capsys.readouterr().err
    missing = tmp_path / "no_such_images"
    assert train.main(["--dataset", f"folder:{missing}", "--out-dir", str(tmp_path / "r")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error:") and str(missing) in error
    assert not (tmp_path / "r" / "config.json").exists()
    with pytest.raises(SystemExit):
        train.main(["--resume", "--overwrite"])
    assert "pick one" in capsys.readouterr().err


def test_optimizer_groups_parse():
    assert training.parse_optimizer_groups("sgd:14, dgrad:7,cos1") == {
        "sgd": 14,
        "dgrad": 7,
        "cos1": 1,
    }
    with pytest.raises(ValueError, match="unknown optimizer 'sgdm'"):
        training.parse_optimizer_groups("sgdm:3")
    with pytest.raises(ValueError, match="'x' for 'adam' is not an integer"):
        training.parse_optimizer_groups("adam:x")


def test_paper_preset_and_flags_override_it():
    parser = train.build_parser()
    config = train.config_from_args(parser.parse_args(["--preset", "paper", "--epochs", "3"]))
    assert (config.model, config.image_size, config.batch_size) == ("resnet50", 224, 30)
    assert config.epochs == 3 and config.learning_rate == 1e-3
    assert config.optimizers == {
        "sgd": 14,
        "adam": 7,
        "diffgrad": 7,
        "dgrad": 14,
        "cos1": 7,
        "cos2": 7,
    }
    assert train.config_from_args(parser.parse_args([])) == training.TrainConfig()


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit):
        train.main(["--help"])
    text = capsys.readouterr().out
    for field in dataclasses.fields(training.TrainConfig):
        assert "--" + field.name.replace("_", "-") in text


def test_the_training_page_explains_every_flag():
    page = (Path(__file__).resolve().parent.parent / "docs" / "training.md").read_text()
    flags = page[page.index("## Flags") : page.index("## Python API")]
    arguments = help_arguments(train.build_parser())
    assert "--out-dir" in arguments and "--help" in arguments  # the help text was read
    for flag in arguments:
        assert f"`{flag}" in flags, f"docs/training.md does not explain {flag}"


def test_cli_writes_a_complete_run_directory(tmp_path, capsys):
    out_dir = tmp_path / "cli"
    code = train.main(
        [
            "--optimizers", "cos1:2",
            "--model", "resnet_tiny",
            "--image-size", "8",
            "--epochs", "1",
            "--folds", "0",
            "--batch-size", "64",
            "--strategy", "loop",
            "--out-dir", str(out_dir),
            "--no-progress",
        ]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out.splitlines()
    assert (
        printed[0] == "member strategy: loop, step loop: python (backend cpu; requested loop/auto)"
    )
    assert any(line.startswith("| cos1 | 2 |") for line in printed)
    config = json.loads((out_dir / "config.json").read_text())
    assert config["optimizers"] == {"cos1": 2} and config["dataset"] == "digits"
    scores = load_scores(str(out_dir), 0, "cos1")
    assert scores["scores"].shape == (2, 360, 10)
    assert (out_dir / "logs" / "fold0" / "cos1.csv").exists()
    assert not (out_dir / "checkpoints" / "fold0").exists()  # removed once scored
    assert train.main(["--out-dir", str(out_dir), "--no-progress"]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_pretrained_weights_reach_every_member_but_heads_stay_their_own(tmp_path):
    from pretrained_exporters import save_torchvision_safetensors

    config = training.TrainConfig(**{**FAST, "optimizers": {"sgd": 2}, "stride_placement": "v1.5"})
    programs = programs_for(config, 2)
    donor_keys = jnp.stack([jax.random.key(123)])
    donor = jax.tree.map(lambda leaf: np.asarray(leaf[0]), programs.init(donor_keys))
    weights = tmp_path / "donor.safetensors"
    save_torchvision_safetensors(
        {"params": donor.params, "batch_stats": donor.batch_stats}, str(weights)
    )
    fresh = programs.init(member_keys(0, "sgd", 0, 2)[0])
    loaded = load_pretrained_members(
        fresh, str(weights), init_optimizer=programs.tx.init, stride_placement="v1.5"
    )
    for m in range(2):
        for name in donor.params:
            got = jax.tree.map(lambda leaf, m=m: np.asarray(leaf[m]), loaded.params[name])
            want = fresh.params[name] if name == "head" else donor.params[name]
            want = jax.tree.map(lambda leaf, m=m: np.asarray(leaf[m]), want) if name == "head" \
                else want  # fmt: skip
            jax.tree.map(np.testing.assert_array_equal, got, want)
        jax.tree.map(
            lambda leaf, want, m=m: np.testing.assert_array_equal(leaf[m], want),
            loaded.batch_stats,
            donor.batch_stats,
        )
    assert not np.allclose(loaded.params["head"]["kernel"][0], loaded.params["head"]["kernel"][1])


def test_a_member_with_finite_losses_but_broken_scores_is_excluded(tmp_path, small_digits, capsys):
    # A last update that breaks a member shows only in its test scores (each loss is taken
    # before its update): inject that at the prediction boundary.
    def break_member_0(clean_predict):
        def predict(state, images):
            scores = np.array(clean_predict(state, images))
            scores[0, 5] = np.nan
            return scores

        return predict

    config = fast_config(tmp_path, optimizers={"sgd": 2}, folds=(0,), epochs=1)
    build = programs_with(wrap_predict=break_member_0)
    result = training.train_ensemble(
        config, dataset=small_digits, progress=False, build_programs=build
    )
    assert "sgd member 0 gives non-finite test scores" in capsys.readouterr().err
    scores = load_scores(result.run_dir, 0, "sgd")
    np.testing.assert_array_equal(scores["diverged"], [True, False])
    with open(os.path.join(result.run_dir, "logs", "fold0", "sgd.csv")) as f:
        assert "nan" not in f.read().lower()  # its losses were finite
    fused = (scores["scores"][1].argmax(-1) == scores["labels"]).mean()
    assert result.groups["sgd"].fused_accuracy == pytest.approx(fused)
