"""Tests of ensemble.py: fusion, metrics, score-file checks, the paper's tables, CLI, plots.

Score files are written here by `write_score_file`, which follows the trainer's pinned format;
the synthetic runs have accuracies built in by construction (see `hela_run`).
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics as sk_metrics

import ensemble

CLASS_NAMES = ("a", "b", "c")


def write_score_file(
    path,
    scores,
    labels,
    test_indices,
    optimizer,
    fold,
    dataset,
    class_names=CLASS_NAMES,
    diverged=None,
    drop=(),
):
    """Writes one score file in the trainer's format; `drop` leaves keys out."""
    scores = np.asarray(scores, dtype=np.float32)
    arrays = {
        "scores": scores,
        "labels": np.asarray(labels),
        "test_indices": np.asarray(test_indices),
        "class_names": np.array(class_names),
        "member_seeds": np.arange(len(scores), dtype=np.int64) + 1000 * fold,
        "diverged": (
            np.zeros(len(scores), dtype=bool) if diverged is None else np.asarray(diverged)
        ),
        "optimizer": np.array(optimizer),
        "fold": np.array(fold, dtype=np.int64),
        "dataset": np.array(dataset),
    }
    for key in drop:
        del arrays[key]
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def write_run(run_dir, dataset, group_scores, labels, n_folds=2, diverged=None, folds=None):
    """Writes a run directory; fold f holds the f-th contiguous block of the samples.

    Args:
      group_scores: optimizer -> [members, n_samples, n_classes] scores.
      diverged: optimizer -> bool [members, n_folds].
      folds: the folds trained (config.json's "folds"); None: all n_folds.
    """
    diverged = diverged or {}
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {
        "dataset": dataset,
        "seed": 0,
        "optimizers": {name: len(s) for name, s in group_scores.items()},
        "folds": folds,
    }
    (run_dir / "config.json").write_text(json.dumps(config))
    for fold, indices in enumerate(np.array_split(np.arange(len(labels)), n_folds)):
        if folds is not None and fold not in folds:
            continue
        for name, scores in group_scores.items():
            write_score_file(
                run_dir / "scores" / f"fold{fold}" / f"{name}.npz",
                np.asarray(scores)[:, indices],
                np.asarray(labels)[indices],
                indices,
                name,
                fold,
                dataset,
                diverged=None if name not in diverged else diverged[name][:, fold],
            )
    return run_dir


def scores_from_correctness(correct, labels, n_classes=3):
    """Member scores: right -> p(y)=.85, p(y+1)=.1; wrong -> p(y)=.35, p(y+1)=.6; p(y+2)=.05.

    Summed over an ensemble with R right and W wrong members, p(y) - p(y+1) = .75R - .25W:
    the sum rule is right exactly where W < 3R (a majority vote needs W < R).
    """
    correct = np.asarray(correct, dtype=bool)
    labels = np.asarray(labels)
    scores = np.zeros((*correct.shape, n_classes))
    samples = np.arange(len(labels))
    scores[:, samples, labels] = np.where(correct, 0.85, 0.35)
    scores[:, samples, (labels + 1) % n_classes] = np.where(correct, 0.1, 0.6)
    scores[:, samples, (labels + 2) % n_classes] = 0.05
    return scores


# Twelve samples in four blocks of three (b0..b3), two folds of six.
LABELS = np.arange(12) % 3
BLOCKS = [slice(0, 3), slice(3, 6), slice(6, 9), slice(9, 12)]


def correctness(n_members, right_members_per_block):
    """bool [members, 12]: members right_members_per_block[b] are right on block b."""
    correct = np.zeros((n_members, 12), dtype=bool)
    for block, members in zip(BLOCKS, right_members_per_block, strict=True):
        correct[list(members), block] = True
    return correct


SGD_CORRECT = correctness(14, [range(14), range(7), range(2), []])
DGRAD_CORRECT = correctness(7, [[], range(7), range(7), [0]])
COS1_CORRECT = correctness(7, [range(7), [], [], range(7)])


