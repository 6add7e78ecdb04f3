"""Tests of ensemble.py: fusion, metrics, score-file checks, the paper's tables, CLI, plots.

Score files are written by `ensembling.write_score_file`, the format's owner (through
`write_fold` and `write_run`); the synthetic runs have accuracies built in by construction
(see `hela_run`). Score files and run directories: test_ensemble_score_files.py.
"""

import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from cli_testing import help_arguments
from ensemble_testing import (
    LABELS,
    hela_groups,
    scores_from_correctness,
    write_hela_run,
    write_run,
)
from sklearn import metrics as sk_metrics

import ensemble
import ensembling
import optimizer_figures


@pytest.fixture
def hela_run(tmp_path):
    return write_hela_run(tmp_path)


# --------------------------------------------------------------------------------------------
# Specifications.


def test_parse_spec_both_notations():
    expected = (("sgd", 14), ("dgrad", 7), ("cos1", 7))
    assert ensembling.parse_ensemble_spec("SGD(14) + DGrad(7) + Cos#1(7)").terms == expected
    assert ensembling.parse_ensemble_spec("sgd:14+dgrad:7+cos1:7").terms == expected
    assert ensembling.parse_ensemble_spec("sGd( 14 )+DGRAD:7 + COS#1(7)").terms == expected
    spec = ensembling.parse_ensemble_spec("diffgrad:7+cos2:3")
    assert spec.label == "diffGrad(7) + Cos#2(3)"
    assert spec.size == 10


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("SGD(7) + 2nd(7)", "cannot parse '2nd"),
        ("sgd7", "cannot parse 'sgd7'"),
        ("sgd:0", "asks for 0 members"),
        ("sgd:7+SGD(7)", "names SGD twice"),
        ("", "cannot parse"),
    ],
)
def test_parse_spec_rejects_bad_input(text, message):
    with pytest.raises(ensembling.EnsembleSpecError, match=message.replace("(", r"\(")):
        ensembling.parse_ensemble_spec(text)


def test_group_names_are_checked_for_spelling_only():
    assert ensembling.optimizer_group(" Cos#1 ") == "cos1"
    assert ensembling.optimizer_group("RMSProp") == "rmsprop"  # not the paper's; the runs decide
    for bad in ("2nd", "", "sgd/../x"):
        with pytest.raises(ensembling.EnsembleSpecError, match="is not an optimizer group name"):
            ensembling.optimizer_group(bad)
    spec = ensembling.parse_ensemble_spec("RMSProp(3) + Cos#2(2) + my_opt:1")
    assert spec.terms == (("rmsprop", 3), ("cos2", 2), ("my_opt", 1))
    assert spec.label == "rmsprop(3) + Cos#2(2) + my_opt(1)"  # unknown names shown as they are
    assert ensembling.paper_order(["rmsprop", "cos1", "sgd", "adamw"]) == [
        "sgd",
        "cos1",
        "rmsprop",
        "adamw",
    ]


def test_specs_are_checked_against_the_groups_the_runs_hold(tmp_path):
    # A group the paper does not have is an ordinary group: it loads, fuses and is shown by
    # its own name, after the paper's groups; a group the runs lack is named with those held.
    labels = np.tile([0, 1, 2], 2)
    all_right = scores_from_correctness(np.ones((2, 6), dtype=bool), labels)
    all_wrong = scores_from_correctness(np.zeros((3, 6), dtype=bool), labels)
    run = write_run(tmp_path / "r", "hela", {"rmsprop": all_wrong, "dgrad": all_right}, labels)
    datasets = ensembling.load_runs([run])
    assert list(datasets["hela"].groups) == ["dgrad", "rmsprop"]
    (entry,) = ensembling.table2(datasets, ["RMSProp(3)"])
    assert entry.result.metrics.accuracy == 0.0 and entry.spec.label == "rmsprop(3)"
    with pytest.raises(
        ensembling.EnsembleSpecError,
        match=r"has no 'adamw' scores; its groups are \['dgrad', 'rmsprop'\]",
    ):
        ensembling.table2(datasets, ["dgrad:2 + adamw:1"])
    with pytest.raises(
        ensembling.EnsembleSpecError,
        match=r"has no Cos#1 \(cos1\) scores; its groups are \['dgrad', 'rmsprop'\]",
    ):
        ensembling.evaluate_ensemble(datasets["hela"], ensembling.parse_ensemble_spec("Cos#1(7)"))
    rows = ensembling.table1(ensembling.member_results(datasets["hela"]))
    markdown = ensembling.table1_markdown(rows)
    assert markdown.index("| DGrad |") < markdown.index("| rmsprop |")
    assert "| rmsprop(3) + DGrad(2) |" not in ensembling.runs_markdown(datasets)
    assert "| DGrad(2) + rmsprop(3) |" in ensembling.runs_markdown(datasets)


