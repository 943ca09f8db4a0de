"""Image loading and validation shared by the vision backends.

Every backend takes images in the same forms (a file path, encoded bytes, a ``PIL.Image`` or an
``(H, W)`` / ``(H, W, C)`` uint8 numpy array) and hands its model an RGB ``PIL.Image``. Anything
that cannot be used raises one :class:`selfcorrect.errors.ImageError` naming the image and the
reason: a missing or corrupt file, an empty or over-large image, an unsupported type.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from selfcorrect.errors import ImageError

# 50 megapixels: above any VLM's useful input (they resize to at most a few megapixels) and well
# below what would exhaust memory while decoding; PIL's own guard only starts at 89 megapixels.
MAX_PIXELS = 50_000_000
WHITE = (255, 255, 255)
# Modes whose samples use more than 8 bits, mapped to the scale that brings them to 0..255.
HIGH_DEPTH_SCALE = {
    "I;16": 1 / 257,
    "I;16L": 1 / 257,
    "I;16B": 1 / 257,
    "I;16N": 1 / 257,
    "I": 1 / 257,
    "F": 1.0,
}


def load_image(source, *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Load ``source`` as an RGB ``PIL.Image``.

    Args:
        source: a path (``str`` or ``os.PathLike``), encoded image bytes, a ``PIL.Image`` (any mode)
            or a uint8 numpy array of shape ``(H, W)``, ``(H, W, 1)``, ``(H, W, 3)`` or ``(H, W, 4)``.
        max_pixels: images with more pixels than this are refused rather than decoded.

    Returns:
        An RGB image. Files and bytes are decoded fully and turned upright by their EXIF
        orientation; transparent pixels are composited onto white; 16-bit and float grey images
        are scaled to 8 bits.

    Raises:
        ImageError: the file is missing or is not a readable image, the image is empty or larger
            than ``max_pixels``, or ``source`` is of an unsupported type.
    """
    if isinstance(source, Image.Image):
        _check_size(source.size, max_pixels, "image")
        return to_rgb(source)
    if isinstance(source, np.ndarray):
        return _from_array(source, max_pixels)
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _decode(io.BytesIO(bytes(source)), "image bytes", max_pixels)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        if not path.is_file():
            reason = "it is a directory" if path.is_dir() else "no such file"
            raise ImageError(f"cannot read image {str(source)!r}: {reason}")
        return _decode(path, f"image {str(source)!r}", max_pixels)
    raise ImageError(
        f"unsupported image type {type(source).__name__}: pass a file path, bytes, a PIL image "
        "or a uint8 numpy array"
    )


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB (alpha composited onto white, high bit depths scaled to 8 bits)."""
    if image.mode == "RGB":
        return image
    if image.mode in HIGH_DEPTH_SCALE:
        values = np.asarray(image, dtype=np.float32) * HIGH_DEPTH_SCALE[image.mode]
        return Image.fromarray(np.clip(values, 0, 255).round().astype(np.uint8)).convert("RGB")
    if "A" in image.getbands() or "a" in image.getbands() or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, WHITE + (255,)), rgba).convert("RGB")
    return image.convert("RGB")


def image_key(image: Image.Image) -> bytes:
    """A digest of ``image``'s mode, size and pixels: equal for equal images, whatever object holds them."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{image.mode}{image.size}".encode())
    digest.update(image.tobytes())
    return digest.digest()


def _check_size(size: tuple[int, int], max_pixels: int, name: str) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise ImageError(f"{name} is empty ({width}x{height} pixels)")
    if width * height > max_pixels:
        raise ImageError(
            f"{name} is too large: {width}x{height} = {width * height / 1e6:.1f} megapixels, "
            f"more than the limit of {max_pixels / 1e6:g}; downscale it first"
        )


def _decode(file, name: str, max_pixels: int) -> Image.Image:
    # PIL reports unreadable or truncated data as UnidentifiedImageError (an OSError), OSError,
    # SyntaxError (some plugins) or ValueError
    unreadable = (OSError, SyntaxError, ValueError)
    try:
        with warnings.catch_warnings():
            # PIL warns above 89 megapixels; our own, lower limit is checked before decoding
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(file)
    except Image.DecompressionBombError:
        raise ImageError(
            f"{name} is too large: more than the limit of {max_pixels / 1e6:g} megapixels"
        ) from None
    except unreadable as e:
        raise ImageError(f"{name} is not a readable image: {e}") from None
    _check_size(image.size, max_pixels, name)
    try:
        image.load()
    except unreadable as e:
        raise ImageError(f"{name} is not a readable image: {e}") from None
    return to_rgb(ImageOps.exif_transpose(image))


def _from_array(array: np.ndarray, max_pixels: int) -> Image.Image:
    if (
        array.dtype != np.uint8
        or array.ndim not in (2, 3)
        or (array.ndim == 3 and array.shape[2] not in (1, 3, 4))
    ):
        raise ImageError(
            f"numpy image of dtype {array.dtype} and shape {array.shape} is not supported: "
            "pass uint8 of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)"
        )
    _check_size((array.shape[1], array.shape[0]), max_pixels, "numpy image")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    return to_rgb(Image.fromarray(np.ascontiguousarray(array)))
