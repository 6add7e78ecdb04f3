"""Tests of ensemble.py's hyperparameter sweeps (issue 14): score files with per-member
hyperparameters, a sweep run read as one group per grid point, grid-point specs, Table 1 and
Table 2 per grid point, the sweep table and plot, and runs without a sweep left exactly as
they were.

Sweep runs are written by ``ensembling.write_score_file`` with ``hyperparameters=``, as the
trainer writes them (``write_sweep_run``); expectations are recomputed with NumPy from the
written scores or counted by hand.
"""

import csv
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
from ensemble_testing import LABELS, correctness, scores_from_correctness, write_run

import ensemble
import ensembling

CLASS_NAMES = ("a", "b", "c")
LEARNING_RATES = [3e-3, 1e-3, 3e-4]
LR_GROUPS = ["learning_rate=0.003", "learning_rate=0.001", "learning_rate=0.0003"]


def sweep_hyperparameters(sweep, per_point):
    """The trainer's member order: grid point by grid point (the product of the value lists
    in the sweep's order), ``per_point`` members each."""
    points = list(itertools.product(*sweep.values()))
    return {
        name: [point[column] for point in points for _ in range(per_point)]
        for column, name in enumerate(sweep)
    }


def write_sweep_run(run_dir, groups, sweep, labels, n_folds=2, diverged=None, dataset="tiny"):
    """A sweep run: fold f holds the f-th contiguous block of the samples.

    Args:
      groups: optimizer -> (members per grid point, scores [points * per_point, n, classes]).
      sweep: config.json's "sweep".
      diverged: optimizer -> bool [points * per_point, n_folds].

    Member seeds are ``1000 * fold + i`` for member i of every grid point.
    """
    diverged = diverged or {}
    run_dir.mkdir(parents=True)
    config = {
        "dataset": dataset,
        "seed": 0,
        "optimizers": {name: per_point for name, (per_point, _) in groups.items()},
        "folds": None,
        "sweep": sweep,
    }
    (run_dir / "config.json").write_text(json.dumps(config))
    n_points = len(list(itertools.product(*sweep.values())))
    for fold, test in enumerate(np.array_split(np.arange(len(labels)), n_folds)):
        for name, (per_point, scores) in groups.items():
            ensembling.write_score_file(
                run_dir / "scores" / f"fold{fold}" / f"{name}.npz",
                scores=np.asarray(scores)[:, test],
                labels=np.asarray(labels)[test],
                test_indices=test,
                class_names=CLASS_NAMES,
                member_seeds=np.tile(np.arange(per_point) + 1000 * fold, n_points),
                diverged=(
                    diverged[name][:, fold] if name in diverged else np.zeros(len(scores), bool)
                ),
                optimizer=name,
                fold=fold,
                dataset=dataset,
                hyperparameters=sweep_hyperparameters(sweep, per_point),
            )
    return run_dir


def random_scores(seed, members, n_samples=12):
    return np.random.default_rng(seed).dirichlet(np.ones(3), size=(members, n_samples))


@pytest.fixture
def lr_run(tmp_path):
    """DGrad 3 per grid point and Cos#1 2 per grid point, learning_rate 3e-3, 1e-3, 3e-4;
    random scores (returned for recomputation)."""
    scores = {"dgrad": random_scores(0, 9), "cos1": random_scores(1, 6)}
    run = write_sweep_run(
        tmp_path / "sweep",
        {"dgrad": (3, scores["dgrad"]), "cos1": (2, scores["cos1"])},
        {"learning_rate": LEARNING_RATES},
        LABELS,
    )
    return run, scores


def accuracy(scores):
    return float(np.mean(np.asarray(scores).argmax(-1) == LABELS))


def sum_rule(scores):
    return float(np.mean(np.asarray(scores, np.float64).sum(0).argmax(-1) == LABELS))


# --------------------------------------------------------------------------------------------
# Score files.


