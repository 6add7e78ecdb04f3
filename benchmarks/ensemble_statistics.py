"""Time greedy ensemble selection, temperature fitting and bootstrap intervals at full size.

Not a test: a measurement of ``ensembling.selection``, ``.calibration`` and ``.bootstrap`` on
synthetic softmax scores the size of a real sweep: by default a 56-member run with a 3-point
sweep (a 168-member pool), 5 folds of a HeLa-sized set (862 test images in all), 10 classes.
In fold ``f`` the validation rows are ``--validation-fraction`` of that fold's training
images. It times:

- selection: ``greedy_select`` (NLL) on each fold's validation rows over all members;
- temperature: ``fit_temperature`` for every member in every fold, and for the sum-rule
  ensemble of all members in every fold;
- bootstrap: ``resample_indices`` over the pooled test images (within folds) and 30 table
  rows: 12 Table 1 rows (``member_mean_ci`` over groups of 14 members, one with a member that
  diverged in one fold), 12 Table 2 rows (``mean_ci`` of a fused ensemble's correctness) and
  6 paired differences (``paired_difference_ci``).

Prints each part's seconds and the total (the goal is under 30 s on 2 CPU cores), and with
``--out`` writes them as JSON.

    python benchmarks/ensemble_statistics.py [--bootstrap 2000] [--out timings.json]

(from the repository root).
"""

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # ensembling is used from the checkout, not installed

from ensembling import (  # noqa: E402
    fit_temperature,
    greedy_select,
    mean_ci,
    member_mean_ci,
    paired_difference_ci,
    resample_indices,
)

GROUP_SIZE = 14
TABLE2_ROWS = 12
PAIRED_ROWS = 6


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--members", type=int, default=168, help="members in the pool")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds")
    parser.add_argument("--images", type=int, default=862, help="test images over all folds")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument(
        "--validation-fraction",
        type=float,
        default=0.1,
        help="validation rows per fold, as a fraction of the fold's training images",
    )
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="write the timings here as JSON")
    args = parser.parse_args(argv)
    if args.members < GROUP_SIZE:
        parser.error(f"--members must be at least {GROUP_SIZE} (one Table 1 group)")
    if args.folds < 2 or args.images < args.folds:
        parser.error("--folds must be >= 2 and --images >= --folds")
    if not 0 < args.validation_fraction < 1:
        parser.error("--validation-fraction must lie in (0, 1)")
    return args


def member_scores(rng, labels, skill, sharpness, n_classes):
    """Float32 softmax scores ``[members, rows, classes]`` of members of varying skill.

    ``sharpness`` scales each member's logits, so members range from under- to over-confident
    and the temperature fits do not all end at the same place.
    """
    logits = rng.normal(size=(len(skill), len(labels), n_classes))
    logits += skill[:, None, None] * (labels[:, None] == np.arange(n_classes))
    logits *= sharpness[:, None, None]
    logits -= logits.max(axis=-1, keepdims=True)
    scores = np.exp(logits)
    return (scores / scores.sum(axis=-1, keepdims=True)).astype(np.float32)


def main(argv=None):
    args = parse_args(argv)
    rng = np.random.default_rng(args.seed)
    n_members, n_folds, n_classes = args.members, args.folds, args.classes

    # Synthetic data: folds of near-equal size, members of varying skill and confidence; one
    # member diverges in the middle fold (NaN scores there, as a diverged network's are).
    sample_fold = np.arange(args.images) % n_folds
    test_labels = rng.integers(0, n_classes, args.images)
    skill = rng.uniform(0.5, 3.0, n_members)
    sharpness = rng.uniform(0.5, 3.0, n_members)
    test_scores = member_scores(rng, test_labels, skill, sharpness, n_classes)
    diverged_member, diverged_fold = n_members - 1, n_folds // 2
    test_scores[diverged_member, sample_fold == diverged_fold] = np.nan
    validation = []
    for fold in range(n_folds):
        training_images = args.images - np.sum(sample_fold == fold)
        n_validation = max(1, round(args.validation_fraction * training_images))
        labels = rng.integers(0, n_classes, n_validation)
        scores = member_scores(rng, labels, skill, sharpness, n_classes)
        valid = np.ones(n_members, dtype=bool)
        if fold == diverged_fold:
            scores[diverged_member] = np.nan
            valid[diverged_member] = False
        validation.append((scores, labels, valid))

    timings = {}

    start = time.perf_counter()
    selections = [
        greedy_select(scores, labels, objective="nll", valid=valid)
        for scores, labels, valid in validation
    ]
    timings["selection"] = time.perf_counter() - start

    start = time.perf_counter()
    n_fits = 0
    for scores, labels, valid in validation:
        for member in np.flatnonzero(valid):
            fit_temperature(scores[member], labels)
            n_fits += 1
        fit_temperature(scores[valid].astype(np.float64).mean(axis=0), labels)
        n_fits += 1
    timings["temperature"] = time.perf_counter() - start

    # Correctness of members and of sum-rule ensembles on the pooled test images, prepared
    # outside the timing: the table code has it already.
    test_valid = np.isfinite(test_scores).all(axis=-1)
    member_correct = (test_scores.argmax(axis=-1) == test_labels) & test_valid
    groups = np.arange(n_members - n_members % GROUP_SIZE).reshape(-1, GROUP_SIZE)
    summed = np.where(test_valid[..., None], test_scores, 0.0)
    ensembles = [groups[k % len(groups)][: 7 + k % 8] for k in range(TABLE2_ROWS)]
    fused_correct = np.stack(
        [summed[ensemble].sum(axis=0).argmax(axis=-1) == test_labels for ensemble in ensembles]
    )

    start = time.perf_counter()
    indices = resample_indices(sample_fold, args.bootstrap, seed=args.seed)
    intervals = []
    for group in groups:
        intervals.append(member_mean_ci(member_correct[group], indices, valid=test_valid[group]))
    for correct in fused_correct:
        intervals.append(mean_ci(correct, indices))
    for k in range(PAIRED_ROWS):
        intervals.append(paired_difference_ci(fused_correct[k], fused_correct[-1 - k], indices))
    timings["bootstrap"] = time.perf_counter() - start
    timings["total"] = timings["selection"] + timings["temperature"] + timings["bootstrap"]

    rounds = [len(selection.order) for selection in selections]
    print(
        f"{n_members} members, {n_folds} folds, {args.images} test images, {n_classes} "
        f"classes, validation rows per fold {[len(v[1]) for v in validation]}, "
        f"{args.bootstrap} resamples; {os.cpu_count()} CPUs ({platform.machine()})"
    )
    print(f"selection:   {timings['selection']:7.2f} s  (NLL; rounds per fold {rounds})")
    print(f"temperature: {timings['temperature']:7.2f} s  ({n_fits} fits)")
    print(f"bootstrap:   {timings['bootstrap']:7.2f} s  ({len(intervals)} table rows)")
    print(f"total:       {timings['total']:7.2f} s")
    if args.out is not None:
        record = {
            "arguments": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "seconds": timings,
            "selection_rounds": rounds,
            "temperature_fits": n_fits,
            "bootstrap_rows": len(intervals),
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
            "numpy": np.__version__,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=2) + "\n")
    return timings


if __name__ == "__main__":
    main()
