"""The loader, the embedded digits default, fold protocols and the class-per-folder data set."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits

from data import DATASET_NAMES, ImageDataset, iter_folds, load_dataset
from data.folds import given_folds, stratified_k_folds

ROOT = Path(__file__).resolve().parent.parent


def assert_partition(folds, num_images):
    """Train and test are disjoint, together all images; each image is tested exactly once."""
    tested = np.concatenate([test for _, test in folds])
    np.testing.assert_array_equal(np.sort(tested), np.arange(num_images))
    for train, test in folds:
        assert train.dtype == np.int64 and test.dtype == np.int64
        assert np.intersect1d(train, test).size == 0
        np.testing.assert_array_equal(np.union1d(train, test), np.arange(num_images))


def assert_stratified(folds, labels):
    """Each class's test count in each fold is within one image of n_class / k."""
    counts = np.bincount(labels)
    for _, test in folds:
        per_class = np.bincount(labels[test], minlength=len(counts))
        assert np.all(np.abs(per_class - counts / len(folds)) < 1), per_class


def test_stratified_folds_partition_stratify_and_repeat():
    labels = np.repeat(np.arange(4), [7, 5, 11, 23])
    np.random.default_rng(0).shuffle(labels)
    folds = stratified_k_folds(labels)
    assert len(folds) == 5
    assert_partition(folds, len(labels))
    assert_stratified(folds, labels)
    for (train_a, test_a), (train_b, test_b) in zip(folds, stratified_k_folds(labels), strict=True):
        np.testing.assert_array_equal(train_a, train_b)
        np.testing.assert_array_equal(test_a, test_b)


def test_stratified_folds_reject_a_class_smaller_than_k():
    labels = np.array([0] * 6 + [1] * 3)
    with pytest.raises(ValueError, match=r"at least 5 images per class; too few in small: 3"):
        stratified_k_folds(labels, class_names=("big", "small"))


def test_given_folds_test_on_their_own_fold():
    fold_ids = np.array([2, 1, 3, 1, 2, 3, 3])
    folds = given_folds(fold_ids)
    assert_partition(folds, len(fold_ids))
    np.testing.assert_array_equal(folds[0][1], [1, 3])
    np.testing.assert_array_equal(folds[1][1], [0, 4])
    np.testing.assert_array_equal(folds[2][1], [2, 5, 6])


def test_digits_default_is_offline_resized_rgb_with_five_folds():
    dataset = load_dataset("digits", 32)
    reference = load_digits()
    assert dataset.name == "digits"
    assert dataset.images.shape == (1797, 32, 32, 3) and dataset.images.dtype == np.uint8
    assert dataset.class_names == tuple("0123456789")
    np.testing.assert_array_equal(dataset.labels, reference.target)
    # 0..16 -> 0..255, bicubic resize of the whole image, grey replicated to RGB.
    grey = np.round(reference.images[5] * 255 / 16).astype(np.uint8)
    expected = np.asarray(Image.fromarray(grey).resize((32, 32), Image.Resampling.BICUBIC))
    for channel in range(3):
        np.testing.assert_array_equal(dataset.images[5, :, :, channel], expected)
    assert_partition(dataset.folds, 1797)
    assert_stratified(dataset.folds, dataset.labels)
    again = load_dataset("digits", 8)
    for (_, test_a), (_, test_b) in zip(dataset.folds, again.folds, strict=True):
        np.testing.assert_array_equal(test_a, test_b)
    fold_numbers = [fold for fold, _, _ in iter_folds(dataset)]
    assert fold_numbers == [0, 1, 2, 3, 4]


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown data set 'imagenet'.*digits, hela, bg, lar"):
        load_dataset("imagenet", 32)
    assert DATASET_NAMES == ("digits", "hela", "bg", "lar")


def test_dataset_rejects_wrong_arrays():
    with pytest.raises(ValueError, match=r"images must be uint8 \[N, size, size, 3\]"):
        ImageDataset("x", np.zeros((2, 4, 4, 1), np.uint8), np.zeros(2, np.int32), ("a",), ())