def hela_groups():
    return {
        "sgd": scores_from_correctness(SGD_CORRECT, LABELS),
        "dgrad": scores_from_correctness(DGRAD_CORRECT, LABELS),
        "cos1": scores_from_correctness(COS1_CORRECT, LABELS),
    }


@pytest.fixture
def hela_run(tmp_path):
    """A run of known accuracies.

    Stand-alone (pooled over both folds): SGD members 0-1 9/12, 2-6 6/12, 7-13 3/12;
    DGrad member 0 9/12, 1-6 6/12; Cos#1 all 6/12.
    Sum rule, by W < 3R per block: SGD(7) b0 b1 b2 = 9/12; SGD(14) b0 b1 = 6/12 (b2: R=2,
    W=12); DGrad(7) b1 b2 = 6/12; Cos#1(7) 6/12; SGD(7)+DGrad(7) b0 (7, 7) b1 b2 = 9/12;
    DGrad(7)+Cos#1(7) all (b3: R=8, W=6) = 12/12; SGD(14)+DGrad(7)+Cos#1(7) all = 12/12
    (b2: R=9, W=19; b3: R=8, W=20).
    """
    return write_run(tmp_path / "hela", "hela", hela_groups(), LABELS)


# --------------------------------------------------------------------------------------------
# Specifications.


def test_parse_spec_both_notations():
    expected = (("sgd", 14), ("dgrad", 7), ("cos1", 7))
    assert ensemble.parse_ensemble_spec("SGD(14) + DGrad(7) + Cos#1(7)").terms == expected
    assert ensemble.parse_ensemble_spec("sgd:14+dgrad:7+cos1:7").terms == expected
    assert ensemble.parse_ensemble_spec("sGd( 14 )+DGRAD:7 + COS#1(7)").terms == expected
    spec = ensemble.parse_ensemble_spec("diffgrad:7+cos2:3")
    assert spec.label == "diffGrad(7) + Cos#2(3)"
    assert spec.size == 10


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("SGD(7) + RMSProp(7)", "unknown optimizer 'rmsprop'"),
        ("sgd7", "cannot parse 'sgd7'"),
        ("sgd:0", "asks for 0 members"),
        ("sgd:7+SGD(7)", "names SGD twice"),
        ("", "cannot parse"),
    ],
)
def test_parse_spec_rejects_bad_input(text, message):
    with pytest.raises(ensemble.EnsembleSpecError, match=message.replace("(", r"\(")):
        ensemble.parse_ensemble_spec(text)


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
    summed = ensemble.fuse(HAND_SCORES, "sum")
    np.testing.assert_allclose(summed.probabilities, [[1.7 / 3, 1.3 / 3], [2.1 / 3, 0.9 / 3]])
    np.testing.assert_array_equal(summed.predictions, [0, 0])

    voted = ensemble.fuse(HAND_SCORES, "vote")
    np.testing.assert_allclose(voted.probabilities, [[1 / 3, 2 / 3], [1.0, 0.0]])
    np.testing.assert_array_equal(voted.predictions, [1, 0])

    # Geometric means: sample 0 (.9*.4*.4)^(1/3) : (.1*.6*.6)^(1/3) = .144^(1/3) : .036^(1/3).
    geometric = ensemble.fuse(HAND_SCORES, "mean_log")
    p0 = 1 / (1 + 0.25 ** (1 / 3))
    p1 = 1 / (1 + (0.2 * 0.3 * 0.4 / (0.8 * 0.7 * 0.6)) ** (1 / 3))
    np.testing.assert_allclose(geometric.probabilities, [[p0, 1 - p0], [p1, 1 - p1]])
    np.testing.assert_array_equal(geometric.predictions, [0, 0])


def test_fused_probabilities_are_summed_not_accuracies_averaged():
    # Member accuracies are 1, 1/2, 1/2 (mean 2/3); the fused ensemble is right on both.
    member_accuracies = (HAND_SCORES.argmax(-1) == HAND_LABELS).mean(axis=1)
    np.testing.assert_allclose(member_accuracies, [1.0, 0.5, 0.5])
    metrics = ensemble.classification_metrics(ensemble.fuse(HAND_SCORES).probabilities, HAND_LABELS)
    assert metrics.accuracy == 1.0