def test_score_file_round_trip_with_hyperparameters(tmp_path):
    hyperparameters = {"learning_rate": [1e-3, 1e-3, 3e-4, 3e-4], "b1": [0.9, 0.9, 0.9, 0.9]}
    path = ensembling.write_score_file(
        tmp_path / "dgrad.npz",
        scores=random_scores(0, 4, 3),
        labels=[0, 1, 2],
        test_indices=[0, 1, 2],
        class_names=CLASS_NAMES,
        member_seeds=[5, 6, 5, 6],  # repeated from one grid point to the next
        diverged=[False] * 4,
        optimizer="dgrad",
        fold=0,
        dataset="tiny",
        hyperparameters=hyperparameters,
    )
    with np.load(path) as archive:
        assert set(archive.files) == {
            *ensembling.SCORE_FILE_KEYS,
            "hyperparameter_names",
            "hyperparameter_values",
        }
        assert archive["hyperparameter_names"].dtype.kind == "U"
        assert archive["hyperparameter_values"].dtype == np.float64
    read = ensembling.read_score_file(path)
    assert read.hyperparameter_names == ("learning_rate", "b1")
    np.testing.assert_array_equal(
        read.hyperparameter_values, [[1e-3, 0.9], [1e-3, 0.9], [3e-4, 0.9], [3e-4, 0.9]]
    )
    assert read.member_seeds.tolist() == [5, 6, 5, 6]


def test_a_file_without_hyperparameters_is_as_before(tmp_path):
    for hyperparameters in (None, {}):
        path = ensembling.write_score_file(
            tmp_path / "sgd.npz",
            scores=random_scores(0, 2, 3),
            labels=[0, 1, 2],
            test_indices=[0, 1, 2],
            class_names=CLASS_NAMES,
            member_seeds=[1, 2],
            diverged=[False, False],
            optimizer="sgd",
            fold=0,
            dataset="tiny",
            hyperparameters=hyperparameters,
        )
        with np.load(path) as archive:
            assert sorted(archive.files) == sorted(ensembling.SCORE_FILE_KEYS)
        read = ensembling.read_score_file(path)
        assert read.hyperparameter_names == () and read.hyperparameter_values is None
        assert read.hyperparameters.shape == (2, 0)


VALID = {
    "scores": np.full((2, 3, 3), 1 / 3),
    "labels": [0, 1, 2],
    "test_indices": [0, 1, 2],
    "class_names": CLASS_NAMES,
    "member_seeds": [1, 2],
    "diverged": [False, False],
    "optimizer": "dgrad",
    "fold": 0,
    "dataset": "tiny",
}


@pytest.mark.parametrize(
    ("hyperparameters", "message"),
    [
        ({"lr": [1e-3, 1e-3]}, r"\['lr'\] not among the sweepable \['learning_rate', 'b1'"),
        ({"learning_rate": [1e-3]}, r"'learning_rate' must have one number per member \(2\)"),
        ({"learning_rate": [1e-3, np.nan]}, "must be finite; member 1 has learning_rate=nan"),
        ({"eps": [1e-8, np.inf]}, "must be finite; member 1 has eps=inf"),
        ({"learning_rate": ["1e-3", "1e-3"]}, "must have one number per member"),
        ({"learning_rate": [[1e-3], [1e-3]]}, "must have one number per member"),
        ({1: [1e-3, 1e-3]}, "hyperparameter name 1 is not a string"),
        ([("learning_rate", [1e-3, 1e-3])], "'hyperparameters' must map names"),
    ],
)
def test_writer_refuses_bad_hyperparameters(tmp_path, hyperparameters, message):
    path = tmp_path / "dgrad.npz"
    with pytest.raises(ensembling.ScoreFileError, match=message) as error:
        ensembling.write_score_file(path, **VALID, hyperparameters=hyperparameters)
    assert str(path) in str(error.value)
    assert not path.exists() and not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"hyperparameter_names": np.array(["b1"])}, "holds 'hyperparameter_names' without"),
        ({"hyperparameter_values": np.ones((2, 1))}, "holds 'hyperparameter_values' without"),
        (
            {
                "hyperparameter_names": np.array(["b1", "b1"]),
                "hyperparameter_values": np.ones((2, 2)),
            },
            r"repeats \['b1'\]",
        ),
        (
            {"hyperparameter_names": np.array(["b1"]), "hyperparameter_values": np.ones((3, 1))},
            r"must be float \[members=2, H=1\]",
        ),
        (
            {"hyperparameter_names": np.array(["b1"]), "hyperparameter_values": np.ones(2)},
            r"must be float \[members=2, H=1\]",
        ),
        (
            {"hyperparameter_names": np.array([1.0]), "hyperparameter_values": np.ones((2, 1))},
            "must be a non-empty unicode array",
        ),
        (
            {"hyperparameter_names": np.array(["b2"]), "hyperparameter_values": [[0.9], [-np.inf]]},
            "member 1 has b2=-inf",
        ),
    ],
)
def test_reader_refuses_bad_hyperparameter_arrays(tmp_path, arrays, message):
    path = ensembling.write_score_file(tmp_path / "dgrad.npz", **VALID)
    with np.load(path) as archive:
        contents = dict(archive)
    np.savez(path, **contents, **{key: np.asarray(value) for key, value in arrays.items()})
    with pytest.raises(ensembling.ScoreFileError, match=message):
        ensembling.read_score_file(path)


