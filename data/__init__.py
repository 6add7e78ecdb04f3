"""Data sets for optax-dgrad: the paper's HeLa, BG and LAR as TFDS builders (no TensorFlow),
their fold protocols, a class-per-folder data set and the embedded default (digits).

Example:
  >>> from data import load_dataset, iter_folds
  >>> dataset = load_dataset("digits", 32)
  >>> for fold, train_indices, test_indices in iter_folds(dataset):
  ...     train_images = dataset.images[train_indices]
"""

from data.dataset import ImageDataset, iter_folds
from data.loader import DATASET_NAMES, load_dataset

__all__ = ["DATASET_NAMES", "ImageDataset", "iter_folds", "load_dataset"]
