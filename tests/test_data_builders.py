"""TFDS builders for HeLa, BG and LAR: fake archives in each real layout, built as
array_record and read back with tfds.data_source, without network or TensorFlow."""

import io
import shutil
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from data import load_dataset
from data.build import build, main
from data.builder_base import StorageConfig
from data.decode import ImageDecodeError, decode_image
from data.hela import Builder as HelaBuilder

LAR_SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lar_sample"

HELA_CLASSES = (
    "actin", "dna", "endosome", "er", "golgia", "golgpp", "lysosome", "microtubules",
    "mitochondria", "nucleolus",
)
# Real copies name files like this: extension case varies by class.
HELA_FILE_NAMES = {"dna": "DNA_{:03d}.TIF", "er": "ER_{:03d}.TIF"}
HELA_PER_CLASS = 5
BG_CLASSES = ("Grade_1", "Grade_2", "Grade_3")
BG_PER_CLASS = 5
LAR_CLASSES = ("He", "Hbv", "IPCL", "Le")


def write_hela(root: Path, rng: np.random.Generator) -> dict[str, tuple[np.ndarray, int]]:
    """16-bit 16x16 TIFFs in the HeLa layout; returns {relative name: (pixels, label)}."""
    written = {}
    for label, name in enumerate(HELA_CLASSES):
        folder = root / name
        folder.mkdir(parents=True)
        for index in range(1, HELA_PER_CLASS + 1):
            file_name = HELA_FILE_NAMES.get(name, name + "_{:03d}.tif").format(index)
            # 12-bit data in a 16-bit container, like microscope images.
            pixels = rng.integers(100 * index, 4096, size=(16, 16), dtype=np.uint16)
            Image.fromarray(pixels).save(folder / file_name, format="TIFF")
            written[f"{name}/{file_name}"] = (pixels, label)
    return written


def min_max_uint8(pixels: np.ndarray) -> np.ndarray:
    """The documented 16 -> 8 bit stretch, in exact integer arithmetic (round half up)."""
    shifted = pixels.astype(np.int64) - int(pixels.min())
    value_range = int(pixels.max()) - int(pixels.min())
    return ((510 * shifted + value_range) // (2 * value_range)).astype(np.uint8)


def read_source(name, config, data_dir):
    source = tfds.data_source(f"{name}/{config}", split="train", data_dir=str(data_dir),
                              download=False)
    return {example["filename"].decode(): example for example in source}


def build_quietly(builder_class, data_dir, manual_dir, config="original"):
    builder = builder_class(data_dir=str(data_dir), config=config)
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir),
                                                     try_download_gcs=False),
    )
    return builder


@pytest.fixture(scope="module")
def hela_archive(tmp_path_factory):
    """A hela.tar.gz with a top hela/ folder, like the published archive."""
    work = tmp_path_factory.mktemp("hela_src")
    written = write_hela(work / "hela", np.random.default_rng(0))
    manual = tmp_path_factory.mktemp("hela_manual")
    with tarfile.open(manual / "hela.tar.gz", "w:gz") as archive:
        archive.add(work / "hela", arcname="hela")
    return manual, written


def test_hela_builds_from_archive_and_reads_back_without_tensorflow(hela_archive, tmp_path):
    manual, written = hela_archive
    builder = build_quietly(HelaBuilder, tmp_path, manual)
    assert builder.info.features["label"].names == list(HELA_CLASSES)
    examples = read_source("hela", "original", tmp_path)
    assert sorted(examples) == sorted(written)
    for filename, (pixels, label) in written.items():
        example = examples[filename]
        assert example["label"] == label
        assert example["image"].shape == (16, 16, 1)
        np.testing.assert_array_equal(example["image"][..., 0], min_max_uint8(pixels))
    assert "tensorflow" not in sys.modules


def test_hela_without_top_folder_gives_the_same_examples(hela_archive, tmp_path):
    manual, written = hela_archive
    flat_manual = tmp_path / "flat"
    # The unpacked classes directly in the manual dir: no hela/ folder, no archive.
    with tarfile.open(manual / "hela.tar.gz") as archive:
        archive.extractall(tmp_path / "unpacked", filter="data")
    shutil.copytree(tmp_path / "unpacked" / "hela", flat_manual)
    build_quietly(HelaBuilder, tmp_path / "tfds", flat_manual)
    examples = read_source("hela", "original", tmp_path / "tfds")
    assert sorted(examples) == sorted(written)
    np.testing.assert_array_equal(
        examples["dna/DNA_002.TIF"]["image"][..., 0], min_max_uint8(written["dna/DNA_002.TIF"][0])
    )