# --------------------------------------------------------------------------------------------
# Sweep runs read as one group per grid point.


def test_sweep_run_reads_back_as_one_group_per_grid_point(lr_run):
    run, scores = lr_run
    data = ensembling.load_run(run)
    assert list(data.groups) == [f"dgrad[{p}]" for p in LR_GROUPS] + [
        f"cos1[{p}]" for p in LR_GROUPS
    ]
    for point, lr in enumerate(LEARNING_RATES):
        group = data.groups[f"dgrad[{LR_GROUPS[point]}]"]
        assert group.base_optimizer == "dgrad" and group.n_members == 3
        assert group.hyperparameters == (("learning_rate", lr),)
        # Members 3p..3p+2 of the file, folds' samples concatenated: the scores as written.
        np.testing.assert_array_equal(
            group.scores, scores["dgrad"][3 * point : 3 * point + 3].astype(np.float32)
        )
        assert group.member_seeds.tolist() == [[0, 1000], [1, 1001], [2, 1002]]
        assert not group.diverged.any()
    cos1 = data.groups["cos1[learning_rate=0.0003]"]
    np.testing.assert_array_equal(cos1.scores, scores["cos1"][4:6].astype(np.float32))
    assert ensembling.describe_runs({"tiny": data})[0]["members"] == {
        **{f"dgrad[{p}]": 3 for p in LR_GROUPS},
        **{f"cos1[{p}]": 2 for p in LR_GROUPS},
    }


def test_a_two_hyperparameter_sweep_names_points_in_the_file_order(tmp_path):
    sweep = {"learning_rate": [1e-3, 3e-4], "b1": [0.9, 0.95]}
    scores = random_scores(2, 8)  # 2 members per grid point, 4 grid points
    data = ensembling.load_run(
        write_sweep_run(tmp_path / "r", {"dgrad": (2, scores)}, sweep, LABELS)
    )
    assert list(data.groups) == [
        "dgrad[learning_rate=0.001,b1=0.9]",
        "dgrad[learning_rate=0.001,b1=0.95]",
        "dgrad[learning_rate=0.0003,b1=0.9]",
        "dgrad[learning_rate=0.0003,b1=0.95]",
    ]
    third = data.groups["dgrad[learning_rate=0.0003,b1=0.9]"]
    assert third.hyperparameters == (("learning_rate", 3e-4), ("b1", 0.9))
    np.testing.assert_array_equal(third.scores, scores[4:6].astype(np.float32))
    assert ensembling.display_name(third.optimizer) == "DGrad[learning_rate=0.0003,b1=0.9]"


@pytest.mark.parametrize("empty", [None, {}])
def test_config_without_a_sweep_reads_as_before(tmp_path, empty):
    run = write_run(tmp_path / "r", "tiny", {"sgd": random_scores(0, 2)}, LABELS)
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "sweep": empty}))
    data = ensembling.load_run(run)
    assert list(data.groups) == ["sgd"] and data.groups["sgd"].hyperparameters == ()


def _rewrite_config(run, **changes):
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, **changes}))


