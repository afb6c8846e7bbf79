"""Decoding untrusted image files with a pixel cap checked before anything is allocated.

OpenCV decodes whatever a header claims: a 20000x20000 PNG of a few kilobytes becomes
1.2 GB of BGR pixels, and past OpenCV's own limit an image is merely "not decodable".
:func:`decode_image` reads the width and height from the header first (Pillow opens
lazily, without decoding) and refuses, stating the cap, an image larger than
:data:`MAX_IMAGE_PIXELS`.

No torch import: ``prepare`` uses this module.
"""

from __future__ import annotations

import io
import os
import threading
import warnings

import cv2
import numpy as np

from .errors import DataError, printable

__all__ = ["MAX_IMAGE_PIXELS", "image_size", "decode_image"]

#: The most pixels an input image may have: 100 megapixels (a 10000x10000 photo, 300 MB of
#: BGR), far above any camera's face photo and any data set's image.
MAX_IMAGE_PIXELS = 100_000_000
_pillow_guard = threading.Lock()


def image_size(data: bytes | np.ndarray) -> tuple[int, int] | None:
    """(width, height) from the image's header, None when Pillow cannot read the header."""
    from PIL import Image

    try:
        with _pillow_guard, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning: the caller caps instead
            cap, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # its bomb *error* hides the size
            try:
                with Image.open(io.BytesIO(memoryview(data))) as im:
                    return int(im.width), int(im.height)
            finally:
                Image.MAX_IMAGE_PIXELS = cap
    except Exception:  # noqa: BLE001 - any header Pillow does not understand: OpenCV decides
        return None


def decode_image(data: bytes | np.ndarray, path: str | os.PathLike, flags: int = cv2.IMREAD_COLOR) -> np.ndarray | None:
    """``cv2.imdecode`` of ``data`` (the bytes of ``path``), refused above the pixel cap.

    Returns None where OpenCV cannot decode the bytes; raises :class:`DataError` naming
    ``path``, its size and the cap for an image with too many pixels.
    """
    size = image_size(data)
    if size is not None and size[0] * size[1] > MAX_IMAGE_PIXELS:
        raise DataError(
            f"{printable(path)}: {size[0]}x{size[1]} pixels, more than the {MAX_IMAGE_PIXELS:,} an input image may have"
        )
    buf = np.frombuffer(data, np.uint8) if not isinstance(data, np.ndarray) else data
    if buf.size == 0:
        return None
    try:
        return cv2.imdecode(buf, flags)
    except cv2.error:
        return None
