"""Synthetic runs of known accuracy for the ensemble tests, written through the format's
owner, ``ensembling.write_score_file``."""

import json

import numpy as np

import ensembling

CLASS_NAMES = ("a", "b", "c")


def write_fold(
    path,
    scores,
    labels,
    test_indices,
    *,
    optimizer,
    fold,
    dataset,
    class_names=CLASS_NAMES,
    diverged=None,
):
    """One score file through the format's owner, ``ensembling.write_score_file``.

    Member seeds are ``1000 * fold + member``; no member diverged unless ``diverged`` says so.
    """
    scores = np.asarray(scores)
    return ensembling.write_score_file(
        path,
        scores=scores,
        labels=labels,
        test_indices=test_indices,
        class_names=class_names,
        member_seeds=np.arange(len(scores)) + 1000 * fold,
        diverged=np.zeros(len(scores), dtype=bool) if diverged is None else diverged,
        optimizer=optimizer,
        fold=fold,
        dataset=dataset,
    )


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
            write_fold(
                run_dir / "scores" / f"fold{fold}" / f"{name}.npz",
                np.asarray(scores)[:, indices],
                np.asarray(labels)[indices],
                indices,
                optimizer=name,
                fold=fold,
                dataset=dataset,
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


def write_hela_run(tmp_path):
    """A run of known accuracies.

    Stand-alone (pooled over both folds): SGD members 0-1 9/12, 2-6 6/12, 7-13 3/12;
    DGrad member 0 9/12, 1-6 6/12; Cos#1 all 6/12.
    Sum rule, by W < 3R per block: SGD(7) b0 b1 b2 = 9/12; SGD(14) b0 b1 = 6/12 (b2: R=2,
    W=12); DGrad(7) b1 b2 = 6/12; Cos#1(7) 6/12; SGD(7)+DGrad(7) b0 (7, 7) b1 b2 = 9/12;
    DGrad(7)+Cos#1(7) all (b3: R=8, W=6) = 12/12; SGD(14)+DGrad(7)+Cos#1(7) all = 12/12
    (b2: R=9, W=19; b3: R=8, W=20).
    """
    return write_run(tmp_path / "hela", "hela", hela_groups(), LABELS)
