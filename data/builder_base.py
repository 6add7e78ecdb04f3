"""The shared TFDS builder for the paper's class-per-folder image archives (HeLa, BG, LAR).

Each data set is a :class:`ClassFolderBuilder` subclass that names its classes, its archive
and, for LAR, its fold folders. Building works without TensorFlow: images are decoded with
Pillow (:mod:`data.decode`, by content), handed to ``tfds.features.Image`` as PIL images
(which TFDS encodes as PNG with Pillow) and written with ``file_format="array_record"``.
TFDS's own archive extractor needs TensorFlow, so archives are unpacked with the standard
library's ``tarfile``/``zipfile`` instead; downloads use TFDS's download manager (HTTP via
``requests``, no TensorFlow).

Where the source comes from, in order:

1. the manual directory (``DownloadConfig(manual_dir=...)``; TFDS's default is
   ``<data_dir>/downloads/manual``) when it exists and is not empty: it may hold the archive,
   its unpacked folder, or both. A layout is found at any depth up to four folders, so a top
   folder (``hela/``) is optional;
2. otherwise the archive is downloaded from the data set's published URL, its published
   checksum (where one exists) is verified, and it is unpacked.

Example:
  >>> import tensorflow_datasets as tfds
  >>> from data.hela import Builder
  >>> builder = Builder(data_dir="~/tensorflow_datasets")
  >>> builder.download_and_prepare(
  ...     file_format="array_record",
  ...     download_config=tfds.download.DownloadConfig(manual_dir="~/Downloads"))
  >>> source = builder.as_data_source(split="train")
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import logging
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from data import decode, layout

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")
DEFAULT_CONFIG_NAME = "short_side_256"


@dataclasses.dataclass
class StorageConfig(tfds.core.BuilderConfig):
    """How large the stored images are.

    Attributes:
      max_short_side: images whose shorter side exceeds this are shrunk (bicubic, aspect
        kept) so that it equals this; smaller images are stored as they are. ``None``
        stores every image at its original size.
    """

    max_short_side: int | None = 256


STORAGE_CONFIGS = (
    StorageConfig(
        name=DEFAULT_CONFIG_NAME,
        description="Images shrunk so that the shorter side is at most 256 pixels "
        "(aspect ratio kept, never enlarged).",
        max_short_side=256,
    ),
    StorageConfig(
        name="original",
        description="Images at their original size (16-bit images still mapped to 8 bits).",
        max_short_side=None,
    ),
)


class ClassFolderBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """A TFDS builder for an archive of ``<class>/<image>`` (or ``<fold>/<class>/<image>``).

    Subclasses set:
      CLASS_NAMES: the classes in label order; folder names match after normalization.
      GREYSCALE: store one channel (True) or RGB (False).
      DOWNLOAD_URL: the published archive; DOWNLOAD_EXTRACT_METHOD: how to unpack it.
      DOWNLOAD_SHA1: the published SHA-1 of the archive, or None where none is published.
      ARCHIVE_PATTERNS: glob patterns (lower case) of archive names to unpack when found
        in the manual directory.
      FOLD_FOLDERS: for data sets shipped with folds (LAR), the fold folders in fold order;
        their fold ids are 1, 2, ... and are stored in a "fold" feature.
      HOMEPAGE, MANUAL_DOWNLOAD_INSTRUCTIONS.
    """

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = list(STORAGE_CONFIGS)
    DEFAULT_BUILDER_CONFIG_NAME = DEFAULT_CONFIG_NAME

    CLASS_NAMES: tuple[str, ...] = ()
    GREYSCALE: bool = False
    DOWNLOAD_URL: str = ""
    DOWNLOAD_EXTRACT_METHOD: str = "tar"
    DOWNLOAD_SHA1: str | None = None
    ARCHIVE_PATTERNS: tuple[str, ...] = ()
    FOLD_FOLDERS: tuple[str, ...] = ()
    HOMEPAGE: str = ""

    def _info(self) -> tfds.core.DatasetInfo:
        features = {
            "image": tfds.features.Image(shape=(None, None, 1 if self.GREYSCALE else 3)),
            "label": tfds.features.ClassLabel(names=list(self.CLASS_NAMES)),
            "filename": tfds.features.Text(),
        }
        if self.FOLD_FOLDERS:
            features["fold"] = tfds.features.Scalar(
                dtype=np.int32, doc="The given fold (1-based) this image belongs to."
            )
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(features),
            supervised_keys=("image", "label"),
            homepage=self.HOMEPAGE,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        return {"train": self._generate_examples(self._source_root(dl_manager))}

    def _generate_examples(self, root: Path):
        """Yields ``(filename, example)``; the file name relative to the layout root is the key."""
        max_short_side = self.builder_config.max_short_side
        for path, label, fold in self._scan(root):
            filename = layout.relative_name(path, root)
            pixels = decode.resize_short_side(
                decode.decode_image(path, greyscale=self.GREYSCALE), max_short_side
            )
            example = {
                "image": Image.fromarray(pixels[..., 0] if self.GREYSCALE else pixels),
                "label": label,
                "filename": filename,
            }
            if self.FOLD_FOLDERS:
                example["fold"] = fold
            yield filename, example

    def _scan(self, root: Path) -> list[tuple[Path, int, int]]:
        """``(path, label, fold)`` for every image; fold is 0 for data sets without folds."""
        if not self.FOLD_FOLDERS:
            return [
                (path, label, 0)
                for path, label in layout.scan_class_folders(root, self.CLASS_NAMES, what=self.name)
            ]
        fold_folders = layout.match_folders(root, self.FOLD_FOLDERS)
        missing = [name for name in self.FOLD_FOLDERS if name not in fold_folders]
        if missing:
            raise FileNotFoundError(
                f"{self.name}: {root} is missing the fold folder(s) {', '.join(missing)}; "
                f"expected {', '.join(self.FOLD_FOLDERS)}"
            )
        return [
            (path, label, fold_id)
            for fold_id, name in enumerate(self.FOLD_FOLDERS, start=1)
            for path, label in layout.scan_class_folders(
                fold_folders[name], self.CLASS_NAMES, what=self.name
            )
        ]

    def _layout_folders(self) -> tuple[str, ...]:
        """The folders that mark the layout's root."""
        return self.FOLD_FOLDERS or self.CLASS_NAMES

    def _source_root(self, dl_manager: tfds.download.DownloadManager) -> Path:
        """The layout root: from the manual directory if given, else downloaded."""
        unpack_dir = Path(dl_manager.download_dir) / "unpacked" / self.name
        manual_dir = _manual_dir_or_none(dl_manager)
        if manual_dir is not None:
            return self._find_root(Path(manual_dir), unpack_dir)
        archive = Path(
            dl_manager.download(
                tfds.download.Resource(
                    url=self.DOWNLOAD_URL,
                    extract_method=tfds.download.ExtractMethod.NO_EXTRACT,
                )
            )
        )
        if self.DOWNLOAD_SHA1 is not None:
            verify_sha1(archive, self.DOWNLOAD_SHA1)
        unpack_archive(archive, unpack_dir / archive.name, self.DOWNLOAD_EXTRACT_METHOD)
        return self._find_root(unpack_dir, unpack_dir)

    def _find_root(self, search_root: Path, unpack_dir: Path) -> Path:
        """Finds the layout under ``search_root``, unpacking archives found there if needed."""
        try:
            return layout.find_layout_root(search_root, self._layout_folders(), what=self.name)
        except FileNotFoundError as not_found:
            archives = self._find_archives(search_root)
            if not archives:
                raise FileNotFoundError(
                    f"{not_found}\n{self.name}: no archive matching "
                    f"{', '.join(self.ARCHIVE_PATTERNS)} under {search_root} either. "
                    f"Instructions:\n{self.MANUAL_DOWNLOAD_INSTRUCTIONS}"
                ) from not_found
        for archive in archives:
            unpack_archive(archive, unpack_dir / archive.name, _extract_method(archive))
        return layout.find_layout_root(unpack_dir, self._layout_folders(), what=self.name)

    def _find_archives(self, search_root: Path) -> list[Path]:
        """Archives named like this data set's, up to two folders deep (nested archives)."""
        found = []
        for path in sorted(search_root.rglob("*")):
            depth = len(path.relative_to(search_root).parts)
            name = path.name.lower()
            if (
                depth <= 3
                and path.is_file()
                and name.endswith(ARCHIVE_SUFFIXES)
                and any(fnmatch.fnmatch(name, pattern) for pattern in self.ARCHIVE_PATTERNS)
            ):
                found.append(path)
        return found


