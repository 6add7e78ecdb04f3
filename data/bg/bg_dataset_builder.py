"""TFDS builder for the Breast Grading Carcinoma (BG) data set, Zenodo record 834910."""

from __future__ import annotations

from data.builder_base import ClassFolderBuilder

ZENODO_RECORD = "834910"


class Builder(ClassFolderBuilder):
    """BG: 1280x960 RGB JPEG images of invasive breast carcinoma, grades 1, 2 and 3.

    Class folders match after normalization, so ``Grade_1``, ``Grade 1`` and ``grade1`` are
    all grade 1; file extensions match in any case (``.JPG``).
    """

    CLASS_NAMES = ("grade_1", "grade_2", "grade_3")
    GREYSCALE = False
    # Zenodo's "download all files" archive of the record (a zip); archives inside it that
    # match ARCHIVE_PATTERNS are unpacked too. Zenodo publishes MD5s per file, not for this
    # generated archive, so there is no checksum to verify.
    DOWNLOAD_URL = f"https://zenodo.org/api/records/{ZENODO_RECORD}/files-archive"
    DOWNLOAD_EXTRACT_METHOD = "zip"
    DOWNLOAD_SHA1 = None
    ARCHIVE_PATTERNS = ("*breast*", "*grad*", "*bg*", f"*{ZENODO_RECORD}*", "*files-archive*")
    HOMEPAGE = f"https://zenodo.org/records/{ZENODO_RECORD}"
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Download the files of Zenodo record {ZENODO_RECORD} ({HOMEPAGE}) and put the
archive(s), or the folder they unpack to, into the manual directory (default
<data_dir>/downloads/manual, or `--manual-dir DIR` of `python -m data.build bg`).
An archive is unpacked when its name contains "breast", "grad", "bg" or
"{ZENODO_RECORD}" and ends in .zip, .tar, .tar.gz or .tgz. The unpacked layout must be
  DIR/<any folders>/Grade_1/*.JPG, Grade_2/*.JPG, Grade_3/*.JPG
(folder names match ignoring case, spaces and underscores: "Grade 1", "grade_1").
"""
