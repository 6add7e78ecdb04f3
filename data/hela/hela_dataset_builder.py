"""TFDS builder for the 2D HeLa data set of the IICBU 2008 benchmark suite."""

from __future__ import annotations

from data.builder_base import ClassFolderBuilder

ARCHIVE_NAME = "hela.tar.gz"


class Builder(ClassFolderBuilder):
    """2D HeLa: 16-bit greyscale TIFF micrographs in 10 subcellular-location classes.

    Stored as 8-bit greyscale; each image's 16-bit range is min-max stretched to 0..255 (see
    :mod:`data.decode`). File names keep their varying extension case (``actin/actin_001.tif``,
    ``dna/DNA_001.TIF``); the stored ``filename`` is relative to the class folders' parent, so
    copies with and without a top ``hela/`` folder give identical examples.
    """

    CLASS_NAMES = (
        "actin", "dna", "endosome", "er", "golgia", "golgpp", "lysosome", "microtubules",
        "mitochondria", "nucleolus",
    )
    GREYSCALE = True
    DOWNLOAD_URL = f"http://ome.grc.nia.nih.gov/iicbu2008/{ARCHIVE_NAME}"
    DOWNLOAD_EXTRACT_METHOD = "tar"
    DOWNLOAD_SHA1 = "f5b13a8efd19dee9c53ab8da5ea6c017fdfb65a2"
    ARCHIVE_PATTERNS = ("hela*",)
    HOMEPAGE = "https://ome.grc.nia.nih.gov/iicbu2008/"
    MANUAL_DOWNLOAD_INSTRUCTIONS = f"""\
Download {ARCHIVE_NAME} from {DOWNLOAD_URL} (SHA-1 {DOWNLOAD_SHA1}) and put
it, or the folder it unpacks to, into the manual directory (default
<data_dir>/downloads/manual, or `--manual-dir DIR` of `python -m data.build hela`).
Either is fine:
  DIR/{ARCHIVE_NAME}
  DIR/hela/actin/actin_001.tif ... DIR/hela/nucleolus/...   (a top folder is optional)
The folder must hold the ten class folders {", ".join(CLASS_NAMES)}
(any letter case) with the TIFF images directly inside them.
"""
