"""Image decoding and resizing shared by the TFDS builders and the folder data set.

Files are decoded by content, never by extension: Pillow identifies a file from its leading
bytes, so JPEG data in a file named ``.png`` (as in real copies of the Laryngeal data set)
decodes as JPEG. Every decoder error is re-raised as :class:`ImageDecodeError` naming the file.

Images with more than 8 bits per sample (the HeLa set's 16-bit greyscale TIFFs) are mapped
to 8 bits with a per-image min-max stretch,

.. math::

    y = \\left\\lfloor \\frac{255 (x - \\min x)}{\\max x - \\min x} + \\frac{1}{2} \\right\\rfloor,

(rounding half up; ``y = 0`` where the image is constant). A fixed shift (``x >> 8``)
would assume that the data fill all 16 bits; microscope images usually carry 12 bits or
fewer in a 16-bit container, and a shift would crush them into a few grey levels. The
stretch keeps each image's full dynamic range in the 256 levels; it discards absolute
intensity across images, which a CNN trained on per-image normalized inputs does not use.

All resizing uses Pillow's bicubic filter, which, like MATLAB's default ``imresize`` (the
paper's code is MATLAB), is bicubic and antialiased when shrinking.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image, UnidentifiedImageError

# Extensions that mark a file as an image to read; any other file in a class folder is
# reported (never silently ignored) by the callers. Matching is case-insensitive because
# real archives mix `.tif` and `.TIF`.
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif")

RESAMPLE = Image.Resampling.BICUBIC

# Pillow modes holding one channel of more than 8 bits per sample.
_HIGH_BIT_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


class ImageDecodeError(ValueError):
    """An image file that cannot be decoded (unreadable, truncated or not an image)."""


def is_image_file(path: str | os.PathLike) -> bool:
    """Returns whether ``path`` has one of :data:`IMAGE_EXTENSIONS`, in any letter case."""
    return os.fspath(path).lower().endswith(IMAGE_EXTENSIONS)


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Maps an array of any numeric dtype to uint8 with a per-image min-max stretch.

    Args:
        pixels: an image array (any shape, integer or float dtype).

    Returns:
        ``floor(255 * (pixels - min) / (max - min) + 1/2)`` as uint8; zeros for a constant
        image. For integer pixels the product is exact in float64, so the rounding is exact.
    """
    values = pixels.astype(np.float64)
    low, high = values.min(), values.max()
    if high == low:
        return np.zeros(pixels.shape, np.uint8)
    return np.floor((values - low) * 255.0 / (high - low) + 0.5).astype(np.uint8)


def decode_image(path: str | os.PathLike, *, greyscale: bool) -> np.ndarray:
    """Decodes an image file by content to a uint8 array.

    Args:
        path: the image file. Its extension is not used to choose the decoder.
        greyscale: return one channel (``[H, W, 1]``) instead of RGB (``[H, W, 3]``). A colour
            image asked for as greyscale is converted with ITU-R 601-2 luma (Pillow's "L").

    Returns:
        uint8 array ``[H, W, 1]`` or ``[H, W, 3]``. Images with more than 8 bits per sample are
        min-max stretched to 8 bits (see the module docstring); 8-bit images keep their values.

    Raises:
        ImageDecodeError: the file is missing, unreadable, not an image or truncated.
    """
    try:
        with Image.open(path) as image:
            image.load()  # Decode now: a truncated file fails here, inside the try.
            if image.mode in _HIGH_BIT_DEPTH_MODES:
                stretched = Image.fromarray(to_uint8(np.asarray(image)))
                image = stretched if greyscale else stretched.convert("RGB")
            else:
                image = image.convert("L" if greyscale else "RGB")
            pixels = np.asarray(image, dtype=np.uint8)
    except UnidentifiedImageError as error:
        raise ImageDecodeError(
            f"{os.fspath(path)!r} is not a readable image: expected PNG, JPEG, TIFF, BMP or GIF "
            f"data ({error})"
        ) from error
    except OSError as error:
        raise ImageDecodeError(
            f"{os.fspath(path)!r} could not be decoded (truncated or corrupt?): {error}"
        ) from error
    return pixels[..., None] if greyscale else pixels


def resize_short_side(pixels: np.ndarray, max_short_side: int | None) -> np.ndarray:
    """Shrinks an image so that its shorter side is at most ``max_short_side``, keeping aspect.

    Images already small enough are returned unchanged (never enlarged): the stored copy
    should lose nothing that the original had.

    Args:
        pixels: uint8 ``[H, W, C]`` with C = 1 or 3.
        max_short_side: the largest allowed shorter side; ``None`` keeps the image as it is.

    Returns:
        uint8 ``[H', W', C]`` with ``min(H', W') == min(min(H, W), max_short_side)``.
    """
    height, width = pixels.shape[:2]
    short_side = min(height, width)
    if max_short_side is None or short_side <= max_short_side:
        return pixels
    scale = max_short_side / short_side
    new_height = max_short_side if height == short_side else round(height * scale)
    new_width = max_short_side if width == short_side else round(width * scale)
    return resize_to(pixels, new_height, new_width)


def resize_to(pixels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resizes a uint8 ``[H, W, C]`` image to ``[height, width, C]`` with bicubic filtering."""
    if pixels.shape[:2] == (height, width):
        return pixels
    channels = pixels.shape[2]
    image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels)
    resized = np.asarray(image.resize((width, height), RESAMPLE), dtype=np.uint8)
    return resized[..., None] if channels == 1 else resized


def to_square_rgb(pixels: np.ndarray, size: int) -> np.ndarray:
    """Resizes the whole image to ``size x size`` (aspect not kept) and makes it RGB.

    The paper resizes every image to the network's 224x224 input the same way. Greyscale is
    replicated to three channels after resizing.

    Args:
        pixels: uint8 ``[H, W, 1]`` or ``[H, W, 3]``.
        size: the side of the square output.

    Returns:
        uint8 ``[size, size, 3]``.
    """
    resized = resize_to(pixels, size, size)
    if resized.shape[2] == 1:
        return np.repeat(resized, 3, axis=2)
    return resized
