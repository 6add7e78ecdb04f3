"""The in-memory data set the trainer consumes, and the fold iterator over it."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np


@dataclasses.dataclass(frozen=True)
class ImageDataset:
    """Images, labels and fold protocol of one data set, ready to put on the device.

    Attributes:
      name: "digits", "hela", "bg", "lar" or "folder:/path".
      images: uint8 ``[N, size, size, 3]``; greyscale images replicated to three channels.
      labels: int32 ``[N]``, indices into ``class_names``.
      class_names: the class of each label value.
      folds: per fold, ``(train_indices, test_indices)`` as int64 arrays into ``images``.
    """

    name: str
    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    folds: tuple[tuple[np.ndarray, np.ndarray], ...]

    def __post_init__(self):
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[3] != 3:
            raise ValueError(
                f"{self.name}: images must be uint8 [N, size, size, 3], got "
                f"{self.images.dtype} {self.images.shape}"
            )
        if self.labels.shape != (self.images.shape[0],) or self.labels.dtype != np.int32:
            raise ValueError(
                f"{self.name}: labels must be int32 [{self.images.shape[0]}], got "
                f"{self.labels.dtype} {self.labels.shape}"
            )


def iter_folds(dataset: ImageDataset) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yields ``(fold, train_indices, test_indices)`` for each fold, fold counting from 0.

    Example:
      >>> from data import load_dataset, iter_folds
      >>> digits = load_dataset("digits", 8)
      >>> [(fold, len(train), len(test)) for fold, train, test in iter_folds(digits)][0]
      (0, 1437, 360)
    """
    for fold, (train_indices, test_indices) in enumerate(dataset.folds):
        yield fold, train_indices, test_indices
