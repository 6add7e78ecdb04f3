"""ensembling.selection, .calibration and .bootstrap against hand-worked and independent values.

Greedy selection: hand-worked examples and a plain loop-over-candidates reimplementation.
Temperature scaling: scipy.optimize.minimize directly on T with sklearn's log-loss.
Bootstrap: scipy.stats.bootstrap(method="percentile") with the same seed, and loops.
"""

import numpy as np
import pytest
import scipy.stats
from scipy import optimize
from scipy.special import softmax
from sklearn.metrics import log_loss

from ensembling import (
    OBJECTIVES,
    Interval,
    apply_temperature,
    brier_score,
    classification_metrics,
    fit_temperature,
    greedy_select,
    mean_ci,
    member_mean_ci,
    paired_difference_ci,
    resample_indices,
)
from ensembling.bootstrap import resample_counts
from ensembling.selection import selection_weights

EPS = np.finfo(np.float64).eps

# ---------------------------------------------------------------------------------------------
# Greedy selection
# ---------------------------------------------------------------------------------------------

# Two rows, three classes, labels (0, 2). Per row, M0 puts 1 - a on the true class and a on one
# wrong class (a = 0.2), M1 puts 1 - b on it and b on the other wrong class (b = 0.25); row 1
# mirrors row 0, so both rows have the same Brier score. M2 is a copy of M0 and M3 is perfect
# but diverged (valid False).
#
# An ensemble with a share w of M0 and 1 - w of M1 has, per row, the errors
# (-(w a + (1-w) b), w a, (1-w) b), so Brier(w) = (w a + (1-w) b)^2 + (w a)^2 + ((1-w) b)^2:
#   w = 1:   0.04 + 0.04                        = 0.08      (M0 alone; M1 alone: 2 b^2 = 0.125)
#   w = 1/2: 0.225^2 + 0.1^2 + 0.125^2          = 0.07625
#   w = 2/3: (13/60)^2 + (2/15)^2 + (1/12)^2    = 258/3600 = 0.0716667
#   w = 1/3: (7/30)^2 + (1/15)^2 + (1/6)^2      = 0.0866667
#   w = 3/4: 0.2125^2 + 0.15^2 + 0.0625^2       = 0.0715625
#   w = 4/5: 0.21^2 + 0.16^2 + 0.05^2           = 0.0722
#   w = 3/5: 0.22^2 + 0.12^2 + 0.1^2            = 0.0728
# Round 1: M0 and M2 tie at 0.08 (M3 is not a candidate) -> M0, the lower index.
# Round 2: {M0,M0} 0.08 (no gain), {M0,M1} 0.07625, {M0,M2} 0.08 -> M1.
# Round 3: {2 M0, M1} 0.0716667 (M2 ties with M0), {M0, 2 M1} 0.0866667 -> M0.
# Round 4: {3 M0, M1} 0.0715625, {2 M0, 2 M1} 0.07625 -> M0.
# Round 5: {4 M0, M1} 0.0722, {3 M0, 2 M1} 0.0728: neither improves -> stop.
HAND_SCORES = np.array(
    [
        [[0.8, 0.2, 0.0], [0.0, 0.2, 0.8]],
        [[0.75, 0.0, 0.25], [0.25, 0.0, 0.75]],
        [[0.8, 0.2, 0.0], [0.0, 0.2, 0.8]],
        [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]],
    ]
)
HAND_LABELS = np.array([0, 2])
HAND_VALID = np.array([True, True, True, False])


def test_greedy_selection_hand_worked_brier():
    selection = greedy_select(HAND_SCORES, HAND_LABELS, objective="brier", valid=HAND_VALID)
    assert selection.order == (0, 1, 0, 0)
    np.testing.assert_array_equal(selection.counts, [3, 1, 0, 0])
    assert selection.counts.dtype == np.int64
    np.testing.assert_allclose(
        selection.objective_values, [0.08, 0.07625, 258 / 3600, 0.0715625], rtol=1e-12
    )
    assert selection.objective == "brier"
    np.testing.assert_array_equal(selection_weights(selection), [0.75, 0.25, 0.0, 0.0])
    # The stored value is ensembling.metrics' Brier score of the weighted ensemble.
    ensemble = np.tensordot(selection_weights(selection), HAND_SCORES, axes=1)
    assert brier_score(ensemble, HAND_LABELS) == pytest.approx(selection.objective_values[-1])
    # max_rounds caps the picks.
    capped = greedy_select(
        HAND_SCORES, HAND_LABELS, objective="brier", valid=HAND_VALID, max_rounds=2
    )
    assert capped.order == (0, 1)
    # Without the mask the perfect M3 wins round 1, and nothing improves on Brier 0.
    assert greedy_select(HAND_SCORES, HAND_LABELS, objective="brier").order == (3,)