@pytest.mark.parametrize(
    ("sweep", "message"),
    [
        ([1e-3], r"'sweep' must map hyperparameter names to value lists"),
        ({"lr": [1e-3]}, r"'sweep' entry 'lr': \[0.001\]; expected a name from"),
        ({"learning_rate": []}, "a non-empty list of finite numbers"),
        ({"learning_rate": [1e-3, True]}, "a non-empty list of finite numbers"),
        ({"learning_rate": 1e-3}, "a non-empty list of finite numbers"),
        ({"learning_rate": [1e-3, 0.001]}, r"repeats a value \(compared as \['0.001', '0.001'\]"),
    ],
)
def test_bad_config_sweep_is_named(lr_run, sweep, message):
    run, _ = lr_run
    _rewrite_config(run, sweep=sweep)
    with pytest.raises(ensembling.ScoreFileError, match=message) as error:
        ensembling.load_run(run)
    assert "config.json" in str(error.value)


def test_sweep_files_that_disagree_with_config_are_named(lr_run, tmp_path):
    run, scores = lr_run
    dgrad = run / "scores" / "fold0" / "dgrad.npz"

    _rewrite_config(run, sweep=None)
    with pytest.raises(ensembling.ScoreFileError, match="config.json has no 'sweep'"):
        ensembling.load_run(run)
    _rewrite_config(
        run, sweep={"learning_rate": LEARNING_RATES}, optimizers={"dgrad": 2, "cos1": 2}
    )
    with pytest.raises(
        ensembling.ScoreFileError,
        match=f"{dgrad}: 9 members; config.json says 2 per grid point x 3 grid points",
    ):
        ensembling.load_run(run)
    _rewrite_config(run, optimizers={"dgrad": 3, "cos1": 2}, sweep={"b1": [0.9, 0.95, 0.99]})
    with pytest.raises(ensembling.ScoreFileError, match=r"config.json's 'sweep' varies \['b1'\]"):
        ensembling.load_run(run)
    _rewrite_config(run, sweep={"learning_rate": [3e-3, 1e-3, 1e-4]})
    with pytest.raises(
        ensembling.ScoreFileError,
        match=r"member 6: learning_rate=0.0003 is not among config.json's 'sweep' values",
    ):
        ensembling.load_run(run)

    # Members interleaved instead of grid point by grid point; a plain file in a sweep run.
    interleaved = write_sweep_run(
        tmp_path / "interleaved",
        {"dgrad": (3, scores["dgrad"][:3])},
        {"learning_rate": [1e-3]},
        LABELS,
    )
    _rewrite_config(
        interleaved, sweep={"learning_rate": [1e-3, 3e-4, 1e-4]}, optimizers={"dgrad": 1}
    )
    path = interleaved / "scores" / "fold0" / "dgrad.npz"
    with np.load(path) as archive:
        contents = dict(archive)
    contents["hyperparameter_values"] = np.array([[1e-3], [3e-4], [1e-3]])
    np.savez(path, **contents)
    with pytest.raises(
        ensembling.ScoreFileError, match=r"grid point dgrad\[learning_rate=0.001\] "
    ):
        ensembling.load_run(interleaved)
    _rewrite_config(interleaved, optimizers={"dgrad": 3}, sweep={"learning_rate": [1e-3]})
    with pytest.raises(ensembling.ScoreFileError, match=r"members 0..2 must be one grid point"):
        ensembling.load_run(interleaved)
    del contents["hyperparameter_names"], contents["hyperparameter_values"]
    np.savez(path, **contents)
    with pytest.raises(ensembling.ScoreFileError, match=rf"{path}: holds hyperparameters \[\]"):
        ensembling.load_run(interleaved)


# --------------------------------------------------------------------------------------------
# Specifications.