def test_vote_ties_go_to_the_larger_summed_probability():
    # Votes: class 2, class 1 -> a tie between 1 and 2; sums: c1 = .1+.5 = .6, c2 = .45+.3.
    scores = np.array([[[0.45, 0.1, 0.45 + 1e-3]], [[0.2, 0.5, 0.3]]])
    scores /= scores.sum(-1, keepdims=True)
    fused = ensemble.fuse(scores, "vote")
    np.testing.assert_allclose(fused.probabilities, [[0.0, 0.5, 0.5]])
    np.testing.assert_array_equal(fused.predictions, [2])


def test_fuse_leaves_out_invalid_members():
    scores = HAND_SCORES.copy()
    scores[0, 0] = np.nan  # left out below, must not poison the others
    valid = np.array([[False, True], [True, True], [True, True]])
    fused = ensemble.fuse(scores, "sum", valid)
    np.testing.assert_allclose(fused.probabilities, [[0.4, 0.6], [2.1 / 3, 0.9 / 3]])
    np.testing.assert_array_equal(fused.predictions, [1, 0])
    with pytest.raises(ValueError, match=r"samples \[1\] have no member"):
        ensemble.fuse(scores, "sum", np.array([[True, False]] * 3))
    with pytest.raises(ValueError, match="unknown fusion rule 'max'"):
        ensemble.fuse(scores, "max")


# --------------------------------------------------------------------------------------------
# Metrics.


@pytest.mark.parametrize("n_classes", [2, 5])
def test_metrics_equal_sklearn_and_numpy_on_random_scores(n_classes):
    rng = np.random.default_rng(n_classes)
    probabilities = rng.dirichlet(np.ones(n_classes), size=300)
    labels = rng.integers(0, n_classes, size=300)
    metrics = ensemble.classification_metrics(probabilities, labels)
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
    assert ensemble.expected_calibration_error(probabilities, labels) == pytest.approx(0.45)
    # Brier: (.05^2 + .05^2) + (.95^2 + .95^2) + (.5^2 + .5^2) + (.4^2 + .4^2), over 4.
    assert ensemble.brier_score(probabilities, labels) == pytest.approx(2.63 / 4)
    curve = ensemble.reliability_curve(probabilities, labels)
    np.testing.assert_array_equal(np.flatnonzero(curve.count), [7, 8, 14])
    np.testing.assert_allclose(curve.accuracy[[7, 8, 14]], [1.0, 1.0, 0.5])


def test_reliability_bins_are_right_closed():
    # A confidence of exactly 3/15 belongs to bin 2, (2/15, 3/15]; 0 goes to bin 0.
    probabilities = np.array([[0.2, 0.2, 0.2, 0.2, 0.2], [1.0, 0.0, 0.0, 0.0, 0.0]])
    curve = ensemble.reliability_curve(probabilities, np.array([0, 0]))
    assert curve.count[2] == 1 and curve.count[14] == 1 and curve.count.sum() == 2


def test_pairwise_disagreement_by_hand():
    predictions = np.array([[0, 0, 1, 1], [0, 1, 1, 1], [1, 1, 1, 1]])
    # Pairs (0,1) 1/4, (0,2) 2/4, (1,2) 1/4.
    assert ensemble.pairwise_disagreement(predictions) == pytest.approx(1 / 3)
    valid = np.ones_like(predictions, dtype=bool)
    valid[2, 0] = False
    # Over samples both hold: (0,1) 1/4, (0,2) 1/3 (samples 1..3), (1,2) 0.
    assert ensemble.pairwise_disagreement(predictions, valid) == pytest.approx((1 / 4 + 1 / 3) / 3)
    assert math.isnan(ensemble.pairwise_disagreement(predictions[:1]))


# --------------------------------------------------------------------------------------------
# Tables from synthetic runs of known accuracy.