def test_hela_load_dataset_resizes_replicates_and_folds(hela_archive, tmp_path):
    manual, written = hela_archive
    build(  # the CLI's function, default config (short side 256: 16x16 stays 16x16)
        "hela", manual_dir=str(manual), data_dir=str(tmp_path)
    )
    dataset = load_dataset("hela", 8, data_dir=str(tmp_path))
    names = sorted(written)
    assert dataset.images.shape == (len(names), 8, 8, 3)
    assert dataset.class_names == HELA_CLASSES
    np.testing.assert_array_equal(dataset.labels, [written[name][1] for name in names])
    # Sorted by file name; greyscale replicated; bicubic whole-image resize.
    first = min_max_uint8(written[names[0]][0])
    expected = np.asarray(Image.fromarray(first).resize((8, 8), Image.Resampling.BICUBIC))
    for channel in range(3):
        np.testing.assert_array_equal(dataset.images[0, :, :, channel], expected)
    assert len(dataset.folds) == 5
    for _, test in dataset.folds:
        # 5 images per class, 5 folds: exactly one per class in each test fold.
        np.testing.assert_array_equal(np.bincount(dataset.labels[test]), np.ones(10))


def test_bg_jpg_grades_build_with_shrinking_config(tmp_path):
    from data.bg import Builder as BgBuilder

    rng = np.random.default_rng(1)
    manual = tmp_path / "manual" / "BreastCancer"
    written = {}
    for label, grade in enumerate(BG_CLASSES):
        (manual / grade).mkdir(parents=True)
        for index in range(BG_PER_CLASS):
            pixels = np.clip(
                rng.normal(40 + 80 * label, 5, size=(12, 16, 3)), 0, 255
            ).astype(np.uint8)
            path = manual / grade / f"img_{index}.JPG"
            Image.fromarray(pixels).save(path, format="JPEG", quality=95)
            written[f"{grade}/img_{index}.JPG"] = (path, pixels, label)
    config = StorageConfig(name="short_side_8", max_short_side=8)
    builder = build_quietly(BgBuilder, tmp_path / "tfds", tmp_path / "manual", config=config)
    assert builder.info.features["label"].names == ["grade_1", "grade_2", "grade_3"]
    examples = read_source("bg", "short_side_8", tmp_path / "tfds")
    assert sorted(examples) == sorted(written)
    for filename, (path, pixels, label) in written.items():
        example = examples[filename]
        assert example["label"] == label
        decoded = Image.open(path).convert("RGB")
        # JPEG is lossy: the decoded file is close to what was written...
        assert np.abs(np.asarray(decoded, np.int16) - pixels).max() <= 24
        # ...and what is stored is that file shrunk to a short side of 8 (16x12 -> 11x8).
        expected = np.asarray(decoded.resize((11, 8), Image.Resampling.BICUBIC))
        np.testing.assert_array_equal(example["image"], expected)


