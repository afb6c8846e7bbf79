"""Deterministic test-time augmentation of the reference code (docs/protocol.md §5).

A preset (``recipe.tta.presets[name]``) is a list of passes; each pass is a product grid
zoom -> rotation -> shift_h -> shift_v -> flip (flip innermost), the reference's loop
order, with the identity combination skipped.  The paper preset gives 53 + 6 = 59 views;
the un-augmented prediction weighs 3, every view 1, and the average divides by 62.

Each view is applied to a batch already on the device, as separate resamplings in the
reference's order: flip -> zoom (central crop, TF bilinear resize back) -> translate ->
rotate.  Translate and rotate follow the float32 projective-transform formula of
docs/protocol.md §5 (TF ``ImageProjectiveTransformV3``, bilinear, fill 'nearest')
step by step, so the views are bit-identical to the reference on CPU.  The per-pixel
source indices and weights of a transform are computed once per (view, size, device) on
the CPU in float32 and cached; applying a view is then four gathers and a few
element-wise operations over the whole batch.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from ..data.resize import resize_bilinear
from ..recipe import TTAPreset

__all__ = ["View", "tta_plan", "tta_divisor", "apply_view", "projective_transform"]


@dataclass(frozen=True)
class View:
    """One TTA view: parameters of ``augment`` in the reference code (docs/protocol.md §5).

    ``shift_h`` / ``shift_v`` are pixels at the input size (already scaled from the
    preset's ``reference_size``); ``rotation`` is in radians, positive = counter-clockwise.
    """

    zoom: float = 1.0
    rotation: float = 0.0
    shift_h: float = 0.0
    shift_v: float = 0.0
    flip: bool = False
    weight: float = 1.0

    @property
    def is_identity(self) -> bool:
        return (
            not self.flip
            and not (0.0 < self.zoom < 1.0)
            and self.rotation == 0.0
            and self.shift_h == 0.0
            and self.shift_v == 0.0
        )

    def params(self) -> tuple[float, float, float, float, float]:
        """``[zoom, rot, shift_h, shift_v, flip]``, the layout of ``tta_views.npz['params']``."""
        return (self.zoom, self.rotation, self.shift_h, self.shift_v, float(self.flip))


def tta_plan(preset: TTAPreset, size: int) -> list[View]:
    """The views of ``preset`` for inputs of ``size`` pixels, in the reference's order.

    Shifts scale by ``size / preset.reference_size`` so that a preset written for 224
    pixels moves the content by the same fraction of a smaller input.
    """
    scale = size / preset.reference_size
    views = []
    for tta_pass in preset.passes:
        grid = itertools.product(tta_pass.zoom, tta_pass.rotation, tta_pass.shift_h, tta_pass.shift_v, tta_pass.flip)
        for zoom, rot, sh, sv, flip in grid:
            view = View(float(zoom), float(rot), float(sh) * scale, float(sv) * scale, bool(flip), 1.0)
            if not view.is_identity:
                views.append(view)
    return views


def tta_divisor(preset: TTAPreset, views: list[View]) -> float:
    """Identity weight plus the views' weights (paper: 3 + 59 = 62)."""
    return float(preset.identity_weight) + sum(v.weight for v in views)


# --------------------------------------------------------------------------- transforms


def projective_transform(kind: str, value: tuple[float, float], height: int, width: int) -> np.ndarray:
    """The 8 float32 transform coefficients (output -> input) TF uses for a view step.

    ``kind="translate"``, ``value=(dx, dy)``: ``[1, 0, -dx, 0, 1, -dy, 0, 0]``
    (``tfa.image.translate``).  ``kind="rotate"``, ``value=(angle, _)``: the
    ``tfa.image.rotate`` transform about the image centre, computed in float32.
    """
    f32 = np.float32
    if kind == "translate":
        dx, dy = (f32(v) for v in value)
        return np.array([1, 0, -dx, 0, 1, -dy, 0, 0], dtype=f32)
    if kind == "rotate":
        angle = f32(value[0])
        c, s = f32(np.cos(angle)), f32(np.sin(angle))
        w1, h1 = f32(width - 1), f32(height - 1)
        x_off = (w1 - (c * w1 - s * h1)) / f32(2)
        y_off = (h1 - (s * w1 + c * h1)) / f32(2)
        return np.array([c, -s, x_off, s, c, y_off, 0, 0], dtype=f32)
    raise ValueError(f"unknown transform kind {kind!r}")


@dataclass(frozen=True)
class _Sampler:
    """Flat (H*W,) gather indices of the 4 neighbours and the 4 float32 weights.

    ``exact`` marks a transform whose weights are all 1 on the (x0, y0) neighbour and 0
    elsewhere (e.g. an integer translation): the bilinear formula then returns that
    neighbour exactly, so one gather replaces it.
    """

    i00: torch.Tensor
    i01: torch.Tensor
    i10: torch.Tensor
    i11: torch.Tensor
    wx0: torch.Tensor
    wx1: torch.Tensor
    wy0: torch.Tensor
    wy1: torch.Tensor
    exact: bool


@lru_cache(maxsize=512)
def _sampler(kind: str, value: tuple[float, float], height: int, width: int, flip: bool, device: str) -> _Sampler:
    """Reference README §3 formula, evaluated once in float32 on the CPU.

    ``flip`` folds a preceding ``flip_left_right`` into the gather indices (a flip only
    moves pixels, so reading column ``W-1-x`` of the unflipped image is the same value).
    """
    a = torch.from_numpy(projective_transform(kind, value, height, width))
    ys, xs = torch.meshgrid(
        torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32), indexing="ij"
    )  # (H, W) output row / column
    # float32, left to right as the TF kernel: a0*x + a1*y + a2 (projection row is 0, 0 -> divide by 1)
    ix = a[0] * xs + a[1] * ys + a[2]
    iy = a[3] * xs + a[4] * ys + a[5]
    xc = ix.clamp(0, width - 1)  # fill 'nearest' = clamp the coordinate
    yc = iy.clamp(0, height - 1)
    x0, y0 = torch.floor(xc), torch.floor(yc)
    x1, y1 = x0 + 1, y0 + 1
    wx0, wx1 = x1 - xc, xc - x0
    wy0, wy1 = y1 - yc, yc - y0
    # A neighbour outside the image reads 0 with weight 0: clamping its index reads a finite
    # pixel instead, which the zero weight cancels exactly.
    x0i, y0i = x0.long(), y0.long()
    x1i, y1i = (x0i + 1).clamp(max=width - 1), (y0i + 1).clamp(max=height - 1)
    if flip:
        x0i, x1i = width - 1 - x0i, width - 1 - x1i
    flat = lambda yy, xx: (yy * width + xx).reshape(-1)  # noqa: E731  (H*W,) flat gather index
    exact = bool((wx1 == 0).all() and (wy1 == 0).all())
    dev = torch.device(device)
    return _Sampler(
        *(t.to(dev) for t in (flat(y0i, x0i), flat(y0i, x1i), flat(y1i, x0i), flat(y1i, x1i))),
        *(t.to(dev) for t in (wx0, wx1, wy0, wy1)),
        exact=exact,
    )