def test_table1_matches_the_built_in_accuracies(hela_run):
    datasets = ensemble.load_runs([hela_run])
    rows = {
        row.optimizer: row for row in ensemble.table1(ensemble.member_results(datasets["hela"]))
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
    datasets = ensemble.load_runs([hela_run])
    entries = {entry.spec.label: entry for entry in ensemble.table2(datasets)}
    assert list(entries) == [
        ensemble.parse_ensemble_spec(s).label for s in ensemble.PAPER_TABLE2_ENSEMBLES
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
    datasets = ensemble.load_runs([hela_run])
    with pytest.raises(ensemble.EnsembleSpecError, match=r"asks for 14 DGrad members.*trained 7"):
        ensemble.table2(datasets, ["DGrad(14)"])
    with pytest.raises(ensemble.EnsembleSpecError, match=r"no Cos#2 \(cos2\) scores"):
        ensemble.table2(datasets, ["sgd:7+cos2:7"])
    (entry,) = ensemble.table2(datasets, ["sgd:7 + dgrad:7"], rule="vote")
    # Vote (right where W < R): b0 R=7 W=7 tie -> summed probability decides (right);
    # b1 and b2 right; b3 R=1 W=13 wrong.
    assert entry.result.metrics.accuracy == pytest.approx(9 / 12)
    assert entry.result.rule == "vote"


def test_accuracy_by_ensemble_size(hela_run):
    data = ensemble.load_runs([hela_run])["hela"]
    # First k SGD members: b2 stays right while W = k - 2 < 3 * 2, i.e. k <= 7.
    np.testing.assert_allclose(
        ensemble.accuracy_by_ensemble_size(data, "sgd"), [9 / 12] * 7 + [6 / 12] * 7
    )


def test_runs_of_one_data_set_are_merged_and_data_sets_become_columns(tmp_path):
    groups = hela_groups()
    sgd_run = write_run(tmp_path / "a", "hela", {"sgd": groups["sgd"]}, LABELS)
    other_run = write_run(
        tmp_path / "b", "hela", {"dgrad": groups["dgrad"], "cos1": groups["cos1"]}, LABELS
    )
    all_right = scores_from_correctness(np.ones((7, 6), dtype=bool), LABELS[:6])
    bg_run = write_run(tmp_path / "bg", "bg", {"sgd": all_right}, LABELS[:6], n_folds=3)
    datasets = ensemble.load_runs([sgd_run, bg_run, other_run])
    assert list(datasets) == ["hela", "bg"]
    assert list(datasets["hela"].groups) == ["sgd", "dgrad", "cos1"]
    assert datasets["hela"].run_dirs == (sgd_run, other_run)
    (hela, bg) = ensemble.table2(datasets, ["SGD(7)"])
    assert (hela.dataset, bg.dataset) == ("hela", "bg")
    assert hela.result.metrics.accuracy == pytest.approx(9 / 12)
    assert bg.result.metrics.accuracy == 1.0
    (merged,) = ensemble.table2({"hela": datasets["hela"]}, ["SGD(14) + DGrad(7) + Cos#1(7)"])
    assert merged.result.metrics.accuracy == 1.0

    duplicate = write_run(tmp_path / "c", "hela", {"dgrad": groups["dgrad"]}, LABELS)
    with pytest.raises(ensemble.ScoreFileError, match=r"'dgrad'.*two runs.*/b and .*/c"):
        ensemble.load_runs([sgd_run, other_run, duplicate])


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
    data = ensemble.load_runs([diverged_run])["hela"]
    result = ensemble.evaluate_ensemble(data, ensemble.parse_ensemble_spec("DGrad(3)"))
    assert result.left_out == (
        ensemble.LeftOutMember("dgrad", 1, 1),
        ensemble.LeftOutMember("dgrad", 2, 0),
    )
    # Fold 0: members 0 and 1; fold 1: members 0 and 2.
    np.testing.assert_allclose(
        result.fused.probabilities, [[0.55, 0.3, 0.15]] * 3 + [[0.45, 0.4, 0.15]] * 3
    )
    assert result.metrics.accuracy == 1.0
    # Pairs (0,1) on fold 0 and (0,2) on fold 1 disagree on nothing and on all: (0 + 1) / 2;
    # (1,2) share no fold and are skipped.
    assert result.diversity == pytest.approx(0.5)
    markdown = ensemble.ensemble_metrics_markdown(ensemble.table2({"hela": data}, ["dgrad:3"]))
    assert "dgrad[1]@fold1, dgrad[2]@fold0" in markdown
    assert "| DGrad(3) | dgrad[1]@fold1, dgrad[2]@fold0 |" in ensemble.runs_markdown({"hela": data})


def test_table1_reports_diverged_members_apart(diverged_run):
    data = ensemble.load_runs([diverged_run])["hela"]
    members = ensemble.member_results(data)
    assert [m.diverged_folds for m in members] == [(), (1,), (0,)]
    assert members[1].metrics is None and members[2].metrics is None
    (row,) = ensemble.table1(members)
    assert row.diverged_members == (1, 2)
    assert row.accuracy_mean == 1.0  # member 0 alone: right on all six samples
    assert math.isnan(row.accuracy_std)
    assert "2/3 diverged: members 1, 2" in ensemble.table1_markdown([row])


def test_all_members_diverged_in_a_fold_is_an_error(tmp_path):
    scores = np.full((2, 4, 3), 1 / 3)
    diverged = {"cos2": np.array([[True, False], [True, False]])}
    run = write_run(tmp_path / "r", "bg", {"cos2": scores}, np.zeros(4, int), diverged=diverged)
    data = ensemble.load_runs([run])["bg"]
    with pytest.raises(ensemble.EnsembleSpecError, match="every member diverged in fold 0"):
        ensemble.evaluate_ensemble(data, ensemble.parse_ensemble_spec("Cos#2(2)"))


# --------------------------------------------------------------------------------------------
# Bad input.


def _fold_file(run, fold=0, optimizer="sgd"):
    return run / "scores" / f"fold{fold}" / f"{optimizer}.npz"


def test_labels_disagreeing_between_groups_of_a_fold(hela_run):
    path = _fold_file(hela_run, 1, "dgrad")
    with np.load(path) as archive:
        arrays = dict(archive)
    arrays["labels"] = (arrays["labels"] + 1) % 3
    np.savez(path, **arrays)
    with pytest.raises(
        ensemble.ScoreFileError, match=r"fold1/dgrad.npz and .*fold1/sgd.npz disagree on 'labels'"
    ):
        ensemble.load_run(hela_run)


def test_class_names_disagreeing_across_folds(tmp_path):
    run = write_run(tmp_path / "r", "hela", {"sgd": hela_groups()["sgd"]}, LABELS)
    scores = hela_groups()["sgd"][:, 6:]
    write_score_file(
        _fold_file(run, 1),
        scores,
        LABELS[6:],
        np.arange(6, 12),
        "sgd",
        1,
        "hela",
        class_names=("a", "b", "x"),
    )
    with pytest.raises(
        ensemble.ScoreFileError,
        match=r"fold1/sgd.npz and .*fold0/sgd.npz disagree on 'class_names'",
    ):
        ensemble.load_run(run)


def test_a_sample_in_two_folds(tmp_path):
    run = write_run(tmp_path / "r", "hela", {"sgd": hela_groups()["sgd"]}, LABELS)
    scores = hela_groups()["sgd"][:, 6:]
    write_score_file(_fold_file(run, 1), scores, LABELS[6:], np.arange(5, 11), "sgd", 1, "hela")
    with pytest.raises(ensemble.ScoreFileError, match="both hold test index 5"):
        ensemble.load_run(run)


def test_malformed_and_truncated_score_files(hela_run):
    path = _fold_file(hela_run)
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])
    with pytest.raises(ensemble.ScoreFileError, match=r"fold0/sgd.npz: .*(malformed or truncated)"):
        ensemble.load_run(hela_run)
    path.write_bytes(b"these are not scores")
    with pytest.raises(ensemble.ScoreFileError, match=r"fold0/sgd.npz: not a readable .npz"):
        ensemble.read_score_file(path)
    np.save(path.with_suffix(".npy"), np.zeros(3))
    path.with_suffix(".npy").rename(path)
    with pytest.raises(ensemble.ScoreFileError, match="not an .npz archive"):
        ensemble.read_score_file(path)