def _manual_dir_or_none(dl_manager: tfds.download.DownloadManager) -> Path | None:
    """The manual directory, or None when it was not given, does not exist or is empty."""
    try:
        return Path(dl_manager.manual_dir)
    except AssertionError:
        # TFDS signals "no manual dir enabled" and "missing or empty" with AssertionError;
        # both mean "download instead".
        return None


def verify_sha1(path: Path, expected_sha1: str) -> None:
    """Raises ValueError unless the SHA-1 of the file at ``path`` is ``expected_sha1``."""
    digest = hashlib.sha1()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != expected_sha1.lower():
        raise ValueError(
            f"{path}: SHA-1 {digest.hexdigest()} does not match the published {expected_sha1}; "
            "the download is corrupt or the archive changed"
        )


def _extract_method(archive: Path) -> str:
    return "zip" if archive.name.lower().endswith(".zip") else "tar"


def unpack_archive(archive: Path, destination: Path, method: str) -> Path:
    """Unpacks a tar (any compression) or zip archive into ``destination`` (once).

    Args:
      archive: the archive file.
      destination: the folder to unpack into; left as is when it already holds a complete
        unpacking (marked by a ``.complete`` file).
      method: "tar" or "zip".

    Returns:
      ``destination``.
    """
    marker = destination / ".complete"
    if marker.exists():
        return destination
    destination.mkdir(parents=True, exist_ok=True)
    logging.info("Unpacking %s into %s", archive, destination)
    try:
        if method == "zip":
            with zipfile.ZipFile(archive) as zipped:
                zipped.extractall(destination)
        elif method == "tar":
            with tarfile.open(archive) as tarred:
                # The "data" filter refuses absolute paths, links out of the tree, devices.
                tarred.extractall(destination, filter="data")
        else:
            raise ValueError(f"unknown archive method {method!r}; expected 'tar' or 'zip'")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as error:
        raise ValueError(f"{archive}: cannot unpack as {method}: {error}") from error
    marker.touch()
    return destination