# --------------------------------------------------------------------------------------------
# Fusion.

# Three members, two samples, two classes, label 0 for both. Sample 0: member 0 is confident
# and right, members 1 and 2 mildly wrong: the sum [1.7, 1.3] picks class 0, the vote (1 to 2)
# picks class 1. Sample 1: all members say class 0.
HAND_SCORES = np.array(
    [
        [[0.9, 0.1], [0.8, 0.2]],
        [[0.4, 0.6], [0.7, 0.3]],
        [[0.4, 0.6], [0.6, 0.4]],
    ]
)
HAND_LABELS = np.array([0, 0])


def test_sum_rule_and_vote_disagree_on_hand_made_scores():
    summed = ensembling.fuse(HAND_SCORES, "sum")
    np.testing.assert_allclose(summed.probabilities, [[1.7 / 3, 1.3 / 3], [2.1 / 3, 0.9 / 3]])
    np.testing.assert_array_equal(summed.predictions, [0, 0])

    voted = ensembling.fuse(HAND_SCORES, "vote")
    np.testing.assert_allclose(voted.probabilities, [[1 / 3, 2 / 3], [1.0, 0.0]])
    np.testing.assert_array_equal(voted.predictions, [1, 0])

    # Geometric means: sample 0 (.9*.4*.4)^(1/3) : (.1*.6*.6)^(1/3) = .144^(1/3) : .036^(1/3).
    geometric = ensembling.fuse(HAND_SCORES, "mean_log")
    p0 = 1 / (1 + 0.25 ** (1 / 3))
    p1 = 1 / (1 + (0.2 * 0.3 * 0.4 / (0.8 * 0.7 * 0.6)) ** (1 / 3))
    np.testing.assert_allclose(geometric.probabilities, [[p0, 1 - p0], [p1, 1 - p1]])
    np.testing.assert_array_equal(geometric.predictions, [0, 0])


def test_fused_probabilities_are_summed_not_accuracies_averaged():
    # Member accuracies are 1, 1/2, 1/2 (mean 2/3); the fused ensemble is right on both.
    member_accuracies = (HAND_SCORES.argmax(-1) == HAND_LABELS).mean(axis=1)
    np.testing.assert_allclose(member_accuracies, [1.0, 0.5, 0.5])
    metrics = ensembling.classification_metrics(
        ensembling.fuse(HAND_SCORES).probabilities, HAND_LABELS
    )
    assert metrics.accuracy == 1.0


def test_vote_ties_go_to_the_larger_summed_probability():
    # Votes: class 2, class 1 -> a tie between 1 and 2; sums: c1 = .1+.5 = .6, c2 = .45+.3.
    scores = np.array([[[0.45, 0.1, 0.45 + 1e-3]], [[0.2, 0.5, 0.3]]])
    scores /= scores.sum(-1, keepdims=True)
    fused = ensembling.fuse(scores, "vote")
    np.testing.assert_allclose(fused.probabilities, [[0.0, 0.5, 0.5]])
    np.testing.assert_array_equal(fused.predictions, [2])


def test_fuse_leaves_out_invalid_members():
    scores = HAND_SCORES.copy()
    scores[0, 0] = np.nan  # left out below, must not poison the others
    valid = np.array([[False, True], [True, True], [True, True]])
    fused = ensembling.fuse(scores, "sum", valid)
    np.testing.assert_allclose(fused.probabilities, [[0.4, 0.6], [2.1 / 3, 0.9 / 3]])
    np.testing.assert_array_equal(fused.predictions, [1, 0])
    with pytest.raises(ValueError, match=r"samples \[1\] have no member"):
        ensembling.fuse(scores, "sum", np.array([[True, False]] * 3))
    with pytest.raises(ValueError, match="unknown fusion rule 'max'"):
        ensembling.fuse(scores, "max")


@pytest.mark.parametrize("seed", range(5))
def test_sum_rule_accuracy_against_a_numpy_reference(seed):
    # Second implementation: the trainer's former formula, argmax of the summed scores.
    rng = np.random.default_rng(seed)
    scores = rng.dirichlet(np.ones(4), size=(5, 40))
    labels = rng.integers(0, 4, size=40)
    expected = (scores.sum(0).argmax(-1) == labels).mean()
    assert ensembling.sum_rule_accuracy(scores, labels) == expected
    # Members left out per sample: sum over the valid ones only.
    valid = rng.random((5, 40)) < 0.6
    valid[0] = True
    masked = np.where(valid[..., None], scores, 0.0)
    assert ensembling.sum_rule_accuracy(scores, labels, valid=valid) == (
        (masked.sum(0).argmax(-1) == labels).mean()
    )