def test_missing_keys(tmp_path):
    path = write_score_file(
        tmp_path / "sgd.npz",
        np.full((2, 3, 3), 1 / 3),
        [0, 1, 2],
        [0, 1, 2],
        "sgd",
        0,
        "hela",
        drop=("diverged", "class_names"),
    )
    with pytest.raises(
        ensemble.ScoreFileError, match=r"sgd.npz: missing keys \['class_names', 'diverged'\]"
    ):
        ensemble.read_score_file(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"scores": np.full((2, 3, 3), 2.0)}, "member 0's scores are not softmax probabilities"),
        (
            {"scores": np.full((2, 3, 3), np.nan)},
            "member 0 has non-finite scores but is not marked diverged",
        ),
        ({"labels": [0, 1, 3]}, r"labels \[3\] outside the 3 classes"),
        ({"labels": [0.0, 1.0, 2.0]}, "'labels' must be integer"),
        ({"test_indices": [0, 1, 1]}, "'test_indices' must be distinct"),
        ({"diverged": [False]}, r"'diverged' must be bool \[2\]"),
        ({"class_names": ("a", "b")}, r"'class_names' must be unicode \[3\]"),
    ],
)
def test_bad_score_file_contents(tmp_path, change, message):
    arguments = {
        "scores": np.full((2, 3, 3), 1 / 3),
        "labels": [0, 1, 2],
        "test_indices": [0, 1, 2],
    }
    arguments.update(change)
    path = write_score_file(
        tmp_path / "dgrad.npz", optimizer="dgrad", fold=0, dataset="hela", **arguments
    )
    with pytest.raises(ensemble.ScoreFileError, match=f"dgrad.npz: {message}"):
        ensemble.read_score_file(path)