def real_lar_layout(root: Path) -> dict[str, tuple[Path, int, int]]:
    """The 31 real LAR patches spread over laryngeal dataset/FOLD k/<class>/ round-robin."""
    patches = sorted(LAR_SAMPLE.glob("*.png"))
    assert len(patches) == 31
    placed = {}
    for index, patch in enumerate(patches):
        fold, label = index % 3 + 1, (index // 3) % 4
        folder = root / "laryngeal dataset" / f"FOLD {fold}" / LAR_CLASSES[label]
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(patch, folder / patch.name)
        placed[f"FOLD {fold}/{LAR_CLASSES[label]}/{patch.name}"] = (patch, label, fold)
    return placed


def test_lar_real_patches_build_with_given_folds(tmp_path):
    from data.lar import Builder as LarBuilder

    source = tmp_path / "src"
    placed = real_lar_layout(source)
    manual = tmp_path / "manual"
    manual.mkdir()
    with tarfile.open(manual / "laryngeal dataset.tar", "w") as archive:
        archive.add(source / "laryngeal dataset", arcname="laryngeal dataset")
    # The default config: patches of about 100x100 are below its 256 short side, kept as is.
    builder = build_quietly(LarBuilder, tmp_path / "tfds", manual, config="short_side_256")
    assert builder.info.features["label"].names == list(LAR_CLASSES)
    examples = read_source("lar", "short_side_256", tmp_path / "tfds")
    assert sorted(examples) == sorted(placed)
    for filename, (patch, label, fold) in placed.items():
        example = examples[filename]
        assert (example["label"], example["fold"]) == (label, fold)
        expected = np.asarray(Image.open(patch).convert("RGB"))
        np.testing.assert_array_equal(example["image"], expected)

    dataset = load_dataset("lar", 16, data_dir=str(tmp_path / "tfds"))
    names = sorted(placed)
    fold_of = np.array([placed[name][2] for name in names])
    assert len(dataset.folds) == 3
    for fold, (train, test) in enumerate(dataset.folds, start=1):
        np.testing.assert_array_equal(test, np.flatnonzero(fold_of == fold))
        np.testing.assert_array_equal(train, np.flatnonzero(fold_of != fold))


def test_real_lar_patches_decode_by_content_to_rgb():
    patches = sorted(LAR_SAMPLE.glob("*.png"))
    formats = [Image.open(patch).format for patch in patches]
    assert formats.count("JPEG") == 16 and formats.count("PNG") == 15
    for patch in patches:
        pixels = decode_image(patch, greyscale=False)
        assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3
        assert 100 <= pixels.shape[0] <= 102 and 100 <= pixels.shape[1] <= 102
        np.testing.assert_array_equal(pixels, np.asarray(Image.open(patch).convert("RGB")))


def test_jpeg_data_in_png_file_decodes(tmp_path):
    pixels = np.full((6, 7, 3), (10, 120, 240), np.uint8)
    path = tmp_path / "jpeg_inside.png"
    Image.fromarray(pixels).save(path, format="JPEG", quality=100)
    assert np.abs(decode_image(path, greyscale=False).astype(int) - pixels).max() <= 3


# Bad input: every error names the path or name and what was expected.


def test_missing_class_folder_is_named(tmp_path):
    write_hela(tmp_path / "manual" / "hela", np.random.default_rng(2))
    shutil.rmtree(tmp_path / "manual" / "hela" / "golgpp")
    with pytest.raises(FileNotFoundError, match=r"hela.*missing the folder\(s\) golgpp"):
        build_quietly(HelaBuilder, tmp_path / "tfds", tmp_path / "manual")


def test_empty_class_folder_is_named(tmp_path):
    write_hela(tmp_path / "manual" / "hela", np.random.default_rng(3))
    for image in (tmp_path / "manual" / "hela" / "lysosome").iterdir():
        image.unlink()
    with pytest.raises(FileNotFoundError, match=r"lysosome holds no image files"):
        build_quietly(HelaBuilder, tmp_path / "tfds", tmp_path / "manual")


def test_truncated_image_fails_the_build_naming_the_file(tmp_path):
    write_hela(tmp_path / "manual", np.random.default_rng(4))
    broken = tmp_path / "manual" / "er" / "ER_003.TIF"
    broken.write_bytes(broken.read_bytes()[:200])
    with pytest.raises(ImageDecodeError, match=r"ER_003\.TIF"):
        build_quietly(HelaBuilder, tmp_path / "tfds", tmp_path / "manual")


@pytest.mark.parametrize("content", [b"not an image at all", b""])
def test_unreadable_image_is_named(tmp_path, content):
    path = tmp_path / "broken.png"
    path.write_bytes(content)
    with pytest.raises(ImageDecodeError, match=r"broken\.png.*not a readable image"):
        decode_image(path, greyscale=False)


def test_truncated_png_is_named(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(np.arange(300, dtype=np.uint8).reshape(10, 10, 3)).save(buffer, "PNG")
    path = tmp_path / "cut.png"
    path.write_bytes(buffer.getvalue()[:-30])
    with pytest.raises(ImageDecodeError, match=r"cut\.png"):
        decode_image(path, greyscale=False)


def test_unbuilt_data_set_error_gives_the_build_command(tmp_path):
    with pytest.raises(FileNotFoundError) as error:
        load_dataset("bg", 32, data_dir=str(tmp_path))
    message = str(error.value)
    assert str(tmp_path) in message
    assert f"python -m data.build bg --manual-dir DIR_WITH_THE_ARCHIVE --data-dir {tmp_path}" in (
        message
    )


def test_cli_rejects_a_missing_manual_dir(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"--manual-dir .*nowhere"):
        main(["lar", "--manual-dir", str(tmp_path / "nowhere"), "--data-dir", str(tmp_path)])
