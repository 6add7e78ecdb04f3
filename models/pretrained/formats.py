"""Which format a weight file is in, read from its bytes (never from its name).

* safetensors: an 8-byte little-endian header length ``n``, then ``n`` bytes of JSON
  describing the tensors. Checked first and by parsing that header, because the length's
  first byte can be anything: a header of 128 mod 256 bytes starts the file with ``0x80``,
  the first byte of a pickle.
* HDF5 (Keras ``.h5``): the HDF5 signature, at offset 0 or after a user block.
* torch: ``torch.save``'s zip archive (``PK\\x03\\x04``) or its legacy pickle (``0x80``).
"""

from __future__ import annotations

import json
import os

import h5py

PathLike = str | os.PathLike

FORMATS = ("safetensors", "hdf5", "torch")
# safetensors itself refuses headers over 100 MB.
_SAFETENSORS_MAX_HEADER = 100_000_000
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def check_file(path: PathLike) -> None:
    """Raises ValueError unless ``path`` is an existing regular file."""
    if not os.path.exists(path):
        raise ValueError(f"weight file {os.fspath(path)} does not exist")
    if not os.path.isfile(path):
        raise ValueError(f"weight file {os.fspath(path)} is not a regular file")


def _is_safetensors(path: PathLike) -> bool:
    size = os.path.getsize(path)
    with open(path, "rb") as file:
        length_bytes = file.read(8)
        if len(length_bytes) < 8:
            return False
        length = int.from_bytes(length_bytes, "little")
        if not 2 <= length <= min(size - 8, _SAFETENSORS_MAX_HEADER):
            return False
        header_bytes = file.read(length)
    try:
        header = json.loads(header_bytes.decode("utf8"))
    except ValueError:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return False
    if not isinstance(header, dict):
        return False
    return all(
        isinstance(entry, dict) and {"dtype", "shape", "data_offsets"} <= entry.keys()
        for key, entry in header.items()
        if key != "__metadata__"
    )


def weight_format(path: PathLike) -> str:
    """The format of the weight file at ``path``.

    Returns:
      "safetensors", "hdf5" (Keras), "torch" (``.pth``/``.pt``) or "unknown".

    Raises:
      ValueError: ``path`` does not exist, is not a regular file, or cannot be read.
    """
    check_file(path)
    try:
        if _is_safetensors(path):
            return "safetensors"
        with open(path, "rb") as file:
            head = file.read(8)
        if head == _HDF5_SIGNATURE or h5py.is_hdf5(os.fspath(path)):
            return "hdf5"
    except OSError as error:
        raise ValueError(f"weight file {os.fspath(path)} cannot be read: {error}") from error
    if head.startswith(b"PK\x03\x04") or head.startswith(b"\x80"):
        return "torch"
    return "unknown"


def unknown_format_error(path: PathLike) -> ValueError:
    return ValueError(
        f"weight file {os.fspath(path)} is neither HDF5 (Keras .h5), safetensors nor a "
        "PyTorch file (.pth); expected ImageNet ResNet weights in one of these formats"
    )
