"""ensemble.py's selection, calibration, intervals and learning curves on a trained run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

import ensemble
import ensembling
from ensembling import (
    calibrate_ensemble,
    fit_temperature,
    greedy_ensemble,
    greedy_select,
    load_learning_curves,
    mean_ci,
    member_pool,
    paired_difference_ci,
    pool_ensemble,
    resample_indices,
    spec_weights,
    table_intervals,
)
from ensembling.heldout import fuse_weighted

# Two grid points of three optimizers, two seeds each, a validation split, two folds.
VALIDATED_SWEEP = dict(
    optimizers={"sgd": 2, "adam": 2, "dgrad": 2},
    epochs=2,
    validation_fraction=0.1,
    sweep={"learning_rate": (3e-3, 1e-3)},
)


@pytest.fixture(scope="module")
def validated(shared_runs):
    return shared_runs.finished(**VALIDATED_SWEEP).run_dir


def test_greedy_selection_of_a_run_selects_each_fold_on_its_validation_rows(validated):
    data = ensembling.load_run(validated)
    pool = member_pool(data)
    assert len(pool.members) == 12
    chosen = greedy_ensemble(data, "nll")
    for position, fold in enumerate(data.folds):
        expected = greedy_select(
            pool.validation_scores[position],
            pool.validation_labels[position],
            objective="nll",
            valid=~pool.diverged[:, position],
        )
        np.testing.assert_array_equal(chosen.weights[position], expected.counts)
        rows = data.sample_fold_position == position
        fused = fuse_weighted(pool.test_scores[:, rows], expected.counts.astype(float))
        np.testing.assert_allclose(chosen.probabilities[rows], fused, rtol=1e-12)
        assert fold in (0, 1)
    whole = pool_ensemble(data)
    assert whole.weights.sum() == 12 * len(data.folds)


def test_a_fold_where_every_member_diverged_is_named(validated):
    data = ensembling.load_run(validated)
    broken = {
        name: group._replace(diverged=group.diverged | (np.arange(2) == 1))
        for name, group in data.groups.items()
    }
    with pytest.raises(ensembling.EnsembleSpecError, match="every member diverged in fold 1"):
        greedy_ensemble(data._replace(groups=broken))


def test_merged_runs_with_other_validation_rows_are_named(validated):
    data = ensembling.load_run(validated)
    sgd = {k: v for k, v in data.groups.items() if k.startswith("sgd")}
    others = {k: v for k, v in data.groups.items() if not k.startswith("sgd")}
    first = data._replace(groups=sgd)
    second = data._replace(
        groups=others, validation_labels=tuple(labels[::-1] for labels in data.validation_labels)
    )
    merged = ensembling.merge_runs(first, second)
    with pytest.raises(ensembling.EnsembleSpecError, match="held out different validation rows"):
        member_pool(merged)
    assert (
        len(member_pool(ensembling.merge_runs(first, data._replace(groups=others))).members) == 12
    )
    # Other images with the same labels (a class-ordered data set, another --seed): the rows
    # are compared by index, not only by label.
    shifted = data._replace(
        groups=others,
        validation_indices=tuple(indices + 10_000 for indices in data.validation_indices),
    )
    with pytest.raises(ensembling.EnsembleSpecError, match="held out different validation rows"):
        member_pool(ensembling.merge_runs(first, shifted))
    # A run without a validation split is named as such, whichever side it is on.
    unsplit = data._replace(groups=others, validation_labels=None, validation_indices=None)
    for pair in ((first, unsplit), (unsplit, first)):
        with pytest.raises(ensembling.EnsembleSpecError,
                           match="held out validation rows and .* did not"):  # fmt: skip
            member_pool(ensembling.merge_runs(*pair))
    # Neither holds rows out: nothing to select on, and that is what is said.
    plain = first._replace(validation_labels=None, validation_indices=None)
    with pytest.raises(ensembling.EnsembleSpecError, match="hold no validation scores"):
        member_pool(ensembling.merge_runs(plain, unsplit))


def test_no_test_fold_leakage(validated):
    """Selection and temperatures read validation rows only: other test labels, same choice."""
    data = ensembling.load_run(validated)
    rng = np.random.default_rng(0)
    perturbed = data._replace(labels=rng.permutation(data.labels))
    pool = member_pool(data)
    spec = ensembling.parse_ensemble_spec("dgrad[learning_rate=0.003](2)")
    for objective in ("nll", "accuracy", "brier"):
        a, b = greedy_ensemble(data, objective), greedy_ensemble(perturbed, objective)
        np.testing.assert_array_equal(a.weights, b.weights)
    weights = spec_weights(data, pool, spec)
    before = calibrate_ensemble(data, pool, spec.label, weights)
    after = calibrate_ensemble(perturbed, member_pool(perturbed), spec.label, weights)
    assert before.temperatures == after.temperatures
    # The temperature is the validation NLL's minimiser, fold by fold.
    for position, temperature in enumerate(before.temperatures):
        validation = fuse_weighted(pool.validation_scores[position], weights[position])
        assert temperature == fit_temperature(validation, pool.validation_labels[position])
    # Scaling never changes a decision.
    np.testing.assert_array_equal(
        before.probabilities_before.argmax(-1), before.probabilities_after.argmax(-1)
    )
    assert before.before.accuracy == before.after.accuracy


def test_table_intervals_and_the_default_baseline(validated):
    data = ensembling.load_run(validated)
    datasets = {data.dataset: data}
    entries = ensembling.table2(datasets)
    intervals = table_intervals(datasets, entries, n_resamples=300)
    served = [e for e in entries if e.result is not None]
    best = max(served, key=lambda e: e.result.metrics.accuracy)
    assert intervals.baselines == {"digits": best.spec.label}
    indices = resample_indices(data.sample_fold, 300, 0)
    for entry in served:
        correct = entry.result.fused.predictions == data.labels
        assert intervals.ensembles["digits", entry.spec.label] == mean_ci(correct, indices)
        reference = best.result.fused.predictions == data.labels
        difference = intervals.differences["digits", entry.spec.label]
        assert difference.interval == paired_difference_ci(correct, reference, indices)
        assert difference.difference == pytest.approx(correct.mean() - reference.mean())
    assert intervals.differences["digits", best.spec.label].interval == (0.0, 0.0)


def test_the_cli_writes_selection_calibration_and_intervals(validated, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [validated, "--select", "greedy", "--calibrate", "temperature", "--out", str(out),
            "--bootstrap", "200", "--baseline", "adam[learning_rate=0.003](2)"]  # fmt: skip
    assert ensemble.main(argv) == 0
    printed = capsys.readouterr().out
    assert "| digits | greedy (nll) |" in printed and "| digits | whole pool |" in printed
    with (out / "selection.csv").open() as file:
        rows = list(csv.DictReader(file))
    assert [row["ensemble"] for row in rows] == ["greedy (nll)", "whole pool"]
    assert all(row["baseline"] == "Adam[learning_rate=0.003](2)" for row in rows)
    for row in rows:
        assert (
            float(row["accuracy_ci_low"])
            <= float(row["accuracy"])
            <= float(row["accuracy_ci_high"])
        )
    with (out / "calibration.csv").open() as file:
        calibration = list(csv.DictReader(file))
    assert {row["kind"] for row in calibration} == {"member", "ensemble"}
    report = json.loads((out / "report.json").read_text())
    assert report["bootstrap"]["resamples"] == 200
    for name in ("calibration.png", "learning_curves.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_selection_without_validation_scores_names_the_flag(shared_runs, capsys):
    plain = shared_runs.finished(optimizers={"sgd": 1}, folds=(0,), epochs=1).run_dir
    for flag in (["--select", "greedy"], ["--calibrate", "temperature"]):
        with pytest.raises(SystemExit) as exit_:
            ensemble.main([plain, *flag, "--no-plots"])
        assert exit_.value.code == 1
        assert "train.py --validation-fraction" in capsys.readouterr().err


@pytest.mark.parametrize("rule", ["vote", "mean_log"])
def test_calibration_under_another_fusion_rule_is_refused(validated, rule, capsys):
    # Its rows would carry Table 2's names with the sum rule's numbers.
    with pytest.raises(SystemExit) as exit_:
        ensemble.main([validated, "--calibrate", "temperature", "--fusion", rule, "--no-plots"])
    assert exit_.value.code == 1
    assert f"Table 2 is fused by '{rule}': calibrate with the sum rule" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--bootstrap", "0"], "--bootstrap 0: must be at least 1"),
        (["--select-objective", "auc"], "invalid choice: 'auc'"),
        (["--select-rounds", "-1"], "--select-rounds -1: must be at least 1"),
    ],
)
def test_bad_flags_name_the_problem(argv, message, capsys):
    with pytest.raises(SystemExit):
        ensemble.build_parser().parse_args(["run", *argv])
    assert message in capsys.readouterr().err


def test_learning_curves_are_the_logged_rows(validated):
    curves = load_learning_curves(validated)
    assert list(curves)[:2] == ["sgd[learning_rate=0.003]", "sgd[learning_rate=0.001]"]
    curve = curves["adam[learning_rate=0.001]"]
    assert curve.loss.shape == (2, 2, 2)  # folds, members, epochs
    with (Path(validated) / "logs" / "fold1" / "adam.csv").open() as file:
        logged = [row for row in csv.DictReader(file)]
    # The second grid point's members are 2 and 3 of the group's log.
    for row in logged:
        member, epoch = int(row["member"]), int(row["epoch"]) - 1
        if member >= 2:
            assert curve.loss[1, member - 2, epoch] == float(row["loss"])
            assert curve.accuracy[1, member - 2, epoch] == float(row["train_accuracy"])
