"""Hyperparameter sweeps as members: every (grid point, seed) member in one program a group."""

from __future__ import annotations

import collections

import numpy as np
import pytest
from trainer_testing import count_backend_compiles, fast_config, load_scores, run, small_digits

import ensemble
import ensembling
import train
import training
from rundir import grid_points
from training import OPTIMIZER_NAMES, RunPrograms, parse_sweep, run_programs
from training.programs import model_programs

# Fold 1 with the paper's augmentation: the plain 1e-3 run is test_mesh's 2-member reference.
COMMON = dict(optimizers={"dgrad": 2}, folds=(1,), epochs=1, augment="paper")
RATES = (1e-3, 3e-4)


@pytest.fixture
def sweep(shared_runs):
    return shared_runs.finished(sweep={"learning_rate": RATES}, **COMMON)


def test_a_sweep_member_is_the_member_of_a_plain_run(shared_runs, sweep):
    swept = load_scores(sweep.run_dir, 1, "dgrad")
    assert swept["scores"].shape[0] == 4  # 2 members at each of 2 grid points
    assert list(swept["hyperparameter_names"]) == ["learning_rate"]
    np.testing.assert_allclose(swept["hyperparameter_values"][:, 0], [1e-3, 1e-3, 3e-4, 3e-4])
    for point, rate in enumerate(RATES):
        plain_run = shared_runs.finished(learning_rate=rate, **COMMON)
        plain = load_scores(plain_run.run_dir, 1, "dgrad")
        rows = slice(2 * point, 2 * point + 2)
        np.testing.assert_array_equal(swept["member_seeds"][rows], plain["member_seeds"])
        # The rate is an array in the optimizer state instead of a constant in the program;
        # measured: bit-identical scores on XLA:CPU; float tolerance allows for other backends.
        np.testing.assert_allclose(swept["scores"][rows], plain["scores"], atol=1e-5)
    assert set(sweep.groups) == {"dgrad[learning_rate=0.001]", "dgrad[learning_rate=0.0003]"}


def test_a_four_point_sweep_compiles_the_step_once(tmp_path):
    config = fast_config(tmp_path, optimizers={"dgrad": 1}, folds=(0, 1), epochs=1,
                         sweep={"learning_rate": (1e-2, 3e-3, 1e-3, 3e-4)})  # fmt: skip
    with count_backend_compiles() as compiled:
        result = training.train_ensemble(config, dataset=small_digits(), progress=False,
                                      build_programs=RunPrograms)  # fmt: skip
    steps = [name for name in compiled if "_member_step" in name]
    assert steps == ["jit(_member_step_chunk)"]  # 4 grid points, 2 folds, 1 compile
    assert len(result.groups) == 4


def test_the_runs_score_files_serve_grid_point_ensembles(tmp_path, sweep):
    data = ensembling.load_run(sweep.run_dir)
    assert set(data.groups) == {"dgrad[learning_rate=0.001]", "dgrad[learning_rate=0.0003]"}
    scores = load_scores(sweep.run_dir, 1, "dgrad")
    for spec_text, rows in (("DGrad[learning_rate=1e-3](2)", slice(0, 2)),
                            ("dgrad@learning_rate=3e-4:2", slice(2, 4))):  # fmt: skip
        result = ensembling.evaluate_ensemble(data, ensembling.parse_ensemble_spec(spec_text))
        fused = (scores["scores"][rows].sum(0).argmax(-1) == scores["labels"]).mean()
        assert result.metrics.accuracy == pytest.approx(fused)
    assert ensemble.main([sweep.run_dir, "--out", str(tmp_path / "tables")]) == 0
    assert (tmp_path / "tables" / "hyperparameter_sweep.png").stat().st_size > 0
    assert "learning_rate" in (tmp_path / "tables" / "sweep.csv").read_text()