def test_score_files_disagreeing_with_the_run(hela_run):
    config = hela_run / "config.json"
    scores = hela_groups()["dgrad"][:, 6:]
    write_score_file(
        _fold_file(hela_run, 1, "dgrad"), scores, LABELS[6:], np.arange(6, 12), "dgrad", 1, "bg"
    )
    with pytest.raises(
        ensemble.ScoreFileError,
        match=r"fold1/dgrad.npz and .*fold1/sgd.npz name different data sets: 'bg' vs 'hela'",
    ):
        ensemble.load_run(hela_run)
    write_score_file(
        _fold_file(hela_run, 1, "dgrad"), scores, LABELS[6:], np.arange(6, 12), "dgrad", 0, "hela"
    )
    with pytest.raises(
        ensemble.ScoreFileError,
        match=r"fold1/dgrad.npz: holds optimizer='dgrad' fold=0; its place says 'dgrad', fold 1",
    ):
        ensemble.load_run(hela_run)
    write_score_file(
        _fold_file(hela_run, 1, "dgrad"), scores, LABELS[6:], np.arange(6, 12), "dgrad", 1, "hela"
    )
    config.write_text(
        json.dumps({"dataset": "hela", "seed": 0, "optimizers": {"sgd": 14, "dgrad": 8, "cos1": 7}})
    )
    with pytest.raises(ensemble.ScoreFileError, match="dgrad.npz: 7 members; config.json says 8"):
        ensemble.load_run(hela_run)
    config.write_text(
        json.dumps(
            {
                "dataset": "hela",
                "seed": 0,
                "optimizers": {"sgd": 14, "dgrad": 7, "cos1": 7, "adam": 7},
            }
        )
    )
    with pytest.raises(
        ensemble.ScoreFileError, match="fold0/adam.npz: missing; config.json lists 'adam'"
    ):
        ensemble.load_run(hela_run)
    config.write_text(
        json.dumps({"dataset": "hela", "seed": 0, "optimizers": {"sgd": 14, "dgrad": 7}})
    )
    with pytest.raises(
        ensemble.ScoreFileError, match=r"score files \['cos1'\] for groups not in config.json"
    ):
        ensemble.load_run(hela_run)
    config.write_text("{")
    with pytest.raises(ensemble.ScoreFileError, match="config.json: not valid JSON"):
        ensemble.load_run(hela_run)


# --------------------------------------------------------------------------------------------
# Plots and CLI.