def test_sum_rule_accuracy_by_hand_and_without_members():
    # HAND_SCORES: sum rule right on both samples; the vote wrong on sample 0.
    assert ensembling.sum_rule_accuracy(HAND_SCORES, HAND_LABELS) == 1.0
    assert math.isnan(ensembling.sum_rule_accuracy(np.zeros((0, 2, 2)), HAND_LABELS))
    no_member_for_sample_1 = np.array([[True, False]] * 3)
    assert math.isnan(
        ensembling.sum_rule_accuracy(HAND_SCORES, HAND_LABELS, valid=no_member_for_sample_1)
    )
    with pytest.raises(ValueError, match=r"labels \[n_samples\]; got \(3, 2, 2\) and \(3,\)"):
        ensembling.sum_rule_accuracy(HAND_SCORES, np.array([0, 0, 0]))
    with pytest.raises(ValueError, match=r"valid has shape \(2, 2\); expected \(3, 2\)"):
        ensembling.sum_rule_accuracy(HAND_SCORES, HAND_LABELS, valid=np.ones((2, 2), bool))


# --------------------------------------------------------------------------------------------
# Metrics.


@pytest.mark.parametrize("n_classes", [2, 5])
def test_metrics_equal_sklearn_and_numpy_on_random_scores(n_classes):
    rng = np.random.default_rng(n_classes)
    probabilities = rng.dirichlet(np.ones(n_classes), size=300)
    labels = rng.integers(0, n_classes, size=300)
    metrics = ensembling.classification_metrics(probabilities, labels)
    predictions = probabilities.argmax(-1)
    assert metrics.accuracy == pytest.approx(sk_metrics.accuracy_score(labels, predictions))
    assert metrics.macro_f1 == pytest.approx(
        sk_metrics.f1_score(labels, predictions, average="macro")
    )
    assert metrics.nll == pytest.approx(sk_metrics.log_loss(labels, probabilities))
    # Independent NumPy formulas: NLL, and the multi-class Brier score (never halved).
    assert metrics.nll == pytest.approx(-np.log(probabilities[np.arange(300), labels]).mean())
    one_hot = np.eye(n_classes)[labels]
    assert metrics.brier == pytest.approx(((probabilities - one_hot) ** 2).sum(-1).mean())


def test_ece_and_brier_on_a_hand_computed_case():
    probabilities = np.array([[0.95, 0.05], [0.95, 0.05], [0.5, 0.5], [0.4, 0.6]])
    labels = np.array([0, 1, 0, 1])
    # Bins of width 1/15: (14/15, 1] holds samples 0, 1 (conf .95, acc 1/2);
    # (7/15, 8/15] sample 2 (tie -> class 0, right, conf .5); (8/15, 9/15] sample 3 (.6, right).
    # ECE = 2/4 * .45 + 1/4 * .5 + 1/4 * .4 = .45.
    assert ensembling.expected_calibration_error(probabilities, labels) == pytest.approx(0.45)
    # Brier: (.05^2 + .05^2) + (.95^2 + .95^2) + (.5^2 + .5^2) + (.4^2 + .4^2), over 4.
    assert ensembling.brier_score(probabilities, labels) == pytest.approx(2.63 / 4)
    curve = ensembling.reliability_curve(probabilities, labels)
    np.testing.assert_array_equal(np.flatnonzero(curve.count), [7, 8, 14])
    np.testing.assert_allclose(curve.accuracy[[7, 8, 14]], [1.0, 1.0, 0.5])


def test_reliability_bins_are_right_closed():
    # A confidence of exactly 3/15 belongs to bin 2, (2/15, 3/15]; 0 goes to bin 0.
    probabilities = np.array([[0.2, 0.2, 0.2, 0.2, 0.2], [1.0, 0.0, 0.0, 0.0, 0.0]])
    curve = ensembling.reliability_curve(probabilities, np.array([0, 0]))
    assert curve.count[2] == 1 and curve.count[14] == 1 and curve.count.sum() == 2


