"""One loader for every data set: uint8 RGB arrays, int32 labels and the fold protocol.

- ``"digits"``: scikit-learn's digits, embedded, offline (:mod:`data.digits`).
- ``"hela"``, ``"bg"``, ``"lar"``: the built TFDS data sets (:mod:`data.hela` etc.), read
  from ``data_dir`` with ``tfds.data_source`` (array_record, no TensorFlow). Build them
  first with ``python -m data.build NAME --manual-dir DIR --data-dir DATA_DIR``.
- ``"folder:/path"``: a class-per-folder tree read directly (:mod:`data.folder`).

Every image is resized as a whole to ``image_size x image_size`` (aspect ratio not kept, as
the paper resizes to the network's 224x224 input) with a bicubic filter, and greyscale is
replicated to three channels. Examples are ordered by their file name, so the arrays and
the folds depend only on the data, not on how TFDS shuffled the stored records.

TensorFlow Datasets is imported only when a TFDS data set is asked for: "digits" and
folders, and ``import data`` itself, work where it is not installed.
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING

import numpy as np

from data import decode, folds
from data.dataset import ImageDataset
from data.digits import load_digits_dataset
from data.folder import load_folder_dataset

if TYPE_CHECKING:
    import tensorflow_datasets as tfds

DATASET_NAMES = ("digits", "hela", "bg", "lar")
FOLDER_PREFIX = "folder:"
TFDS_DATASET_NAMES = ("hela", "bg", "lar")


def load_dataset(name: str, image_size: int, *, data_dir: str | None = None) -> ImageDataset:
    """Loads a data set by name at ``image_size x image_size``.

    Args:
      name: one of :data:`DATASET_NAMES`, or ``"folder:/path/to/images"``.
      image_size: the side of the square uint8 RGB images returned.
      data_dir: where the TFDS data sets are built (TFDS's default, ``TFDS_DATA_DIR`` or
        ``~/tensorflow_datasets``, when None). Unused by "digits" and folders.

    Returns:
      The :class:`ImageDataset` with its fold protocol.

    Raises:
      ValueError: an unknown name or a non-positive ``image_size``.
      FileNotFoundError: a TFDS data set not built in ``data_dir`` (the message gives the
        command that builds it), or a folder that is not a class-per-folder tree.

    Example:
      >>> from data import load_dataset
      >>> digits = load_dataset("digits", 32)
      >>> digits.images.shape, digits.images.dtype, len(digits.folds)
      ((1797, 32, 32, 3), dtype('uint8'), 5)
    """
    if not isinstance(image_size, int) or image_size < 1:
        raise ValueError(f"image_size must be a positive int, got {image_size!r}")
    if name == "digits":
        return load_digits_dataset(image_size)
    if name in TFDS_DATASET_NAMES:
        return load_tfds_dataset(name, image_size, data_dir=data_dir)
    if name.startswith(FOLDER_PREFIX) and len(name) > len(FOLDER_PREFIX):
        return load_folder_dataset(name[len(FOLDER_PREFIX):], image_size)
    raise ValueError(
        f"unknown data set {name!r}; expected one of {', '.join(DATASET_NAMES)} or "
        f"'{FOLDER_PREFIX}/path/to/class/folders'"
    )


def builder_for(
    name: str, *, data_dir: str | None = None, config: str | None = None
) -> tfds.core.GeneratorBasedBuilder:
    """The TFDS builder of "hela", "bg" or "lar" (importing it registers it with TFDS).

    ``config`` is a storage config name; None is the builder's default, "short_side_256".
    Importing the builder imports TensorFlow Datasets.
    """
    if name not in TFDS_DATASET_NAMES:
        raise ValueError(
            f"unknown TFDS data set {name!r}; expected one of {', '.join(TFDS_DATASET_NAMES)}"
        )
    builder_class = importlib.import_module(f"data.{name}").Builder
    return builder_class(data_dir=data_dir, config=config)


def load_tfds_dataset(
    name: str,
    image_size: int,
    *,
    data_dir: str | None = None,
    config: str | None = None,
) -> ImageDataset:
    """Reads a built TFDS data set with ``tfds.data_source`` and resizes it.

    Folds: HeLa and BG stratified 5-fold cross-validation with the fixed seed; LAR its
    three given folds, from the stored ``fold`` feature. ``config`` is the storage config
    (None: the builder's default, "short_side_256").

    Raises:
      FileNotFoundError: the data set is not built in ``data_dir``.
    """
    import tensorflow_datasets as tfds  # noqa: PLC0415  (only for the TFDS data sets)

    builder = builder_for(name, data_dir=data_dir, config=config)
    config = builder.builder_config.name
    if not builder.is_prepared():
        root = os.fspath(builder.data_dir_root)
        raise FileNotFoundError(
            f"data set {name!r} (config {config!r}) is not built in data_dir {root} "
            f"(looked for {builder.data_dir}). Build it from the downloaded archive with:\n"
            f"  python -m data.build {name} --manual-dir DIR_WITH_THE_ARCHIVE "
            f"--data-dir {root}\n"
            f"or, with internet access, without --manual-dir to download it."
        )
    source = tfds.data_source(
        f"{name}/{config}:{builder.version}",
        split="train",
        data_dir=os.fspath(builder.data_dir_root),
        download=False,
    )
    examples = sorted(
        (source[index] for index in range(len(source))),
        key=lambda example: example["filename"],
    )
    images = np.stack([decode.to_square_rgb(example["image"], image_size) for example in examples])
    labels = np.array([example["label"] for example in examples], dtype=np.int32)
    class_names = tuple(builder.info.features["label"].names)
    if "fold" in builder.info.features:
        dataset_folds = folds.given_folds(np.array([example["fold"] for example in examples]))
    else:
        dataset_folds = folds.stratified_k_folds(labels, class_names=class_names, source=name)
    return ImageDataset(
        name=name, images=images, labels=labels, class_names=class_names, folds=dataset_folds
    )