def test_grid_point_specs_in_both_forms():
    expected = (("dgrad[learning_rate=0.0003]", 3),)
    for text in (
        "DGrad[learning_rate=3e-4](3)",
        "dgrad@learning_rate=3e-4:3",
        "dgrad @ learning_rate = 0.0003 : 3",
        "DGRAD[Learning_Rate=3E-4]( 3 )",
    ):
        assert ensembling.parse_ensemble_spec(text).terms == expected, text
    spec = ensembling.parse_ensemble_spec("DGrad[b1=0.9, learning_rate=1e+3](2) + cos1@eps=1e-8:1")
    # Named in the grid's canonical order (learning_rate before b1), whatever the order given.
    assert spec.terms == (("dgrad[learning_rate=1000,b1=0.9]", 2), ("cos1[eps=1e-08]", 1))
    assert spec.label == "DGrad[learning_rate=1000,b1=0.9](2) + Cos#1[eps=1e-08](1)"
    # Two grid points of one optimizer are two terms; the plain group is a third.
    spec = ensembling.parse_ensemble_spec(
        "dgrad@learning_rate=1e-3:3 + DGrad[learning_rate=3e-4](3)"
    )
    assert [term for term, _ in spec.terms] == [
        "dgrad[learning_rate=0.001]",
        "dgrad[learning_rate=0.0003]",
    ]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("DGrad[lr=3e-4](3)", "'lr=3e-4' is not NAME=VALUE with NAME one of"),
        ("DGrad[](3)", "'' is not NAME=VALUE"),
        ("dgrad@learning_rate:3", "'learning_rate' is not NAME=VALUE"),
        ("DGrad[learning_rate=abc](3)", "learning_rate='abc' is not a finite number"),
        ("DGrad[learning_rate=inf](3)", "learning_rate='inf' is not a finite number"),
        ("DGrad[learning_rate=1e-3,learning_rate=2e-3](3)", "gives learning_rate twice"),
        (
            "DGrad[learning_rate=3e-4](3) + dgrad@learning_rate=0.0003:2",
            r"names DGrad\[learning_rate=0.0003\] twice",
        ),
        (
            "DGrad[learning_rate=1e-3,b1=0.9](3) + dgrad@b1=0.9,learning_rate=0.001:2",
            "twice",
        ),
        ("DGrad[learning_rate=3e-4](0)", "asks for 0 members"),
        ("DGrad[learning_rate=3e-4]", "cannot parse"),
    ],
)
def test_grid_point_specs_reject_bad_input(text, message):
    with pytest.raises(ensembling.EnsembleSpecError, match=message):
        ensembling.parse_ensemble_spec(text)


def test_grid_point_specs_are_served_by_the_sweep(lr_run, tmp_path):
    run, scores = lr_run
    data = ensembling.load_run(run)
    result = ensembling.evaluate_ensemble(
        data,
        ensembling.parse_ensemble_spec("dgrad@learning_rate=1e-3:2 + Cos#1[learning_rate=3e-3](2)"),
    )
    members = np.concatenate([scores["dgrad"][3:5], scores["cos1"][0:2]])
    assert result.metrics.accuracy == pytest.approx(sum_rule(members))
    assert result.spec.terms == (
        ("dgrad[learning_rate=0.001]", 2),
        ("cos1[learning_rate=0.003]", 2),
    )

    with pytest.raises(ensembling.EnsembleSpecError) as error:
        ensembling.evaluate_ensemble(data, ensembling.parse_ensemble_spec("DGrad(3)"))
    assert "DGrad was trained as a hyperparameter sweep" in str(error.value)
    assert (
        "DGrad[learning_rate=0.003], DGrad[learning_rate=0.001], DGrad[learning_rate=0.0003]"
        in str(error.value)
    )
    assert "dgrad@learning_rate=0.003:k" in str(error.value)
    with pytest.raises(
        ensembling.EnsembleSpecError, match=r"has no grid point DGrad\[learning_rate=0.01\]"
    ):
        ensembling.table2({"tiny": data}, ["DGrad[learning_rate=1e-2](3)"])
    with pytest.raises(ensembling.EnsembleSpecError, match="asks for 4 DGrad"):
        ensembling.table2({"tiny": data}, ["DGrad[learning_rate=1e-3](4)"])

    # A plain run of the same data set merges with the sweep; its group has no grid points.
    plain = write_run(tmp_path / "plain", "tiny", {"sgd": scores["cos1"][:2]}, LABELS)
    merged = ensembling.load_runs([run, plain])["tiny"]
    assert list(merged.groups)[0] == "sgd"
    with pytest.raises(
        ensembling.EnsembleSpecError, match=r"SGD on 'tiny' .* has no hyperparameter sweep"
    ):
        ensembling.table2({"tiny": merged}, ["SGD[learning_rate=1e-3](1)"])