def test_pairwise_disagreement_by_hand():
    predictions = np.array([[0, 0, 1, 1], [0, 1, 1, 1], [1, 1, 1, 1]])
    # Pairs (0,1) 1/4, (0,2) 2/4, (1,2) 1/4.
    assert ensembling.pairwise_disagreement(predictions) == pytest.approx(1 / 3)
    valid = np.ones_like(predictions, dtype=bool)
    valid[2, 0] = False
    # Over samples both hold: (0,1) 1/4, (0,2) 1/3 (samples 1..3), (1,2) 0.
    assert ensembling.pairwise_disagreement(predictions, valid) == pytest.approx(
        (1 / 4 + 1 / 3) / 3
    )
    assert math.isnan(ensembling.pairwise_disagreement(predictions[:1]))


def test_accuracy_mean_and_std_by_hand():
    # 0.5, 0.75, 1.0: mean .75; squared deviations .0625 + 0 + .0625 over n - 1 = 2.
    assert ensembling.accuracy_mean_and_std([0.5, 0.75, 1.0]) == (0.75, 0.25)
    assert ensembling.accuracy_mean_and_std(np.array([0.2, 0.4])) == pytest.approx(
        (0.3, math.sqrt(0.02))
    )
    mean, std = ensembling.accuracy_mean_and_std([0.9])
    assert mean == 0.9 and math.isnan(std)  # one member: no spread to estimate, not 0
    assert all(math.isnan(v) for v in ensembling.accuracy_mean_and_std([]))


# --------------------------------------------------------------------------------------------
# Tables from synthetic runs of known accuracy.


def test_table1_matches_the_built_in_accuracies(hela_run):
    datasets = ensembling.load_runs([hela_run])
    rows = {
        row.optimizer: row for row in ensembling.table1(ensembling.member_results(datasets["hela"]))
    }
    expected = {
        "sgd": [9 / 12] * 2 + [6 / 12] * 5 + [3 / 12] * 7,
        "dgrad": [9 / 12] + [6 / 12] * 6,
        "cos1": [6 / 12] * 7,
    }
    assert list(rows) == ["sgd", "dgrad", "cos1"]
    for optimizer, accuracies in expected.items():
        assert rows[optimizer].accuracy_mean == pytest.approx(np.mean(accuracies))
        assert rows[optimizer].accuracy_std == pytest.approx(np.std(accuracies, ddof=1))
        assert rows[optimizer].n_members == len(accuracies)
        assert rows[optimizer].diverged_members == ()
    assert rows["sgd"].accuracy_mean == pytest.approx(5.75 / 14)


def test_table2_matches_the_built_in_accuracies(hela_run):
    datasets = ensembling.load_runs([hela_run])
    entries = {entry.spec.label: entry for entry in ensembling.table2(datasets)}
    assert list(entries) == [
        ensembling.parse_ensemble_spec(s).label for s in ensembling.PAPER_TABLE2_ENSEMBLES
    ]
    expected = {
        "DGrad(7)": 6 / 12,
        "Cos#1(7)": 6 / 12,
        "DGrad(7) + Cos#1(7)": 1.0,
        "SGD(14)": 6 / 12,
        "SGD(7)": 9 / 12,
        "SGD(7) + DGrad(7)": 9 / 12,
        "SGD(14) + DGrad(7) + Cos#1(7)": 1.0,
    }
    for label, entry in entries.items():
        if label in expected:
            assert entry.result.metrics.accuracy == pytest.approx(expected[label]), label
            assert entry.unavailable is None
        else:
            assert entry.result is None, label
    assert "has no Adam (adam) scores" in entries["Adam(7)"].unavailable
    assert "asks for 14 DGrad members" in entries["DGrad(14)"].unavailable
    assert "trained 7" in entries["DGrad(14)"].unavailable


def test_explicit_ensembles_must_be_servable(hela_run):
    datasets = ensembling.load_runs([hela_run])
    with pytest.raises(ensembling.EnsembleSpecError, match=r"asks for 14 DGrad members.*trained 7"):
        ensembling.table2(datasets, ["DGrad(14)"])
    with pytest.raises(ensembling.EnsembleSpecError, match=r"no Cos#2 \(cos2\) scores"):
        ensembling.table2(datasets, ["sgd:7+cos2:7"])
    (entry,) = ensembling.table2(datasets, ["sgd:7 + dgrad:7"], rule="vote")
    # Vote (right where W < R): b0 R=7 W=7 tie -> summed probability decides (right);
    # b1 and b2 right; b3 R=1 W=13 wrong.
    assert entry.result.metrics.accuracy == pytest.approx(9 / 12)
    assert entry.result.rule == "vote"


def test_accuracy_by_ensemble_size(hela_run):
    data = ensembling.load_runs([hela_run])["hela"]
    # First k SGD members: b2 stays right while W = k - 2 < 3 * 2, i.e. k <= 7.
    np.testing.assert_allclose(
        ensembling.accuracy_by_ensemble_size(data, "sgd"), [9 / 12] * 7 + [6 / 12] * 7
    )


