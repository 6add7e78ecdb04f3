"""A class-per-folder image data set: train on your own images with ``folder:/path``.

Two layouts:

- ``root/<class>/<image>``: every image, folds by stratified k-fold cross-validation
  (k = 5, fixed seed; see :mod:`data.folds`);
- ``root/train/<class>/<image>`` and ``root/test/<class>/<image>``: one fold, the given
  split. Both halves must have the same class folders.

Class names are the folder names, sorted; labels index them. Images are decoded by content
(any format Pillow reads; greyscale becomes RGB) and resized to ``image_size x image_size``
as in :func:`data.decode.to_square_rgb`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from data import decode, folds, layout
from data.dataset import ImageDataset

SPLIT_FOLDERS = ("train", "test")


def load_folder_dataset(
    root: str | Path, image_size: int, *, num_folds: int = folds.NUM_FOLDS
) -> ImageDataset:
    """Loads a class-per-folder image tree.

    Args:
      root: the folder holding one subfolder per class, or ``train/`` and ``test/``.
      image_size: the side of the square images returned.
      num_folds: k for cross-validation (ignored with a given train/test split).

    Returns:
      An :class:`ImageDataset` named ``"folder:<root>"``.

    Raises:
      FileNotFoundError: ``root`` is not a folder, holds no class folder, or a class folder
        holds no image.
      ValueError: ``train/`` and ``test/`` have different classes, a class has fewer than
        ``num_folds`` images, or an image cannot be decoded.
    """
    root = Path(root).expanduser()
    name = f"folder:{root}"
    if not root.is_dir():
        raise FileNotFoundError(f"{name}: {root} is not a directory; expected a folder of "
                                "class folders (or train/ and test/ folders of class folders)")
    split_folders = layout.match_folders(root, SPLIT_FOLDERS)
    if len(split_folders) == len(SPLIT_FOLDERS):
        train_classes = _class_names(split_folders["train"], name)
        test_classes = _class_names(split_folders["test"], name)
        if train_classes != test_classes:
            raise ValueError(
                f"{name}: {split_folders['train']} has classes {list(train_classes)} but "
                f"{split_folders['test']} has {list(test_classes)}; expected the same classes"
            )
        class_names = train_classes
        train_files = layout.scan_class_folders(split_folders["train"], class_names, what=name)
        test_files = layout.scan_class_folders(split_folders["test"], class_names, what=name)
        files = train_files + test_files
        is_test = np.arange(len(files)) >= len(train_files)
    else:
        class_names = _class_names(root, name)
        files = layout.scan_class_folders(root, class_names, what=name)
        is_test = None
    images = np.stack([
        decode.to_square_rgb(decode.decode_image(path, greyscale=False), image_size)
        for path, _ in files
    ])
    labels = np.array([label for _, label in files], dtype=np.int32)
    if is_test is not None:
        dataset_folds = folds.given_split(is_test)
    else:
        dataset_folds = folds.stratified_k_folds(
            labels, num_folds, class_names=class_names, source=name
        )
    return ImageDataset(
        name=name, images=images, labels=labels, class_names=class_names, folds=dataset_folds
    )


def _class_names(directory: Path, name: str) -> tuple[str, ...]:
    classes = tuple(folder.name for folder in layout.subdirectories(directory))
    if not classes:
        raise FileNotFoundError(
            f"{name}: {directory} holds no class folders; expected one subfolder per class "
            "with the images inside"
        )
    return classes
