"""Bilinear resize that reproduces TensorFlow 2 ``tf.image.resize`` bit for bit (docs/protocol.md §1).

TF's bilinear kernel uses half-pixel centres, no antialiasing, and interpolates as
``top + (bottom - top) * lerp`` in float32.  ``F.interpolate(mode="bilinear")`` computes
the same function as a weighted sum and, after the floor to uint8 that preparation
applies, comes out one grey level lower on ~0.014% of pixels.

The arithmetic is written once: :func:`source_coords` gives the source indices and
weights, and the same two interpolation steps run in NumPy (:class:`TFBilinear`, for
``fertool prepare``, block by block with reused buffers) or in torch on any device
(:func:`resize_bilinear`, for evaluation images and TTA).  torch is imported only by the
torch function: ``prepare``'s worker processes must not load it (about 520 MB each).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = ["source_coords", "TFBilinear", "resize_bilinear"]


def source_coords(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per output index: both source indices and the float32 weight, as TF computes them.

    ``src = (i + 0.5) * (in / out) - 0.5`` in float32; ``lo = floor(src)``, weight
    ``src - lo``; indices clamped to the image.
    """
    scale = np.float32(in_size) / np.float32(out_size)
    src = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    lo = np.floor(src)
    lerp = src - lo
    i0 = np.clip(lo, 0, in_size - 1).astype(np.intp)
    i1 = np.clip(lo + 1, 0, in_size - 1).astype(np.intp)
    return i0, i1, lerp


class TFBilinear:
    """The reference float32 bilinear resize in NumPy, block by block, with reused buffers.

    Per image: ``rows = left + (right - left) * xlerp`` (in_h x size), then
    ``out = top + (bottom - top) * ylerp``.  ``bottom - top`` is taken at source
    resolution (``rows[k+1] - rows[k]``, the same float32 subtraction of the same two
    values, zero where the edge is clamped) and gathered, which saves a full-size pass.
    """

    def __init__(self, in_h: int, in_w: int, size: int, block: int):
        self.x0, self.x1, self.xlerp = source_coords(in_w, size)
        y0, y1, ylerp = source_coords(in_h, size)
        self.y0 = y0
        self.dy = np.where(y1 > y0, y0, in_h - 1)  # row of `diff` holding bottom - top; in_h-1 is all zero
        self.ylerp = np.ascontiguousarray(ylerp[:, None])
        self.rows = np.empty((block, in_h, size), np.float32)
        self.right = np.empty((block, in_h, size), np.float32)
        self.diff = np.zeros((block, in_h, size), np.float32)
        self.top = np.empty((block, size, size), np.float32)
        self.delta = np.empty((block, size, size), np.float32)

    def __call__(self, grey: np.ndarray) -> np.ndarray:
        """(n <= block, H, W) -> float32 (n, size, size), a view of an internal buffer."""
        n = len(grey)
        x = grey.astype(np.float32)
        rows, right, diff = self.rows[:n], self.right[:n], self.diff[:n]
        np.take(x, self.x0, axis=2, out=rows)  # (n, H, size): left
        np.take(x, self.x1, axis=2, out=right)
        right -= rows
        right *= self.xlerp
        rows += right  # rows = left + (right - left) * xlerp
        np.subtract(rows[:, 1:], rows[:, :-1], out=diff[:, :-1])  # (n, H-1, size); last row stays 0
        top, delta = self.top[:n], self.delta[:n]
        np.take(rows, self.y0, axis=1, out=top)  # (n, size, size)
        np.take(diff, self.dy, axis=1, out=delta)  # bottom - top
        delta *= self.ylerp
        top += delta  # out = top + (bottom - top) * ylerp
        return top


def resize_bilinear(x: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Resize the last two axes of ``x`` (..., H, W) to ``size`` exactly as TF does, in torch.

    ``x`` is converted to float32; the result is float32 (..., out_h, out_w) on ``x``'s
    device.  The same two steps as :class:`TFBilinear`: along x first, then along y.
    """
    import torch  # heavy: see the module docstring

    out_h, out_w = (size, size) if isinstance(size, int) else size
    x = x.to(torch.float32)
    in_h, in_w = x.shape[-2:]
    x0, x1, xlerp = (torch.from_numpy(a).to(x.device) for a in source_coords(in_w, out_w))
    y0, y1, ylerp = (torch.from_numpy(a).to(x.device) for a in source_coords(in_h, out_h))
    left = x.index_select(-1, x0)  # (..., in_h, out_w)
    right = x.index_select(-1, x1)
    rows = left + (right - left) * xlerp  # (..., in_h, out_w)
    top = rows.index_select(-2, y0)  # (..., out_h, out_w)
    bottom = rows.index_select(-2, y1)
    return top + (bottom - top) * ylerp[:, None]