def test_runs_of_one_data_set_are_merged_and_data_sets_become_columns(tmp_path):
    groups = hela_groups()
    sgd_run = write_run(tmp_path / "a", "hela", {"sgd": groups["sgd"]}, LABELS)
    other_run = write_run(
        tmp_path / "b", "hela", {"dgrad": groups["dgrad"], "cos1": groups["cos1"]}, LABELS
    )
    all_right = scores_from_correctness(np.ones((7, 6), dtype=bool), LABELS[:6])
    bg_run = write_run(tmp_path / "bg", "bg", {"sgd": all_right}, LABELS[:6], n_folds=3)
    datasets = ensembling.load_runs([sgd_run, bg_run, other_run])
    assert list(datasets) == ["hela", "bg"]
    assert list(datasets["hela"].groups) == ["sgd", "dgrad", "cos1"]
    assert datasets["hela"].run_dirs == (sgd_run, other_run)
    (hela, bg) = ensembling.table2(datasets, ["SGD(7)"])
    assert (hela.dataset, bg.dataset) == ("hela", "bg")
    assert hela.result.metrics.accuracy == pytest.approx(9 / 12)
    assert bg.result.metrics.accuracy == 1.0
    (merged,) = ensembling.table2({"hela": datasets["hela"]}, ["SGD(14) + DGrad(7) + Cos#1(7)"])
    assert merged.result.metrics.accuracy == 1.0

    duplicate = write_run(tmp_path / "c", "hela", {"dgrad": groups["dgrad"]}, LABELS)
    with pytest.raises(ensembling.ScoreFileError, match=r"'dgrad'.*two runs.*/b and .*/c"):
        ensembling.load_runs([sgd_run, other_run, duplicate])


# --------------------------------------------------------------------------------------------
# Diverged members.


@pytest.fixture
def diverged_run(tmp_path):
    """Three DGrad members, two folds of three samples, all labels 0.

    Member 1 diverged in fold 1 (NaN scores); member 2 is marked diverged in fold 0 but its
    scores are finite and wrong: both must be left out of those folds only.
    """
    labels = np.zeros(6, dtype=np.int64)
    scores = np.empty((3, 6, 3))
    scores[0] = [0.5, 0.3, 0.2]
    scores[1] = [0.6, 0.3, 0.1]
    scores[2] = [0.4, 0.5, 0.1]
    scores[1, 3:] = np.nan
    scores[2, :3] = [0.0, 0.0, 1.0]
    diverged = np.array([[False, False], [False, True], [True, False]])
    return write_run(
        tmp_path / "div", "hela", {"dgrad": scores}, labels, diverged={"dgrad": diverged}
    )


def test_diverged_members_are_left_out_in_their_folds(diverged_run):
    data = ensembling.load_runs([diverged_run])["hela"]
    result = ensembling.evaluate_ensemble(data, ensembling.parse_ensemble_spec("DGrad(3)"))
    assert result.left_out == (
        ensembling.LeftOutMember("dgrad", 1, 1),
        ensembling.LeftOutMember("dgrad", 2, 0),
    )
    # Fold 0: members 0 and 1; fold 1: members 0 and 2.
    np.testing.assert_allclose(
        result.fused.probabilities, [[0.55, 0.3, 0.15]] * 3 + [[0.45, 0.4, 0.15]] * 3
    )
    assert result.metrics.accuracy == 1.0
    # Pairs (0,1) on fold 0 and (0,2) on fold 1 disagree on nothing and on all: (0 + 1) / 2;
    # (1,2) share no fold and are skipped.
    assert result.diversity == pytest.approx(0.5)
    markdown = ensembling.ensemble_metrics_markdown(ensembling.table2({"hela": data}, ["dgrad:3"]))
    assert "dgrad[1]@fold1, dgrad[2]@fold0" in markdown
    assert "| DGrad(3) | dgrad[1]@fold1, dgrad[2]@fold0 |" in ensembling.runs_markdown(
        {"hela": data}
    )


def test_table1_reports_diverged_members_apart(diverged_run):
    data = ensembling.load_runs([diverged_run])["hela"]
    members = ensembling.member_results(data)
    assert [m.diverged_folds for m in members] == [(), (1,), (0,)]
    assert members[1].metrics is None and members[2].metrics is None
    (row,) = ensembling.table1(members)
    assert row.diverged_members == (1, 2)
    assert row.accuracy_mean == 1.0  # member 0 alone: right on all six samples
    assert math.isnan(row.accuracy_std)
    assert "2/3 diverged: members 1, 2" in ensembling.table1_markdown([row])