def test_grid_point_names_in_any_order(tmp_path):
    sweep = {"learning_rate": [1e-3, 3e-4], "b1": [0.9, 0.95]}
    scores = random_scores(3, 8)
    data = ensembling.load_run(
        write_sweep_run(tmp_path / "r", {"dgrad": (2, scores)}, sweep, LABELS)
    )
    for text in ("DGrad[b1=0.95,learning_rate=0.0003](2)", "dgrad@learning_rate=3e-4,b1=.95:2"):
        result = ensembling.evaluate_ensemble(data, ensembling.parse_ensemble_spec(text))
        assert result.spec.terms == (("dgrad[learning_rate=0.0003,b1=0.95]", 2),)
        assert result.metrics.accuracy == pytest.approx(sum_rule(scores[6:8]))
    with pytest.raises(ensembling.EnsembleSpecError, match="has no grid point"):
        ensembling.evaluate_ensemble(data, ensembling.parse_ensemble_spec("dgrad@b1=0.9:2"))


# --------------------------------------------------------------------------------------------
# Tables.


def test_table1_has_a_row_per_grid_point(lr_run):
    run, scores = lr_run
    data = ensembling.load_run(run)
    rows = {row.optimizer: row for row in ensembling.table1(ensembling.member_results(data))}
    assert list(rows) == list(data.groups)
    for name, per_point in (("dgrad", 3), ("cos1", 2)):
        for point, label in enumerate(LR_GROUPS):
            accuracies = [
                accuracy(m) for m in scores[name][per_point * point : per_point * (point + 1)]
            ]
            row = rows[f"{name}[{label}]"]
            assert row.n_members == per_point and row.diverged_members == ()
            assert row.accuracy_mean == pytest.approx(np.mean(accuracies))
            assert row.accuracy_std == pytest.approx(np.std(accuracies, ddof=1))
    markdown = ensembling.table1_markdown(list(rows.values()))
    mean, std = (
        rows["dgrad[learning_rate=0.0003]"].accuracy_mean,
        rows["dgrad[learning_rate=0.0003]"].accuracy_std,
    )
    assert f"| DGrad[learning_rate=0.0003] | {100 * mean:.2f} ± {100 * std:.2f} |" in markdown
    assert markdown.index("DGrad[learning_rate=0.003]") < markdown.index(
        "Cos#1[learning_rate=0.003]"
    )


def test_default_table2_has_each_grid_point_whole(lr_run):
    run, scores = lr_run
    datasets = ensembling.load_runs([run])
    entries = {entry.spec.label: entry for entry in ensembling.table2(datasets)}
    served = [label for label, entry in entries.items() if entry.result is not None]
    assert served == [f"DGrad[{p}](3)" for p in LR_GROUPS] + [f"Cos#1[{p}](2)" for p in LR_GROUPS]
    for point, label in enumerate(LR_GROUPS):
        result = entries[f"DGrad[{label}](3)"].result
        assert result.metrics.accuracy == pytest.approx(
            sum_rule(scores["dgrad"][3 * point : 3 * point + 3])
        )
    assert "DGrad was trained as a hyperparameter sweep" in entries["DGrad(7)"].unavailable


