"""Finding class-per-folder image layouts on disk, whatever folder they were unpacked into.

Real copies of the paper's archives differ in small ways: a top ``hela/`` folder or none,
``Grade_1`` or ``Grade 1``, ``.tif`` or ``.TIF``. Folder names are therefore matched after
normalization (lower case, letters and digits only), and file extensions case-insensitively.
Anything that does not fit is an error naming the folder and what was expected; files that
are not images are reported in a warning, never dropped silently.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from pathlib import Path

from data.decode import IMAGE_EXTENSIONS, is_image_file

# How deep below the given directory a layout's root may sit (archive folder, top folder).
MAX_SEARCH_DEPTH = 4


def normalize_name(name: str) -> str:
    """``"Grade_1"``, ``"grade 1"`` and ``"GRADE1"`` all normalize to ``"grade1"``."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def subdirectories(directory: Path) -> list[Path]:
    """The visible subdirectories of ``directory``, sorted by name."""
    return sorted(
        entry for entry in directory.iterdir() if entry.is_dir() and not entry.name.startswith(".")
    )


def match_folders(directory: Path, names: Sequence[str]) -> dict[str, Path]:
    """Maps each of ``names`` to the subfolder of ``directory`` with the same normalized name.

    Names without a matching subfolder are left out; the caller decides whether that is an
    error. Two subfolders that normalize alike (``Grade_1`` and ``grade 1``) are an error.
    """
    by_normalized: dict[str, Path] = {}
    for folder in subdirectories(directory):
        key = normalize_name(folder.name)
        if key in by_normalized:
            raise ValueError(
                f"{directory}: folders {by_normalized[key].name!r} and {folder.name!r} both "
                f"match the class {key!r}; expected exactly one folder per class"
            )
        by_normalized[key] = folder
    matched = {}
    for name in names:
        folder = by_normalized.get(normalize_name(name))
        if folder is not None:
            matched[name] = folder
    return matched


def find_layout_root(search_root: Path, required_folders: Sequence[str], *, what: str) -> Path:
    """Finds the one directory at or below ``search_root`` holding all ``required_folders``.

    Args:
      search_root: where to look (a manual directory or an extracted archive).
      required_folders: folder names that must all be present (matched after normalization).
      what: the data set's name, for error messages.

    Returns:
      The directory whose subfolders include every required folder.

    Raises:
      FileNotFoundError: no such directory; the message names the closest candidate and
        the folders it lacks.
      ValueError: more than one such directory (two copies unpacked side by side).
    """
    search_root = Path(search_root)
    if not search_root.is_dir():
        raise FileNotFoundError(f"{what}: {search_root} is not a directory")
    complete: list[Path] = []
    best_partial: tuple[int, Path | None] = (0, None)
    for directory in _walk_directories(search_root):
        found = match_folders(directory, required_folders)
        if len(found) == len(required_folders):
            complete.append(directory)
        elif len(found) > best_partial[0]:
            best_partial = (len(found), directory)
    if len(complete) > 1:
        raise ValueError(
            f"{what}: found {len(complete)} copies of the data set under {search_root}: "
            f"{', '.join(map(str, complete))}; expected exactly one"
        )
    if complete:
        return complete[0]
    expected = ", ".join(required_folders)
    if best_partial[1] is not None:
        missing = [
            name for name in required_folders
            if name not in match_folders(best_partial[1], required_folders)
        ]
        raise FileNotFoundError(
            f"{what}: {best_partial[1]} is missing the folder(s) {', '.join(missing)}; "
            f"expected one folder for each of: {expected}"
        )
    raise FileNotFoundError(
        f"{what}: no folder under {search_root} holds the folders {expected} (searched "
        f"{MAX_SEARCH_DEPTH} levels deep)"
    )


def _walk_directories(root: Path):
    """Yields directories breadth-first, down to MAX_SEARCH_DEPTH levels, skipping hidden ones."""
    level = [root]
    for _ in range(MAX_SEARCH_DEPTH + 1):
        next_level = []
        for directory in level:
            yield directory
            next_level.extend(subdirectories(directory))
        level = next_level


def list_images(folder: Path, *, what: str) -> list[Path]:
    """The image files directly inside ``folder``, sorted by name.

    Files whose extension is not an image extension are named in a logged warning.

    Raises:
      FileNotFoundError: ``folder`` holds no image file.
    """
    images, others = [], []
    for entry in sorted(folder.iterdir()):
        (images if entry.is_file() and is_image_file(entry) else others).append(entry)
    if others:
        logging.warning(
            "%s: ignoring %d entries in %s that are not image files (%s): %s",
            what, len(others), folder, "/".join(IMAGE_EXTENSIONS),
            ", ".join(entry.name for entry in others),
        )
    if not images:
        raise FileNotFoundError(
            f"{what}: {folder} holds no image files; expected at least one file ending in "
            f"{', '.join(IMAGE_EXTENSIONS)} (any letter case)"
        )
    return images


def scan_class_folders(
    root: Path, class_names: Sequence[str], *, what: str
) -> list[tuple[Path, int]]:
    """Lists ``(image_path, label)`` for a ``root/<class>/<image>`` layout.

    Args:
      root: the folder holding one subfolder per class.
      class_names: the classes, in label order; each must have a (normalized-name) folder.
      what: the data set's name, for error messages.

    Returns:
      ``(path, label)`` pairs, classes in label order, files sorted by name within a class.

    Raises:
      FileNotFoundError: a class folder is missing or holds no image.
    """
    folders = match_folders(root, class_names)
    missing = [name for name in class_names if name not in folders]
    if missing:
        raise FileNotFoundError(
            f"{what}: {root} is missing the class folder(s) {', '.join(missing)}; expected "
            f"one folder for each of: {', '.join(class_names)}"
        )
    return [
        (path, label)
        for label, name in enumerate(class_names)
        for path in list_images(folders[name], what=what)
    ]


def relative_name(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` with ``/`` separators: a stable, portable file name."""
    return Path(os.path.relpath(path, root)).as_posix()