def test_greedy_selection_hand_worked_accuracy():
    # Two classes, labels (0, 0, 1, 1); columns are p(class 1) on the four rows.
    #   M0 (0.4, 0.4, 0.6, 0.4) -> decisions (0, 0, 1, 0): error 1/4
    #   M1 (0.9, 0.3, 0.9, 0.9) -> (1, 0, 1, 1):           error 1/4
    #   M2 (0.2, 0.2, 0.2, 0.2) -> (0, 0, 0, 0):           error 1/2
    #   M3 (0.5, 0.5, 0.5, 0.7) -> (0, 0, 0, 1) (0.5/0.5 ties go to class 0): error 1/4
    # Round 1: M0, M1, M3 tie at 1/4 -> M0.
    # Round 2: +M0 1/4; +M1 (.65, .35, .75, .65) -> (1, 0, 1, 1) 1/4;
    #          +M2 (.3, .3, .4, .3) 1/2; +M3 (.45, .45, .55, .55) -> (0, 0, 1, 1) 0 -> M3.
    # Round 3: nothing is below 0 -> stop.
    p1 = np.array([[0.4, 0.4, 0.6, 0.4], [0.9, 0.3, 0.9, 0.9], [0.2] * 4, [0.5, 0.5, 0.5, 0.7]])
    scores = np.stack([1 - p1, p1], axis=-1)
    selection = greedy_select(scores, np.array([0, 0, 1, 1]), objective="accuracy")
    assert selection.order == (0, 3)
    np.testing.assert_array_equal(selection.counts, [1, 0, 0, 1])
    np.testing.assert_array_equal(selection.objective_values, [0.25, 0.0])


def reference_greedy(scores, labels, objective, max_rounds=None, valid=None):
    """Greedy selection with replacement, one candidate at a time."""
    probabilities = np.asarray(scores, dtype=np.float64)
    probabilities = probabilities / probabilities.sum(axis=-1, keepdims=True)
    n_members, n_rows, n_classes = probabilities.shape
    if valid is None:
        valid = [True] * n_members
    members = [m for m in range(n_members) if valid[m] and np.all(np.isfinite(probabilities[m]))]
    if max_rounds is None:
        max_rounds = 2 * len(members)

    def loss(ensemble):
        if objective == "nll":
            true = np.array([ensemble[i, labels[i]] for i in range(n_rows)])
            return np.mean(-np.log(np.clip(true, EPS, 1 - EPS)))
        if objective == "brier":
            return np.mean(np.sum((ensemble - np.eye(n_classes)[labels]) ** 2, axis=1))
        return np.mean(np.argmax(ensemble, axis=1) != labels)

    picked, values, current = [], [], np.inf
    for _ in range(max_rounds):
        best_member, best_value = None, np.inf
        for m in members:
            value = loss(np.mean(probabilities[picked + [m]], axis=0))
            if value < best_value:  # strict: a tie keeps the lower member
                best_member, best_value = m, value
        if not best_value < current:
            break
        picked.append(best_member)
        values.append(best_value)
        current = best_value
    return tuple(picked), np.array(values)