def write_class_folders(root, counts, rng, size=(9, 12)):
    """Greyscale or RGB PNGs in root/<class>/; returns the pixels written, by class."""
    written = {}
    for name, count in counts.items():
        (root / name).mkdir(parents=True)
        written[name] = []
        for index in range(count):
            pixels = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{index:02d}.png")
            written[name].append(pixels)
    return written


def test_folder_dataset_k_fold(tmp_path):
    written = write_class_folders(tmp_path, {"cats": 5, "dogs": 7}, np.random.default_rng(0))
    dataset = load_dataset(f"folder:{tmp_path}", 6)
    assert dataset.name == f"folder:{tmp_path}"
    assert dataset.class_names == ("cats", "dogs")
    np.testing.assert_array_equal(dataset.labels, [0] * 5 + [1] * 7)
    expected = np.asarray(
        Image.fromarray(written["dogs"][3]).resize((6, 6), Image.Resampling.BICUBIC)
    )
    np.testing.assert_array_equal(dataset.images[5 + 3], expected)
    assert_partition(dataset.folds, 12)
    assert_stratified(dataset.folds, dataset.labels)


def test_folder_dataset_given_split(tmp_path):
    rng = np.random.default_rng(1)
    write_class_folders(tmp_path / "train", {"a": 3, "b": 2}, rng)
    write_class_folders(tmp_path / "test", {"a": 1, "b": 2}, rng)
    dataset = load_dataset(f"folder:{tmp_path}", 4)
    assert dataset.class_names == ("a", "b")
    np.testing.assert_array_equal(dataset.labels, [0, 0, 0, 1, 1, 0, 1, 1])
    assert len(dataset.folds) == 1
    np.testing.assert_array_equal(dataset.folds[0][0], [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(dataset.folds[0][1], [5, 6, 7])


def test_folder_dataset_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere is not a directory"):
        load_dataset(f"folder:{tmp_path / 'nowhere'}", 8)
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "flat" / "lonely.png")
    with pytest.raises(FileNotFoundError, match=r"flat holds no class folders"):
        load_dataset(f"folder:{tmp_path / 'flat'}", 8)
    write_class_folders(tmp_path / "uneven", {"a": 5, "b": 5}, np.random.default_rng(2))
    (tmp_path / "uneven" / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"uneven/empty holds no image files"):
        load_dataset(f"folder:{tmp_path / 'uneven'}", 8)
    rng = np.random.default_rng(3)
    write_class_folders(tmp_path / "split" / "train", {"a": 1, "b": 1}, rng)
    write_class_folders(tmp_path / "split" / "test", {"a": 1, "c": 1}, rng)
    mismatch = r"split/train has classes \['a', 'b'\] but .*\['a', 'c'\]"
    with pytest.raises(ValueError, match=mismatch):
        load_dataset(f"folder:{tmp_path / 'split'}", 8)
    write_class_folders(tmp_path / "small", {"a": 5, "b": 2}, rng)
    with pytest.raises(ValueError, match=r"too few in b: 2 image"):
        load_dataset(f"folder:{tmp_path / 'small'}", 8)


def test_non_image_files_are_reported_not_silently_dropped(tmp_path, caplog):
    write_class_folders(tmp_path, {"a": 5, "b": 5}, np.random.default_rng(4))
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    dataset = load_dataset(f"folder:{tmp_path}", 4)
    assert len(dataset.labels) == 10
    assert "notes.txt" in caplog.text


def test_tensorflow_datasets_is_imported_only_for_a_tfds_data_set(tmp_path):
    # A fresh interpreter: this test process has imported TFDS through other tests.
    script = f"""
import sys
import data, models, models.pretrained, training.augment
from data import DATASET_NAMES, iter_folds, load_dataset
assert DATASET_NAMES == ("digits", "hela", "bg", "lar"), DATASET_NAMES
digits = load_dataset("digits", 8)
assert len(list(iter_folds(digits))) == 5
assert "tensorflow_datasets" not in sys.modules, "imported without a TFDS data set"
try:
    load_dataset("hela", 8, data_dir={str(tmp_path)!r})
except FileNotFoundError as error:
    assert "python -m data.build hela" in str(error), error
else:
    raise AssertionError("hela is not built in an empty data_dir")
assert "tensorflow_datasets" in sys.modules, "hela must be read through TFDS"
print("ok")
"""
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")