def test_divergence_at_one_grid_point_leaves_the_others_bit_identical(tmp_path, sweep, capsys):
    wild = run(tmp_path, small_digits(), "wild", sweep={"learning_rate": (1e-3, 1e38)}, **COMMON)
    assert "diverged" in capsys.readouterr().err
    scores = load_scores(wild.run_dir, 1, "dgrad")
    np.testing.assert_array_equal(scores["diverged"], [False, False, True, True])
    np.testing.assert_array_equal(
        scores["scores"][:2], load_scores(sweep.run_dir, 1, "dgrad")["scores"][:2]
    )
    assert wild.groups["dgrad[learning_rate=1e+38]"].diverged == [0, 1]
    assert "dgrad[learning_rate=0.001] | 2 |" in training.format_summary(wild)


def test_sweep_flags_and_bad_sweeps(tmp_path, capsys):
    parser = train.build_parser()
    args = parser.parse_args(["--optimizers", "dgrad:2", "--sweep", "learning_rate=3e-3,1e-3",
                              "--sweep", "b1=0.9,0.8"])  # fmt: skip
    config = train.config_from_args(args)
    assert config.sweep == {"learning_rate": (3e-3, 1e-3), "b1": (0.9, 0.8)}
    assert grid_points(config.sweep) == [
        {"learning_rate": 3e-3, "b1": 0.9}, {"learning_rate": 3e-3, "b1": 0.8},
        {"learning_rate": 1e-3, "b1": 0.9}, {"learning_rate": 1e-3, "b1": 0.8},
    ]  # fmt: skip
    with pytest.raises(ValueError, match="NAME one of"):
        parse_sweep("depth=3,4")
    for overrides, message in [
        (dict(optimizers={"sgd": 1}, sweep={"b1": (0.9, 0.8)}),
         "optimizer 'sgd' has no hyperparameter 'b1'"),
        (dict(sweep={"learning_rate": (1e-3, -1.0)}), "learning_rate must be > 0"),
        (dict(sweep={"learning_rate": (1e-3, 0.001)}), "needs distinct values"),
        (dict(optimizers={"sgd": 1}, sweep={"momentum": (0.9, float("inf"))}),
         "momentum must be a finite number"),
    ]:  # fmt: skip
        config = fast_config(tmp_path, "bad", **{"optimizers": {"dgrad": 1}, **overrides})
        with pytest.raises(ValueError, match=message):
            training.train_ensemble(config, dataset=small_digits(), progress=False)
        assert not (tmp_path / "bad").exists()
    assert train.main(["--sweep", "learning_rate=1e-3", "--sweep", "learning_rate=2e-3"]) == 2
    assert "names ['learning_rate'] twice" in capsys.readouterr().err


@pytest.mark.parametrize(
    "groups",
    [
        dict(optimizers={name: 1 for name in OPTIMIZER_NAMES}),  # the default run's seven
        dict(optimizers={"dgrad": 1, "cos1": 1}, sweep={"learning_rate": (1e-2, 3e-3, 1e-3)}),
    ],
    ids=["seven-groups", "two-groups-three-points"],
)
def test_a_run_compiles_each_program_once_whatever_its_groups(tmp_path, groups):
    """Init, train step and predict are the same programs for every group and grid point:
    a group picks its optimizer at run time, and the network's programs do not depend on it.
    """
    config = fast_config(tmp_path, folds=(0,), epochs=1, **groups)
    run_programs.cache_clear()  # programs of earlier tests in this process would be reused
    model_programs.cache_clear()
    with count_backend_compiles() as compiled:
        training.train_ensemble(config, dataset=small_digits(), progress=False)
    members = collections.Counter(name for name in compiled if name.startswith("jit(_member"))
    assert members == {
        "jit(_member_variables)": 1,  # the network's init, one member, called per key
        "jit(_member_init_optimizer)": 1,  # the optimizer state's init
        "jit(_member_step_chunk)": 1,  # one member's step, called per member (loop)
        "jit(_member_predict_chunk)": 1,
    }
