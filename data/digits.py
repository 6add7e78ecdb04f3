"""The embedded default: scikit-learn's digits, 1797 real 8x8 greyscale images of 10 classes.

The images ship inside scikit-learn (no download), so everything runs offline. Their 17
grey levels (0..16) are mapped to uint8 by ``round(255 * x / 16)``, then each image is
resized to ``image_size x image_size`` with the same bicubic resampler as every other data
set and replicated to three channels. Folds: stratified 5-fold cross-validation with the
fixed seed of :mod:`data.folds`.
"""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits

from data import decode, folds
from data.dataset import ImageDataset

DIGITS_MAX_VALUE = 16


def load_digits_dataset(image_size: int) -> ImageDataset:
    """Loads scikit-learn's digits at ``image_size x image_size``, RGB uint8, with 5 folds.

    Args:
      image_size: the side of the square images returned.

    Returns:
      An :class:`ImageDataset` named "digits" with 1797 images and class names "0".."9".
    """
    digits = load_digits()
    grey = np.rint(digits.images * (255.0 / DIGITS_MAX_VALUE)).astype(np.uint8)[..., None]
    images = np.stack([decode.to_square_rgb(image, image_size) for image in grey])
    labels = digits.target.astype(np.int32)
    return ImageDataset(
        name="digits",
        images=images,
        labels=labels,
        class_names=tuple(str(name) for name in digits.target_names),
        folds=folds.stratified_k_folds(labels, source="digits"),
    )