@pytest.fixture
def diverged_sweep_run(tmp_path):
    """DGrad, 3 members per grid point at learning_rate 1e-2, 1e-3, 1e-4, built to known
    accuracies (``scores_from_correctness``, twelve samples, two folds of six).

    1e-2: every member diverged in fold 0 (NaN scores there): no stand-alone accuracy, no
    fused decision in fold 0. 1e-3: member 1 diverged in fold 1; members 0 and 2 are right on
    blocks b0 b1 (6/12 each); fused in fold 1 from members 0 and 2 alone. 1e-4: all right on
    b0 b1 b2 (9/12), none diverged.
    """
    point_1e2 = scores_from_correctness(correctness(3, [range(3)] * 4), LABELS)
    point_1e2[:, :6] = np.nan
    point_1e3 = scores_from_correctness(correctness(3, [[0, 2], [0, 2], [1], [1]]), LABELS)
    point_1e3[1, 6:] = np.nan
    point_1e4 = scores_from_correctness(correctness(3, [range(3)] * 3 + [[]]), LABELS)
    diverged = np.zeros((9, 2), dtype=bool)
    diverged[0:3, 0] = True
    diverged[4, 1] = True
    return write_sweep_run(
        tmp_path / "div",
        {"dgrad": (3, np.concatenate([point_1e2, point_1e3, point_1e4]))},
        {"learning_rate": [1e-2, 1e-3, 1e-4]},
        LABELS,
        diverged={"dgrad": diverged},
    )


def test_sweep_table_marks_grid_points_where_members_diverged(diverged_sweep_run):
    datasets = ensembling.load_runs([diverged_sweep_run])
    members = ensembling.member_results(datasets["tiny"])
    rows = ensembling.sweep_table(datasets, members)
    assert [(r.group, r.n_members, r.diverged_members) for r in rows] == [
        ("dgrad[learning_rate=0.01]", 3, (0, 1, 2)),
        ("dgrad[learning_rate=0.001]", 3, (1,)),
        ("dgrad[learning_rate=0.0001]", 3, ()),
    ]
    lost, one_lost, clean = rows
    assert np.isnan(lost.accuracy_mean) and np.isnan(lost.fused_accuracy)
    # 1e-3: members 0 and 2 right on b0 b1: 6/12 each (std 0); fused, fold 0 (b0 b1: R=2,
    # W=1) right, fold 1 members 0 and 2 only (b2 b3: R=0) wrong: 6/12.
    assert (one_lost.accuracy_mean, one_lost.accuracy_std, one_lost.fused_accuracy) == (
        0.5,
        0.0,
        0.5,
    )
    assert (clean.accuracy_mean, clean.accuracy_std, clean.fused_accuracy) == (0.75, 0.0, 0.75)
    assert clean.hyperparameters == (("learning_rate", 1e-4),)

    markdown = ensembling.sweep_markdown(rows)
    lines = markdown.splitlines()
    assert lines[0] == (
        "| Data set | Optimizer | learning_rate | Members | Diverged | Stand-alone acc % "
        "| Fused acc % (sum) |"
    )
    assert "| tiny | DGrad † | 0.01 | 3 | 3/3 (members 0, 1, 2) | – ± – | – |" in lines
    assert "| tiny | DGrad † | 0.001 | 3 | 1/3 (member 1) | 50.00 ± 0.00 | 50.00 |" in lines
    assert "| tiny | DGrad | 0.0001 | 3 | none | 75.00 ± 0.00 | 75.00 |" in lines
    assert lines[-1].startswith("†: members diverged at this grid point")
    assert "†" not in ensembling.sweep_markdown([clean])


def test_sweep_lines_group_by_optimizer_and_the_other_values(tmp_path):
    sweep = {"learning_rate": [1e-3, 3e-4], "b1": [0.9, 0.95]}
    run = write_sweep_run(tmp_path / "r", {"dgrad": (1, random_scores(4, 4))}, sweep, LABELS)
    datasets = ensembling.load_runs([run])
    rows = ensembling.sweep_table(datasets, ensembling.member_results(datasets["tiny"]))
    by_lr = ensembling.sweep_lines(rows, "learning_rate")
    assert list(by_lr) == [("tiny", "dgrad", (("b1", 0.9),)), ("tiny", "dgrad", (("b1", 0.95),))]
    # Each line's points sorted by the value on the x axis.
    assert [r.group for r in by_lr[("tiny", "dgrad", (("b1", 0.9),))]] == [
        "dgrad[learning_rate=0.0003,b1=0.9]",
        "dgrad[learning_rate=0.001,b1=0.9]",
    ]
    assert list(ensembling.sweep_lines(rows, "b1")) == [
        ("tiny", "dgrad", (("learning_rate", 1e-3),)),
        ("tiny", "dgrad", (("learning_rate", 3e-4),)),
    ]
    assert ensembling.sweep_lines(rows, "eps") == {}