def test_all_members_diverged_in_a_fold_is_an_error(tmp_path):
    scores = np.full((2, 4, 3), 1 / 3)
    diverged = {"cos2": np.array([[True, False], [True, False]])}
    run = write_run(tmp_path / "r", "bg", {"cos2": scores}, np.zeros(4, int), diverged=diverged)
    data = ensembling.load_runs([run])["bg"]
    with pytest.raises(ensembling.EnsembleSpecError, match="every member diverged in fold 0"):
        ensembling.evaluate_ensemble(data, ensembling.parse_ensemble_spec("Cos#2(2)"))


# --------------------------------------------------------------------------------------------
# Plots and CLI.


def test_cyclic_factors_follow_the_paper():
    steps, c, a = optimizer_figures.cyclic_factors(n_steps=60, period=30)
    t = np.arange(1, 61)
    r = np.abs(np.cos(np.pi * t / 30)) * np.exp(-0.01 * (np.mod(t, 30) + 1))
    np.testing.assert_array_equal(steps, t)
    np.testing.assert_allclose(c, 2 - r, atol=1e-6)
    np.testing.assert_allclose(a, np.where(np.abs(r) < 1e-6, 9e-4, r), atol=1e-6)
    assert a[14] == pytest.approx(9e-4) and a[44] == pytest.approx(9e-4)  # t = 15, 45


def test_optimizer_figures_command_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    written = optimizer_figures.main(["factors.png", "--steps", "12", "--period", "6"])
    assert written == Path("factors.png") and written.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit) as exit_info:  # --help prints and writes nothing
        optimizer_figures.main(["--help"])
    assert exit_info.value.code == 0 and sorted(p.name for p in tmp_path.iterdir()) == [
        "factors.png"
    ]
    for argv, message in ((["f.png", "--period", "0"], "--period must be at least 1, got 0"),
                          (["f.png", "--steps", "-1"], "--steps must be at least 1, got -1"),
                          (["no/f.png"], "cannot write no/f.png: no is not a directory")):
        with pytest.raises(SystemExit) as exit_info:
            optimizer_figures.main(argv)
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "f.png").exists()


