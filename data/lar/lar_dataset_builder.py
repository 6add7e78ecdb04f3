"""TFDS builder for the Laryngeal (LAR) data set, Zenodo record 1003200."""

from __future__ import annotations

from data.builder_base import ClassFolderBuilder

ZENODO_RECORD = "1003200"
ARCHIVE_NAME = "laryngeal dataset.tar"


class Builder(ClassFolderBuilder):
    """LAR: 1320 RGB narrow-band endoscopy patches (about 100x100) in 4 classes, 3 folds.

    The archive ships three folds, ``FOLD 1..3``, each with the four class folders; the
    fold (1, 2 or 3) is stored per example in the ``fold`` feature. Some ``.png`` files
    hold JPEG data: images are decoded by content.
    """

    CLASS_NAMES = ("He", "Hbv", "IPCL", "Le")
    FOLD_FOLDERS = ("FOLD 1", "FOLD 2", "FOLD 3")
    GREYSCALE = False
    DOWNLOAD_URL = (
        f"https://zenodo.org/records/{ZENODO_RECORD}/files/laryngeal%20dataset.tar?download=1"
    )
    DOWNLOAD_EXTRACT_METHOD = "tar"
    DOWNLOAD_SHA1 = None
    ARCHIVE_PATTERNS = ("*laryngeal*", f"*{ZENODO_RECORD}*")
    HOMEPAGE = f"https://zenodo.org/records/{ZENODO_RECORD}"
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Download "{ARCHIVE_NAME}" from Zenodo record {ZENODO_RECORD} ({HOMEPAGE}) and put it,
or the folder it unpacks to, into the manual directory (default
<data_dir>/downloads/manual, or `--manual-dir DIR` of `python -m data.build lar`):
  DIR/{ARCHIVE_NAME}
  DIR/laryngeal dataset/FOLD 1/He/*.png ... FOLD 3/Le/*.png
Each of FOLD 1, FOLD 2, FOLD 3 must hold the class folders {", ".join(CLASS_NAMES)}.
"""