# --------------------------------------------------------------------------------------------
# The command line.


def test_cli_writes_the_sweep_table_and_plot(diverged_sweep_run, tmp_path, capsys):
    out = tmp_path / "out"
    assert ensemble.main([str(diverged_sweep_run), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "## Hyperparameter sweep: accuracy (%) per grid point" in printed
    assert "| tiny | DGrad † | 0.01 | 3 | 3/3 (members 0, 1, 2) | – ± – | – |" in printed
    assert printed.strip() == (out / "tables.md").read_text().strip()
    assert (out / "hyperparameter_sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with (out / "sweep.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert [(r["group"], r["learning_rate"], r["diverged_members"]) for r in rows] == [
        ("dgrad[learning_rate=0.01]", "0.01", "0 1 2"),
        ("dgrad[learning_rate=0.001]", "0.001", "1"),
        ("dgrad[learning_rate=0.0001]", "0.0001", ""),
    ]
    assert rows[0]["accuracy_mean"] == "" and rows[0]["fused_accuracy"] == ""
    assert float(rows[2]["fused_accuracy"]) == 0.75 and rows[2]["fusion"] == "sum"
    report = json.loads((out / "report.json").read_text())
    assert [r["fused_accuracy"] for r in report["sweep"]] == [None, 0.5, 0.75]

    # --no-plots: no sweep plot either; a plain DGrad(3) is an error naming the grid points.
    assert (
        ensemble.main([str(diverged_sweep_run), "--out", str(tmp_path / "np"), "--no-plots"]) == 0
    )
    assert not (tmp_path / "np" / "hyperparameter_sweep.png").exists()
    with pytest.raises(SystemExit) as exit_info:
        ensemble.main([str(diverged_sweep_run), "--out", str(out), "--ensembles", "DGrad(3)"])
    assert exit_info.value.code == 1
    assert "DGrad[learning_rate=0.001]" in capsys.readouterr().err


def test_cli_without_a_sweep_writes_no_sweep_output(tmp_path, capsys):
    run = write_run(tmp_path / "r", "tiny", {"sgd": random_scores(0, 2)}, LABELS)
    out = tmp_path / "out"
    assert ensemble.main([str(run), "--out", str(out)]) == 0
    assert "Hyperparameter sweep" not in capsys.readouterr().out
    assert sorted(path.name for path in out.iterdir()) == [
        "accuracy_vs_size.png",
        "cyclic_factors.png",
        "members.csv",
        "reliability.png",
        "report.json",
        "table1.csv",
        "table2.csv",
        "tables.md",
    ]
    assert "sweep" not in json.loads((out / "report.json").read_text())


# The output of a run without a sweep as it was before sweeps existed, with the run directory
# written {RUN} (commit 205b0b4), plus what was added since and only added: the runs' missing
# folds, and the bootstrap intervals and differences from the baseline (2000 resamples, seed
# 0). Compared as text so that a difference shows as a diff.
GOLDEN = Path(__file__).parent / "golden" / "run_without_sweep"


def test_a_run_without_sweep_gives_the_output_of_before(tmp_path):
    sgd = scores_from_correctness(correctness(2, [range(2), [0], [], [1]]), LABELS)
    dgrad = scores_from_correctness(correctness(3, [[0], range(3), [1, 2], []]), LABELS)
    dgrad[1, 0:6] = np.nan
    diverged = np.array([[False, False], [True, False], [False, False]])
    run = write_run(
        tmp_path / "run", "tiny", {"sgd": sgd, "dgrad": dgrad}, LABELS, diverged={"dgrad": diverged}
    )
    out = tmp_path / "out"
    assert ensemble.main([str(run), "--out", str(out), "--no-plots"]) == 0
    golden = sorted(path.name for path in GOLDEN.iterdir())
    assert sorted(path.name for path in out.iterdir()) == golden
    for name in golden:
        got = (out / name).read_text().replace(str(run), "{RUN}")
        assert got == (GOLDEN / name).read_text(), name
