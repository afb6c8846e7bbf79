"""Decoding untrusted image files with a pixel cap checked before anything is allocated.

OpenCV decodes whatever a header claims: a 20000x20000 PNG of a few kilobytes becomes
1.2 GB of BGR pixels, and past OpenCV's own limit an image is merely "not decodable".
:func:`decode_image` reads the width and height from the header first (Pillow opens
lazily, without decoding) and refuses, stating the cap, an image larger than
:data:`MAX_IMAGE_PIXELS`.

A PNG is checked by Pillow before OpenCV sees it (every chunk read and its CRC compared,
nothing decoded): libpng reports a damaged file on the process's stderr ("libpng error:
IDAT: CRC error", OpenCV's "PNG input buffer is incomplete") around fertool's own one-line
message, and no Python code can silence it safely (fd 2 is shared by every thread, Rich's
progress display among them).  A PNG that fails the check is "not decodable" without
being decoded.  What the check cannot see: a file whose CRCs were recomputed over damaged
compressed data (made so on purpose); libpng still speaks for that one.

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


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _damaged_png(data: bytes | np.ndarray) -> bool:
    """Whether ``data`` is a PNG whose chunk structure or CRCs are broken (Pillow's ``verify``:
    reads every chunk up to IEND and checks its CRC, decodes nothing)."""
    view = memoryview(data).cast("B")
    if bytes(view[:8]) != _PNG_SIGNATURE:
        return False
    from PIL import Image

    try:
        with _pillow_guard, warnings.catch_warnings():  # the guard only while the global cap is lifted
            warnings.simplefilter("ignore")
            cap, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # the pixel cap is decode_image's
            try:
                im = Image.open(io.BytesIO(view))
            finally:
                Image.MAX_IMAGE_PIXELS = cap
        with im:
            im.verify()  # the CRCs of a large file: outside the lock, other threads keep decoding
    except Exception:  # noqa: BLE001 - truncated, bad CRC, broken chunk: all of them "damaged"
        return True
    return False


def decode_image(data: bytes | np.ndarray, path: str | os.PathLike, flags: int = cv2.IMREAD_COLOR) -> np.ndarray | None:
    """``cv2.imdecode`` of ``data`` (the bytes of ``path``), refused above the pixel cap.

    Returns None where OpenCV cannot decode the bytes or a PNG is damaged (checked before
    OpenCV sees it: see the module docstring); raises :class:`DataError` naming
    ``path``, its size and the cap for an image with too many pixels.
    """
    size = image_size(data)
    if size is not None and size[0] * size[1] > MAX_IMAGE_PIXELS:
        raise DataError(
            f"{printable(path)}: {size[0]}x{size[1]} pixels, more than the {MAX_IMAGE_PIXELS:,} an input image may have"
        )
    buf = np.frombuffer(data, np.uint8) if not isinstance(data, np.ndarray) else data
    if buf.size == 0 or _damaged_png(buf):
        return None
    try:
        return cv2.imdecode(buf, flags)
    except cv2.error:
        return None