def random_pool(seed, n_members=9, n_rows=40, n_classes=3):
    """Float32 softmax scores of members of varying skill, with a tie and two invalid members."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n_rows)
    skill = rng.uniform(0.0, 2.5, n_members)
    logits = rng.normal(size=(n_members, n_rows, n_classes))
    logits += skill[:, None, None] * np.eye(n_classes)[labels]
    scores = softmax(logits, axis=-1).astype(np.float32)
    scores[6] = scores[2]  # an exact copy: ties must go to member 2
    scores[7] = np.eye(n_classes, dtype=np.float32)[labels]  # perfect, but diverged
    scores[8, 0, 0] = np.nan  # non-finite: invalid
    valid = np.ones(n_members, dtype=bool)
    valid[7] = False
    return scores, labels, valid


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("seed", range(5))
def test_greedy_selection_matches_loop_reference(objective, seed):
    scores, labels, valid = random_pool(seed)
    for max_rounds in (None, 3):
        selection = greedy_select(
            scores, labels, objective=objective, max_rounds=max_rounds, valid=valid
        )
        order, values = reference_greedy(scores, labels, objective, max_rounds, valid)
        assert selection.order == order
        np.testing.assert_allclose(selection.objective_values, values, rtol=1e-12, atol=0)
        np.testing.assert_array_equal(
            selection.counts, np.bincount(np.array(order), minlength=len(scores))
        )
        assert selection.counts[[6, 7, 8]].sum() == 0
    # Round 1 is the best single member by ensembling.metrics' own NLL / accuracy / Brier.
    metrics = [
        classification_metrics(scores[m], labels) if valid[m] and m != 8 else None
        for m in range(len(scores))
    ]
    single = {
        "nll": [m.nll if m else np.inf for m in metrics],
        "accuracy": [1 - m.accuracy if m else np.inf for m in metrics],
        "brier": [m.brier if m else np.inf for m in metrics],
    }[objective]
    selection = greedy_select(scores, labels, objective=objective, valid=valid)
    assert selection.order[0] == int(np.argmin(single))
    assert selection.objective_values[0] == pytest.approx(min(single), rel=1e-12, abs=1e-15)


def test_greedy_selection_rejects_bad_input():
    with pytest.raises(ValueError, match=r"unknown objective 'f1'.*'nll', 'accuracy', 'brier'"):
        greedy_select(HAND_SCORES, HAND_LABELS, objective="f1")
    with pytest.raises(ValueError, match=r"scores must be .*\[members, n, classes\]"):
        greedy_select(HAND_SCORES[0], HAND_LABELS)
    with pytest.raises(ValueError, match="labels must have shape"):
        greedy_select(HAND_SCORES, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\)"):
        greedy_select(HAND_SCORES, np.array([0, 3]))
    with pytest.raises(ValueError, match="valid must be a bool array of shape"):
        greedy_select(HAND_SCORES, HAND_LABELS, valid=np.ones(3, dtype=bool))
    with pytest.raises(ValueError, match="no valid member"):
        greedy_select(HAND_SCORES, HAND_LABELS, valid=np.zeros(4, dtype=bool))
    with pytest.raises(ValueError, match="no valid member"):
        greedy_select(np.full((2, 2, 3), np.nan), HAND_LABELS)
    with pytest.raises(ValueError, match="max_rounds must be >= 1"):
        greedy_select(HAND_SCORES, HAND_LABELS, max_rounds=0)


# ---------------------------------------------------------------------------------------------
# Temperature scaling
# ---------------------------------------------------------------------------------------------


def synthetic_predictions(sharpness, seed=0, n_rows=3000, n_classes=5):
    """Labels drawn from softmax(z), reported probabilities softmax(sharpness * z)."""
    rng = np.random.default_rng(seed)
    logits = 2.0 * rng.normal(size=(n_rows, n_classes))
    labels = np.argmax(logits + rng.gumbel(size=logits.shape), axis=1)  # Gumbel-max sampling
    return softmax(sharpness * logits, axis=1), labels


def reference_temperature(probabilities, labels):
    """scipy.optimize.minimize on T itself, with sklearn's log-loss as the objective."""
    classes = np.arange(probabilities.shape[1])

    def nll(t):
        return log_loss(labels, softmax(np.log(probabilities) / t[0], axis=1), labels=classes)

    result = optimize.minimize(
        nll, x0=[1.0], method="Nelder-Mead", options={"xatol": 1e-10, "fatol": 1e-14}
    )
    assert result.success
    return result.x[0]


@pytest.mark.parametrize("sharpness, confidence", [(3.0, "over"), (0.4, "under")])
def test_fit_temperature_matches_scipy_minimize(sharpness, confidence):
    probabilities, labels = synthetic_predictions(sharpness)
    temperature = fit_temperature(probabilities, labels)
    assert temperature == pytest.approx(reference_temperature(probabilities, labels), abs=1e-4)
    # Over-confident predictions are softened, under-confident ones sharpened, roughly by the
    # factor that made them so.
    assert (temperature > 1) if confidence == "over" else (temperature < 1)
    assert temperature == pytest.approx(sharpness, rel=0.15)
    # The fit lowers the NLL.
    classes = np.arange(probabilities.shape[1])
    calibrated = apply_temperature(probabilities, temperature)
    assert log_loss(labels, calibrated, labels=classes) < log_loss(
        labels, probabilities, labels=classes
    )