def test_cli_end_to_end(hela_run, tmp_path, capsys):
    out = tmp_path / "out"
    assert ensemble.main([str(hela_run), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| SGD(7) | 75.00 |" in printed
    assert "| SGD | 41.07 ± " in printed
    assert "| Adam(7) |" not in printed  # not servable: named under the table instead
    assert "| hela | DGrad | 7 | 53.57 | " in printed  # stand-alone mean: (9 + 6 * 6) / 12 / 7

    with (out / "table1.csv").open() as file:
        table1 = {row["optimizer"]: row for row in __import__("csv").DictReader(file)}
    assert float(table1["dgrad"]["accuracy_mean"]) == pytest.approx((9 + 6 * 6) / 12 / 7)
    report = json.loads((out / "report.json").read_text())
    by_label = {row["ensemble"]: row for row in report["table2"]}
    assert by_label["DGrad(7) + Cos#1(7)"]["accuracy"] == 1.0
    assert by_label["DGrad(14)"]["accuracy"] is None
    assert "trained 7" in by_label["DGrad(14)"]["unavailable"]
    assert len(report["members"]) == 28
    assert report["runs"] == [
        {
            "dataset": "hela",
            "run_dirs": [str(hela_run)],
            "folds": [0, 1],
            "missing_folds": [],
            "test_samples": 12,
            "classes": 3,
            "members": {"sgd": 14, "dgrad": 7, "cos1": 7},
            "diverged": [],
        }
    ]
    for name in ("accuracy_vs_size.png", "reliability.png", "cyclic_factors.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert (out / "tables.md").read_text().strip() == printed.strip()


HELA_UNSERVED = (
    "Adam(7), diffGrad(7), Cos#2(7), DGrad(7) + Cos#1(7) + Cos#2(7), "
    "DGrad(7) + Cos#1(7) + diffGrad(7), DGrad(14), DGrad(14) + Cos#1(7), "
    "SGD(14) + DGrad(7) + Cos#1(7) + diffGrad(7)"
)


def test_default_table2_shows_the_rows_the_run_serves(hela_run, tmp_path, capsys):
    # hela_run holds SGD(14), DGrad(7), Cos#1(7): 7 of the paper's 15 rows can be served.
    out = tmp_path / "out"
    assert ensemble.main([str(hela_run), "--out", str(out), "--no-plots"]) == 0
    printed = capsys.readouterr().out
    section = printed[printed.index("## Table 2") : printed.index("## Ensemble metrics")]
    rows = [line.split(" | ")[0][2:] for line in section.splitlines() if line.startswith("| ")]
    assert rows == [
        "Ensemble",
        "DGrad(7)",
        "Cos#1(7)",
        "DGrad(7) + Cos#1(7)",
        "SGD(14)",
        "SGD(7)",
        "SGD(7) + DGrad(7)",
        "SGD(14) + DGrad(7) + Cos#1(7)",
    ]
    assert "n/a" not in section
    unserved = [line for line in section.splitlines() if line.startswith("Not served")]
    assert unserved == [f"Not served by these runs (each reason in table2.csv): {HELA_UNSERVED}."]
    with (out / "table2.csv").open() as file:
        table2 = {row["ensemble"]: row for row in __import__("csv").DictReader(file)}
    assert list(table2) == [
        ensembling.parse_ensemble_spec(s).label for s in ensembling.PAPER_TABLE2_ENSEMBLES
    ]
    for label in HELA_UNSERVED.split(", "):
        assert table2[label]["accuracy"] == "" and table2[label]["unavailable"], label
    assert "has no Adam (adam) scores" in table2["Adam(7)"]["unavailable"]
    assert "asks for 14 DGrad members" in table2["DGrad(14)"]["unavailable"]


def test_table2_cell_that_one_data_set_lacks_keeps_its_reason(hela_run, tmp_path):
    bg_run = write_run(tmp_path / "bg", "bg", {"sgd": hela_groups()["sgd"][:7]}, LABELS)
    entries = ensembling.table2(ensembling.load_runs([hela_run, bg_run]))
    markdown = ensembling.table2_markdown(entries)
    assert "| SGD(7) | 75.00 | 75.00 |" in markdown
    assert "| SGD(14) | 50.00 | n/a |" in markdown
    assert "- n/a (bg): SGD(14): asks for 14 SGD members" in markdown
    assert markdown.count("Not served by these runs") == 1
    assert "| Adam(7) |" not in markdown


@pytest.fixture
def first_member_diverged_run(tmp_path):
    """SGD(2) healthy; DGrad(3) with member 0 diverged in fold 1; Cos#2(1) diverged in fold 0.

    Six samples, labels 0 1 2 0 1 2, folds of three. DGrad: member 0 right everywhere (NaN in
    fold 1), member 1 right on fold 0 only, member 2 right on sample 3 only. Sum rule (right
    where W < 3R): k=1 cannot be fused (fold 1 has no member); k=2: fold 0 right, fold 1
    wrong = 3/6; k=3: fold 0 (R=2, W=1) right, fold 1 only sample 3 (R=1, W=1) = 4/6.
    """
    labels = LABELS[:6]
    dgrad_correct = np.array([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 0, 0]], bool)
    dgrad = scores_from_correctness(dgrad_correct, labels)
    dgrad[0, 3:] = np.nan
    cos2 = scores_from_correctness(np.ones((1, 6), dtype=bool), labels)
    cos2[0, :3] = np.nan
    groups = {
        "sgd": scores_from_correctness(np.ones((2, 6), dtype=bool), labels),
        "dgrad": dgrad,
        "cos2": cos2,
    }
    diverged = {
        "dgrad": np.array([[False, True], [False, False], [False, False]]),
        "cos2": np.array([[True, False]]),
    }
    return write_run(tmp_path / "div", "hela", groups, labels, diverged=diverged)


def test_diverged_first_member_skips_unfusable_sizes(first_member_diverged_run):
    data = ensembling.load_run(first_member_diverged_run)
    accuracies = ensembling.accuracy_by_ensemble_size(data, "dgrad")
    np.testing.assert_allclose(accuracies, [np.nan, 3 / 6, 4 / 6])
    assert np.isnan(ensembling.accuracy_by_ensemble_size(data, "cos2")).all()
    np.testing.assert_array_equal(ensembling.accuracy_by_ensemble_size(data, "sgd"), [1.0, 1.0])
    assert ensembling.unfusable_fold(data, ensembling.parse_ensemble_spec("dgrad:1")) == 1
    assert ensembling.unfusable_fold(data, ensembling.parse_ensemble_spec("dgrad:2")) is None
    assert ensembling.unfusable_fold(data, ensembling.parse_ensemble_spec("cos2:1+dgrad:1")) is None
    assert ensembling.size_curve_label("dgrad", accuracies) == (
        "DGrad (k=1 skipped: all diverged in a fold)"
    )
    assert ensembling.size_curve_label("sgd", np.ones(2)) == "SGD"
    assert ensembling.size_curve_label("x", np.array([np.nan, np.nan, 1.0])) == (
        "x (k=1..2 skipped: all diverged in a fold)"
    )


def test_cli_plots_a_run_whose_first_member_diverged(
    first_member_diverged_run, tmp_path, capsys, monkeypatch
):
    from matplotlib.figure import Figure

    saved = {}
    original_savefig = Figure.savefig

    def recording_savefig(figure, path, *args, **kwargs):
        saved[Path(path).name] = figure
        return original_savefig(figure, path, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", recording_savefig)
    out = tmp_path / "out"
    assert ensemble.main([str(first_member_diverged_run), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert re.search(r"\| DGrad\(3\) \| 66\.67 \[[0-9.]+, [0-9.]+\] †1 \|", printed)
    for name in ("accuracy_vs_size.png", "reliability.png", "cyclic_factors.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name

    def legend(name):
        (axis,) = saved[name].axes
        return [text.get_text() for text in axis.get_legend().get_texts()]

    assert legend("accuracy_vs_size.png") == [
        "SGD",
        "DGrad (k=1 skipped: all diverged in a fold)",
        "Cos#2 (k=1 skipped: all diverged in a fold)",
    ]
    reliability = legend("reliability.png")
    assert reliability[0].startswith("SGD(2) ECE ") and reliability[1].startswith("DGrad(3) ECE ")
    assert reliability[2] == "Cos#2(1): all diverged in fold 0"


def test_cli_errors_and_help(hela_run, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        ensemble.main([str(hela_run), "--ensembles", "SGD(15)", "--no-plots"])
    assert exit_info.value.code == 1
    assert "asks for 15 SGD members" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        ensemble.main([str(hela_run), str(hela_run)])
    assert exit_info.value.code == 2
    assert "--out is required" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        ensemble.main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for flag in ("RUN_DIR", "--ensembles", "--fusion", "--out", "--no-plots"):
        assert flag in help_text


def test_cli_default_out_and_vote(hela_run, capsys):
    assert (
        ensemble.main(
            [str(hela_run), "--ensembles", "sgd:7+dgrad:7", "--fusion", "vote", "--no-plots"]
        )
        == 0
    )
    assert "| SGD(7) + DGrad(7) | 75.00 |" in capsys.readouterr().out
    assert (hela_run / "ensemble" / "table2.csv").exists()
    assert not (hela_run / "ensemble" / "reliability.png").exists()


def test_cli_as_a_script_from_another_directory(hela_run, tmp_path):
    script = Path(ensemble.__file__).resolve()
    completed = subprocess.run(
        [sys.executable, str(script), str(hela_run), "--ensembles", "DGrad(7) + Cos#1(7)"]
        + ["--out", str(tmp_path / "out"), "--no-plots"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert "| DGrad(7) + Cos#1(7) | 100.00 |" in completed.stdout
    assert (tmp_path / "out" / "report.json").exists()


def test_default_table2_adds_the_trained_groups(tmp_path):
    labels = np.tile([0, 1, 2], 4)
    rng = np.random.default_rng(0)
    groups = {name: rng.dirichlet(np.ones(3), size=(3, len(labels))) for name in ("adam", "dgrad")}
    run = write_run(tmp_path / "run", "digits", groups, labels)
    entries = {entry.spec.label: entry for entry in ensembling.table2(ensembling.load_runs([run]))}
    expected_members = {
        "Adam(3)": groups["adam"],
        "DGrad(3)": groups["dgrad"],
        "Adam(3) + DGrad(3)": np.concatenate([groups["adam"], groups["dgrad"]]),
    }
    for label, members in expected_members.items():
        fused = (members.sum(0).argmax(-1) == labels).mean()
        assert entries[label].result.metrics.accuracy == pytest.approx(fused), label
    assert entries["Adam(7)"].result is None  # the paper's rows come first, n/a here


@pytest.mark.parametrize(
    "name", ["ensembling", "ensembling.fusion", "ensembling.specs", "ensembling.tables"]
)
def test_docstring_examples(name):
    import doctest
    import importlib

    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0, name


def test_docs_page_describes_every_flag():
    page = (Path(__file__).resolve().parent.parent / "docs" / "ensembles.md").read_text()
    table = page[page.index("## Command line") : page.index("## Decisions")]
    arguments = help_arguments(ensemble.build_parser())
    assert "--out" in arguments and "--help" in arguments  # the help text was read
    for flag in arguments:
        assert f"`{flag}" in table, flag