def _resample(x: torch.Tensor, sampler: _Sampler) -> torch.Tensor:
    """Bilinear gather of (B, C, H, W) with the exact arithmetic order of the reference."""
    b, c, h, w = x.shape
    flat = x.reshape(b, c, h * w)  # (B, C, H*W)
    take = lambda idx: flat.index_select(2, idx).view(b, c, h, w)  # noqa: E731
    s = sampler
    if s.exact:  # 1 * I[y0, x0] + 0 * (...) == I[y0, x0] for finite pixels
        return take(s.i00)
    v0 = s.wx0 * take(s.i00) + s.wx1 * take(s.i01)  # (B, C, H, W)
    v1 = s.wx0 * take(s.i10) + s.wx1 * take(s.i11)
    return s.wy0 * v0 + s.wy1 * v1


def _central_crop_zoom(x: torch.Tensor, zoom: float) -> torch.Tensor:
    """``tf.image.central_crop(zoom)`` then bilinear resize back to (H, W), TF-exact."""
    h, w = x.shape[-2:]
    top = int((h - h * zoom) / 2)  # float64 then truncation, as central_crop
    left = int((w - w * zoom) / 2)
    crop = x[..., top : h - top, left : w - left]
    return resize_bilinear(crop, (h, w))


def apply_view(x: torch.Tensor, view: View) -> torch.Tensor:
    """Apply one view to a float32 batch (B, C, H, W): flip -> zoom -> translate -> rotate.

    Each step is a separate resampling, as in the reference's ``augment`` (docs/protocol.md §5); the
    flip is folded into the next gather when there is one.  A batch whose channels are
    one plane expanded (grey images, stride 0 on C) is transformed once per image and
    returned expanded the same way.
    """
    if x.ndim != 4:
        raise ValueError(f"apply_view expects (B, C, H, W), got shape {tuple(x.shape)}")
    channels = x.shape[1]
    if channels > 1 and x.stride(1) == 0:  # (B, 1, H, W) expanded: compute one plane
        return apply_view(x[:, :1], view).expand(-1, channels, -1, -1)
    x = x.to(torch.float32)
    h, w = x.shape[-2:]
    device = str(x.device)
    zoom = 0.0 < view.zoom < 1.0
    translate = view.shift_h != 0.0 or view.shift_v != 0.0
    rotate = view.rotation != 0.0
    flip = view.flip
    if flip and (zoom or not (translate or rotate)):
        x = x.flip(-1)  # flip_left_right: the width axis
        flip = False
    if zoom:
        x = _central_crop_zoom(x, view.zoom)
    if translate:
        x = _resample(x, _sampler("translate", (view.shift_h, view.shift_v), h, w, flip, device))
        flip = False
    if rotate:
        x = _resample(x, _sampler("rotate", (view.rotation, 0.0), h, w, flip, device))
    return x.contiguous()