def test_temperature_one_and_argmax():
    rng = np.random.default_rng(1)
    scores = softmax(rng.normal(size=(4, 50, 7)) * 3, axis=-1).astype(np.float32)
    renormalised = scores / scores.astype(np.float64).sum(axis=-1, keepdims=True)
    unchanged = apply_temperature(scores, 1.0)
    assert unchanged.dtype == np.float64 and unchanged.shape == scores.shape
    np.testing.assert_allclose(unchanged, renormalised, rtol=0, atol=1e-12)
    labels = rng.integers(0, 7, 50)
    for temperature in (0.05, 0.3, 2.0, 20.0):
        scaled = apply_temperature(scores, temperature)
        np.testing.assert_allclose(scaled.sum(axis=-1), 1.0, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(scaled.argmax(axis=-1), scores.argmax(axis=-1))
        assert np.mean(scaled[0].argmax(-1) == labels) == np.mean(scores[0].argmax(-1) == labels)
    # A zero probability is clipped at eps rather than giving log 0 = -inf.
    assert np.all(np.isfinite(apply_temperature(np.array([1.0, 0.0]), 0.5)))


def test_temperature_rejects_bad_input():
    p = np.array([[0.7, 0.3], [0.4, 0.6]])
    for temperature in (0.0, -1.0, np.nan, np.inf):
        with pytest.raises(ValueError, match="temperature must be finite and positive"):
            apply_temperature(p, temperature)
    with pytest.raises(ValueError, match="probabilities must be finite"):
        apply_temperature(np.array([np.nan, 1.0]), 1.0)
    with pytest.raises(ValueError, match="non-negative"):
        apply_temperature(np.array([-0.1, 1.1]), 1.0)
    with pytest.raises(ValueError, match="positive sum"):
        apply_temperature(np.zeros((2, 3)), 1.0)
    with pytest.raises(ValueError, match="non-empty"):
        apply_temperature(np.zeros((0, 3)), 1.0)
    with pytest.raises(ValueError, match=r"non-empty \[n, classes\]"):
        fit_temperature(np.zeros((0, 2)), np.zeros(0, dtype=int))
    with pytest.raises(ValueError, match=r"non-empty \[n, classes\]"):
        fit_temperature(p[0], np.array([0]))
    with pytest.raises(ValueError, match=r"labels must have shape \(2,\)"):
        fit_temperature(p, np.array([0, 1, 1]))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        fit_temperature(p, np.array([0, 2]))
    with pytest.raises(ValueError, match="bounds"):
        fit_temperature(p, np.array([0, 1]), bounds=(2.0, 1.0))


# ---------------------------------------------------------------------------------------------
# Bootstrap
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("level", [0.95, 0.9])
@pytest.mark.parametrize("seed", [0, 7])
def test_mean_ci_equals_scipy_bootstrap_for_one_fold(level, seed):
    rng = np.random.default_rng(100 + seed)
    n, n_resamples = 173, 1999
    correct = rng.random(n) < 0.8
    values = rng.normal(size=(3, n))  # continuous rows make the interpolation visible
    indices = resample_indices(np.full(n, 4), n_resamples, seed=seed)
    for ours, data in ((correct, correct.astype(np.float64)), (values, values)):
        expected = scipy.stats.bootstrap(
            (data,),
            np.mean,
            axis=-1,
            n_resamples=n_resamples,
            method="percentile",
            confidence_level=level,
            rng=np.random.default_rng(seed),
        ).confidence_interval
        interval = mean_ci(ours, indices, level)
        np.testing.assert_allclose(interval.low, expected.low, rtol=0, atol=1e-9)
        np.testing.assert_allclose(interval.high, expected.high, rtol=0, atol=1e-9)
    assert isinstance(mean_ci(correct, indices, level).low, float)
    assert mean_ci(values, indices, level).low.shape == (3,)


def test_paired_difference_ci():
    rng = np.random.default_rng(3)
    n = 211
    a, b = rng.random(n) < 0.85, rng.random(n) < 0.75
    indices = resample_indices(np.zeros(n, dtype=int), 999, seed=5)
    assert paired_difference_ci(a, a, indices) == Interval(0.0, 0.0)
    rows = np.stack([a, b])
    same = paired_difference_ci(rows, rows, indices)
    np.testing.assert_array_equal(same.low, [0, 0])
    np.testing.assert_array_equal(same.high, [0, 0])
    expected = scipy.stats.bootstrap(
        (a.astype(float), b.astype(float)),
        lambda x, y, axis: x.mean(axis=axis) - y.mean(axis=axis),
        paired=True,
        n_resamples=999,
        method="percentile",
        rng=np.random.default_rng(5),
    ).confidence_interval
    interval = paired_difference_ci(a, b, indices)
    assert interval.low == pytest.approx(expected.low, abs=1e-9)
    assert interval.high == pytest.approx(expected.high, abs=1e-9)
    assert interval.low < a.mean() - b.mean() < interval.high


def test_resampling_stays_within_folds():
    rng = np.random.default_rng(0)
    sample_fold = rng.permutation(np.repeat([3, 0, 1], [40, 25, 31]))
    n, n_resamples, seed = sample_fold.size, 300, 11
    indices = resample_indices(sample_fold, n_resamples, seed=seed)
    assert indices.shape == (n_resamples, n) and indices.dtype == np.int64
    np.testing.assert_array_equal(sample_fold[indices], np.broadcast_to(sample_fold, indices.shape))
    counts = resample_counts(indices, n)
    assert counts.shape == (n_resamples, n) and counts.dtype == np.float64
    for fold in (0, 1, 3):
        np.testing.assert_array_equal(
            counts[:, sample_fold == fold].sum(axis=1), np.sum(sample_fold == fold)
        )
    # The counts are a per-row bincount.
    for row in (0, 17, n_resamples - 1):
        np.testing.assert_array_equal(counts[row], np.bincount(indices[row], minlength=n))
    # The documented draws: fold by fold, ascending, from one default_rng(seed).
    generator = np.random.default_rng(seed)
    expected = np.empty_like(indices)
    for fold in (0, 1, 3):
        positions = np.flatnonzero(sample_fold == fold)
        expected[:, positions] = positions[
            generator.integers(0, positions.size, (n_resamples, positions.size))
        ]
    np.testing.assert_array_equal(indices, expected)
    # The same seed gives the same resamples.
    np.testing.assert_array_equal(indices, resample_indices(sample_fold, n_resamples, seed))


def test_member_mean_ci():
    rng = np.random.default_rng(4)
    sample_fold = np.repeat([0, 1, 2], [30, 30, 29])
    n, n_resamples = sample_fold.size, 400
    correct = rng.random((5, n)) < rng.uniform(0.6, 0.9, (5, 1))
    indices = resample_indices(sample_fold, n_resamples, seed=2)
    # All valid: the mean of member accuracies is the mean of the member-mean row.
    plain = member_mean_ci(correct, indices)
    assert plain == pytest.approx(mean_ci(correct.mean(axis=0), indices))
    assert member_mean_ci(correct, indices, valid=np.ones_like(correct)) == pytest.approx(plain)
    # Member 1 diverged in fold 2: its accuracy is over folds 0 and 1 only.
    valid = np.ones_like(correct)
    valid[1, sample_fold == 2] = False
    statistics = []
    for row in indices:  # the reference loops over resamples
        accuracies = [correct[m, row][valid[m, row]].mean() for m in range(len(correct))]
        statistics.append(np.mean(accuracies))
    expected = np.percentile(statistics, [2.5, 97.5])
    assert member_mean_ci(correct, indices, valid=valid) == pytest.approx(tuple(expected))


def test_bootstrap_rejects_bad_input():
    folds = np.zeros(10, dtype=int)
    with pytest.raises(ValueError, match="--bootstrap"):
        resample_indices(folds, 0)
    with pytest.raises(ValueError, match="sample_fold must hold integer fold ids"):
        resample_indices(np.zeros(10), 5)
    indices = resample_indices(folds, 5)
    for level in (0.0, 1.0, 95):
        with pytest.raises(ValueError, match=r"level must lie in \(0, 1\)"):
            mean_ci(np.ones(10), indices, level)
    with pytest.raises(ValueError, match=r"values must have shape \[\.\.\., n\] with n = 10"):
        mean_ci(np.ones(9), indices)
    with pytest.raises(ValueError, match="same shape"):
        paired_difference_ci(np.ones((2, 10)), np.ones(10), indices)
    with pytest.raises(ValueError, match=r"indices must lie in \[0, 5\)"):
        resample_counts(indices, 5)
    with pytest.raises(ValueError, match="valid on no image"):
        member_mean_ci(np.ones((2, 10), bool), indices, valid=np.zeros((2, 10), bool))
