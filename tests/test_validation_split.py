"""``--validation-fraction``: held-out rows per fold, scored by every member, never trained on."""

from __future__ import annotations

import numpy as np
import pytest
from trainer_testing import fast_config, load_scores, small_digits

import ensembling
import training
from data.folds import validation_split

VALIDATED = dict(optimizers={"sgd": 2, "adam": 1}, epochs=1, validation_fraction=0.1)


def test_the_split_is_stratified_seeded_by_run_seed_and_fold():
    labels = np.repeat(np.arange(4), 25)  # 4 classes x 25
    train_rows, validation = validation_split(np.arange(100), labels, 0.2, seed=3, fold=1)
    assert np.bincount(labels[validation]).tolist() == [5, 5, 5, 5]
    assert np.intersect1d(train_rows, validation).size == 0
    assert np.union1d(train_rows, validation).tolist() == list(range(100))
    again = validation_split(np.arange(100), labels, 0.2, seed=3, fold=1)[1]
    np.testing.assert_array_equal(validation, again)
    for seed, fold in ((4, 1), (3, 2)):
        other = validation_split(np.arange(100), labels, 0.2, seed=seed, fold=fold)[1]
        assert not np.array_equal(validation, other)


@pytest.mark.parametrize(
    ("labels", "fraction", "message"),
    [
        (np.repeat(np.arange(4), 25), 1.0, r"must be in \(0, 1\)"),
        (np.repeat(np.arange(4), 25), -0.1, r"must be in \(0, 1\)"),
        (np.repeat(np.arange(4), 25), 0.97, "cannot be split by class"),
        (np.array([0] * 20 + [1] * 2), 0.8, r"leaves class\(es\) \[1\] .* no training row"),
    ],
)
def test_bad_fractions_name_the_problem(labels, fraction, message):
    with pytest.raises(ValueError, match=message):
        validation_split(np.arange(len(labels)), labels, fraction, seed=0, fold=0)


@pytest.mark.parametrize("fraction", [1.0, -0.5, float("nan")])
def test_the_trainer_refuses_a_fraction_outside_0_1(tmp_path, fraction):
    with pytest.raises(ValueError, match="validation_fraction must be in"):
        training.validate_config(fast_config(tmp_path, validation_fraction=fraction))


def test_every_member_is_scored_on_the_held_out_rows(tmp_path, shared_runs):
    steps = []
    config = fast_config(tmp_path, **VALIDATED)
    training.train_ensemble(
        config, dataset=small_digits(), progress=False, on_step=lambda *w: steps.append(w)
    )
    digits = small_digits()
    for fold, (train_rows, _) in enumerate(digits.folds):
        kept, held_out = validation_split(train_rows, digits.labels, 0.1, seed=0, fold=fold)
        # Not trained on: an epoch has the steps of the remaining rows only (270 // 16).
        fold_steps = [s for s in steps if s[0] == fold]
        assert len(fold_steps) == len(kept) // config.batch_size == 16
        for group, members in (("sgd", 2), ("adam", 1)):
            saved = load_scores(config.out_dir, fold, group)
            np.testing.assert_array_equal(saved["validation_indices"], held_out)
            np.testing.assert_array_equal(saved["validation_labels"], digits.labels[held_out])
            scores = saved["validation_scores"]
            assert scores.shape == (members, len(held_out), 10)
            np.testing.assert_allclose(scores.sum(-1), 1.0, atol=1e-5)
    data = ensembling.load_run(config.out_dir)
    assert [len(labels) for labels in data.validation_labels] == [30, 30]
    # The test scores are those of the same members: the held-out rows only add scores.
    plain = shared_runs.finished(**{**VALIDATED, "validation_fraction": 0.0})
    assert load_scores(plain.run_dir, 0, "sgd")["scores"].shape == (2, 300, 10)
    assert "validation_scores" not in load_scores(plain.run_dir, 0, "sgd")


def test_resume_keeps_the_split(tmp_path, shared_runs, capsys):
    config = shared_runs.finished_copy(tmp_path, **VALIDATED)
    before = load_scores(config.out_dir, 1, "adam")
    training.train_ensemble(config, dataset=small_digits(), progress=False, resume=True)
    assert "not reused" not in capsys.readouterr().err
    after = load_scores(config.out_dir, 1, "adam")
    for key in ("validation_indices", "validation_scores", "scores"):
        np.testing.assert_array_equal(after[key], before[key])