def test_cyclic_factors_follow_the_paper():
    steps, c, a = ensemble.cyclic_factors(n_steps=60, period=30)
    t = np.arange(1, 61)
    r = np.abs(np.cos(np.pi * t / 30)) * np.exp(-0.01 * (np.mod(t, 30) + 1))
    np.testing.assert_array_equal(steps, t)
    np.testing.assert_allclose(c, 2 - r, atol=1e-6)
    np.testing.assert_allclose(a, np.where(np.abs(r) < 1e-6, 9e-4, r), atol=1e-6)
    assert a[14] == pytest.approx(9e-4) and a[44] == pytest.approx(9e-4)  # t = 15, 45


def test_cli_end_to_end(hela_run, tmp_path, capsys):
    out = tmp_path / "out"
    assert ensemble.main([str(hela_run), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| SGD(7) | 75.00 |" in printed
    assert "| SGD | 41.07 ± " in printed
    assert "| Adam(7) | n/a |" in printed
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
            "test_samples": 12,
            "classes": 3,
            "members": {"sgd": 14, "dgrad": 7, "cos1": 7},
            "diverged": [],
        }
    ]
    for name in ("accuracy_vs_size.png", "reliability.png", "cyclic_factors.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    assert (out / "tables.md").read_text().strip() == printed.strip()


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


def test_a_run_of_some_folds(tmp_path):
    # Only fold 1 of a two-fold protocol was trained; member 0 diverged there.
    scores = hela_groups()["dgrad"]
    diverged = {"dgrad": np.zeros((7, 2), dtype=bool)}
    diverged["dgrad"][0, 1] = True
    run = write_run(tmp_path / "r", "hela", {"dgrad": scores}, LABELS, diverged=diverged, folds=[1])
    # An unfinished write of the trainer is not a score file.
    (run / "scores" / "fold1" / "dgrad.npz.partial.npz").write_bytes(b"cut short")
    data = ensemble.load_run(run)
    assert data.folds == (1,)
    np.testing.assert_array_equal(data.test_indices, np.arange(6, 12))
    result = ensemble.evaluate_ensemble(data, ensemble.parse_ensemble_spec("DGrad(7)"))
    assert result.left_out == (ensemble.LeftOutMember("dgrad", 0, 1),)
    # Members 1-6 on blocks b2 (right) and b3 (wrong): 3/6.
    assert result.metrics.accuracy == pytest.approx(0.5)
    assert ensemble.member_results(data)[0].diverged_folds == (1,)

    config = json.loads((run / "config.json").read_text())
    config["folds"] = [0, 1]
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(
        ensemble.ScoreFileError, match=r"holds folds \[1\]; config.json's 'folds' says \[0, 1\]"
    ):
        ensemble.load_run(run)

    config["folds"] = [1]
    (run / "config.json").write_text(json.dumps(config))
    other = write_run(tmp_path / "o", "hela", {"sgd": hela_groups()["sgd"]}, LABELS)
    with pytest.raises(
        ensemble.ScoreFileError, match=r"trained different folds: \[0, 1\] vs \[1\]"
    ):
        ensemble.load_runs([other, run])


def test_default_table2_adds_the_trained_groups(tmp_path):
    labels = np.tile([0, 1, 2], 4)
    rng = np.random.default_rng(0)
    groups = {name: rng.dirichlet(np.ones(3), size=(3, len(labels))) for name in ("adam", "dgrad")}
    run = write_run(tmp_path / "run", "digits", groups, labels)
    entries = {entry.spec.label: entry for entry in ensemble.table2(ensemble.load_runs([run]))}
    expected_members = {
        "Adam(3)": groups["adam"],
        "DGrad(3)": groups["dgrad"],
        "Adam(3) + DGrad(3)": np.concatenate([groups["adam"], groups["dgrad"]]),
    }
    for label, members in expected_members.items():
        fused = (members.sum(0).argmax(-1) == labels).mean()
        assert entries[label].result.metrics.accuracy == pytest.approx(fused), label
    assert entries["Adam(7)"].result is None  # the paper's rows come first, n/a here
