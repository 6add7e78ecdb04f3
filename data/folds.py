"""Fold protocols: which images train and which test, fold by fold, as index arrays.

The paper's protocols:

- HeLa, BG, digits and class-per-folder sets: stratified k-fold cross-validation (k = 5)
  with a fixed seed, so every optimizer and every ensemble member sees the same folds. Each
  image is test data in exactly one fold, and each class's test share in every fold is
  within one image of ``n_class / k``.
- LAR: the three folds its authors ship (``FOLD 1..3``); fold k tests on the images of
  folder ``FOLD k`` and trains on the other two.
- A class-per-folder set with ``train/`` and ``test/`` subfolders: that one given split.

Folds are plain data, ``((train_indices, test_indices), ...)`` with int64 indices into the
data set's arrays in its canonical (sorted file name) order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.model_selection import StratifiedKFold, StratifiedShuffleSplit

Folds = tuple[tuple[np.ndarray, np.ndarray], ...]

# Seed of every shuffled fold split: fixed, so folds never depend on the run's seed.
FOLD_SEED = 0
NUM_FOLDS = 5


def stratified_k_folds(
    labels: np.ndarray,
    num_folds: int = NUM_FOLDS,
    *,
    seed: int = FOLD_SEED,
    class_names: Sequence[str] | None = None,
    source: str = "the data set",
) -> Folds:
    """Stratified k-fold cross-validation folds (scikit-learn's ``StratifiedKFold``, shuffled).

    Args:
      labels: int class labels, one per image, in the data set's canonical order.
      num_folds: k, the number of folds (>= 2).
      seed: the shuffling seed; the same labels and seed always give the same folds.
      class_names: names for the error message when a class is too small.
      source: what the labels belong to, for the error message.

    Returns:
      ``num_folds`` pairs ``(train_indices, test_indices)``, int64, each sorted.

    Raises:
      ValueError: ``num_folds < 2``, or a class has fewer than ``num_folds`` images (then it
        cannot appear in every test fold, and stratification would be silently broken).
    """
    labels = np.asarray(labels)
    if num_folds < 2:
        raise ValueError(f"num_folds must be >= 2 for cross-validation, got {num_folds}")
    classes, counts = np.unique(labels, return_counts=True)
    too_small = [(c, n) for c, n in zip(classes, counts, strict=True) if n < num_folds]
    if too_small:
        described = ", ".join(
            f"{class_names[c] if class_names is not None else c!s}: {n} image(s)"
            for c, n in too_small
        )
        raise ValueError(
            f"{source}: stratified {num_folds}-fold cross-validation needs at least "
            f"{num_folds} images per class; too few in {described}"
        )
    splitter = StratifiedKFold(n_splits=num_folds, shuffle=True, random_state=seed)
    return tuple(
        (np.sort(train).astype(np.int64), np.sort(test).astype(np.int64))
        for train, test in splitter.split(np.zeros((len(labels), 1)), labels)
    )


def validation_split(
    train_indices: np.ndarray, labels: np.ndarray, fraction: float, *, seed: int, fold: int
) -> tuple[np.ndarray, np.ndarray]:
    """Holds out a stratified ``fraction`` of a fold's training split for validation.

    scikit-learn's ``StratifiedShuffleSplit``, seeded by ``(seed, fold)``: the same run seed
    and fold always hold out the same rows, whatever trains on them.

    Args:
      train_indices: the fold's training indices into the data set.
      labels: the data set's labels (all of them).
      fraction: the share held out, in (0, 1).
      seed: the run seed.
      fold: the fold's index.

    Returns:
      ``(train, validation)``: int64 indices, each sorted, disjoint, together
      ``train_indices``.

    Raises:
      ValueError: ``fraction`` not in (0, 1), too few rows to hold one of each class out, or
        a class left with no training row.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"validation_fraction must be in (0, 1), got {fraction!r}")
    train_indices = np.asarray(train_indices, dtype=np.int64)
    fold_labels = np.asarray(labels)[train_indices]
    random_state = int(np.random.SeedSequence([seed, fold]).generate_state(1)[0])
    splitter = StratifiedShuffleSplit(n_splits=1, test_size=fraction, random_state=random_state)
    try:
        (train, validation), = splitter.split(np.zeros((len(train_indices), 1)), fold_labels)
    except ValueError as error:
        raise ValueError(
            f"validation_fraction {fraction}: fold {fold}'s {len(train_indices)} training rows "
            f"cannot be split by class ({error})"
        ) from None
    lost = np.setdiff1d(np.unique(fold_labels), fold_labels[train])
    if lost.size:
        raise ValueError(
            f"validation_fraction {fraction} leaves class(es) {lost.tolist()} of fold {fold} "
            "with no training row; use a smaller fraction"
        )
    return np.sort(train_indices[train]), np.sort(train_indices[validation])


def given_folds(fold_ids: np.ndarray) -> Folds:
    """Folds from a per-image fold id: fold k tests on the images whose id is k.

    Args:
      fold_ids: int fold id per image (for LAR: 1, 2 or 3, from the ``FOLD k`` folder).

    Returns:
      One ``(train_indices, test_indices)`` pair per distinct id, in increasing id order.
    """
    fold_ids = np.asarray(fold_ids)
    return tuple(
        (np.flatnonzero(fold_ids != fold).astype(np.int64),
         np.flatnonzero(fold_ids == fold).astype(np.int64))
        for fold in np.unique(fold_ids)
    )


def given_split(is_test: np.ndarray) -> Folds:
    """One fold from a given train/test assignment (``True`` marks a test image)."""
    is_test = np.asarray(is_test, dtype=bool)
    return ((np.flatnonzero(~is_test).astype(np.int64), np.flatnonzero(is_test).astype(np.int64)),)
