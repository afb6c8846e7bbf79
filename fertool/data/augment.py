"""Training augmentation with Keras ``ImageDataGenerator`` semantics, on whole batches.

docs/protocol.md §4: rotation angle uniform in [-r, r] degrees, shifts uniform in [-f, f] x size,
zoom factors for x and y drawn independently in [1-z, 1+z], fill 'nearest', horizontal
flip with probability 0.5.  The reference code used ``ImageDataGenerator`` of TF 2.4
(keras-preprocessing 1.1.2); per image it does ``get_random_transform`` then
``apply_transform``:

* ``theta = U(-r, r)``; ``tx = U(-f, f) * H``; ``ty = U(-f, f) * W``;
  ``zx, zy = U(1-z, 1+z, 2)`` (two independent draws); ``flip = U(0,1) < 0.5``.
* ``apply_affine_transform`` composes ``M = C @ R(theta) @ T(tx, ty) @ Z(zx, zy) @ C^-1``
  with ``R = [[cos, -sin], [sin, cos]]``, ``T`` the translation by ``(tx, ty)``,
  ``Z = diag(zx, zy)`` and ``C`` the translation to Keras' centre ``(H/2 + 0.5, W/2 + 0.5)``
  (sic: half a pixel past the true centre ``(S-1)/2``, on both axes).
* Axes.  In keras-preprocessing 1.1.2 (the reference's) ``M`` acts on (row, column)
  coordinates: ``tx`` (drawn from the height range) moves along rows and ``zx`` scales
  rows.  Later Keras releases swap the axes first (``M' = P M P`` before
  ``scipy.ndimage.affine_transform``) so that ``M`` acts on (x, y) = (column, row).
  fertool implements the later, swapped convention: ``tx`` moves along columns, ``zx``
  scales columns, and a positive ``theta`` turns the content counter-clockwise as
  displayed.  For the paper's square images and symmetric ranges (``tx`` and ``ty`` from
  the same range, ``zx`` and ``zy`` independent draws from the same range, angles
  symmetric about 0) both conventions draw transforms from the same distribution; a
  single draw is not the same transform.
* ``M`` maps an OUTPUT pixel to the INPUT position it samples (``in = M @ out``): a
  zoom factor > 1 shows MORE of the image (zooms out), a positive ``tx`` moves the
  content left.
* scipy order-1 (bilinear) interpolation, fill 'nearest' (edge replication); the flip
  of the columns comes after the affine resampling.

Here the parameters of a whole batch are drawn on the CPU from an explicit generator
(CPU and CUDA runs see the same numbers), folded into one (B, 2, 3) matrix per batch
(flip included) and applied with one ``F.affine_grid`` + ``F.grid_sample`` on the
device.  Grey images replicated to three channels (stride 0, as
:class:`fertool.data.datasets.ArraySplit` makes them) are resampled once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..recipe import AugmentConfig

#: fill mode -> grid_sample padding mode (with align_corners=False, see _to_normalised).
_PADDING = {"nearest": "border", "reflect": "reflection", "constant": "border"}


@dataclass(frozen=True)
class AugmentParams:
    """Per-image Keras transform parameters of one batch, float64 on the CPU."""

    theta: torch.Tensor  # (B,) degrees
    tx: torch.Tensor  # (B,) pixels, drawn from the height range, applied to columns
    ty: torch.Tensor  # (B,) pixels, drawn from the width range, applied to rows
    zx: torch.Tensor  # (B,) column zoom factor (> 1 zooms out)
    zy: torch.Tensor  # (B,) row zoom factor
    flip: torch.Tensor  # (B,) bool, horizontal flip after the affine resampling


def keras_matrices(params: AugmentParams, height: int, width: int) -> np.ndarray:
    """Pixel-space maps output -> input, (B, 2, 3) float64, on (column, row, 1) vectors.

    ``in = C R T Z C^-1 @ out`` exactly as keras-preprocessing's
    ``apply_affine_transform`` (after its axis swap), with the horizontal flip
    ``out -> (W-1-col, row)`` applied first to the output coordinates, since the flip of
    the resampled image comes last.  Written out in closed form with numpy: a chain of
    tiny batched torch matmuls costs more than the resampling on a busy CPU.
    """
    rad = np.deg2rad(params.theta.numpy())
    cos, sin = np.cos(rad), np.sin(rad)
    zx, zy = params.zx.numpy(), params.zy.numpy()
    tx, ty = params.tx.numpy(), params.ty.numpy()
    # Keras' transform_matrix_offset_center(matrix, h, w): o_x = h/2 + 0.5, o_y = w/2 + 0.5;
    # after the axis swap o_x is the column offset and o_y the row offset.
    ox, oy = height / 2 + 0.5, width / 2 + 0.5
    a00, a01, a10, a11 = cos * zx, -sin * zy, sin * zx, cos * zy  # A = R @ Z
    # in = A @ (out - o) + R @ t + o
    b0 = ox + cos * tx - sin * ty - (a00 * ox + a01 * oy)
    b1 = oy + sin * tx + cos * ty - (a10 * ox + a11 * oy)
    # flip of the output columns: col = -col' + (W - 1)
    f = np.where(params.flip.numpy(), -1.0, 1.0)
    fo = np.where(params.flip.numpy(), width - 1.0, 0.0)
    matrix = np.empty((len(rad), 2, 3))
    matrix[:, 0] = np.stack([a00 * f, a01, a00 * fo + b0], axis=1)
    matrix[:, 1] = np.stack([a10 * f, a11, a10 * fo + b1], axis=1)
    return matrix  # (B, 2, 3)


def _to_normalised(matrix: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pixel map (B, 2, 3) -> normalised map (B, 2, 3) for grid_sample(align_corners=False).

    With align_corners=False grid_sample reads pixel ``p = (S/2) n + (S-1)/2`` at the
    normalised coordinate ``n``; its 'reflection' padding then reflects about the pixel
    edges (-0.5, S-0.5), which is scipy's 'reflect', and 'border' clamps to [0, S-1],
    which is scipy's 'nearest' at order 1.
    """
    scale = np.array([width / 2, height / 2])  # D
    shift = np.array([(width - 1) / 2, (height - 1) / 2])  # d
    lin, trans = matrix[:, :, :2], matrix[:, :, 2]  # (B, 2, 2), (B, 2)
    out = np.empty_like(matrix)
    out[:, :, :2] = lin * scale[None, None, :] / scale[None, :, None]  # D^-1 M D
    out[:, :, 2] = (lin @ shift + trans - shift) / scale  # D^-1 (M d + m - d)
    return out


def _affine_grid(theta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``F.affine_grid(theta, (B, C, H, W), align_corners=False)`` written out: faster on the CPU.

    theta (B, 2, 3) -> grid (B, H, W, 2) of normalised (x, y) = theta @ (x_n, y_n, 1),
    computed as one broadcast multiply-add instead of a batched matmul over a
    (B, H*W, 3) base grid.
    """
    kw = {"dtype": theta.dtype, "device": theta.device}
    xs = (torch.arange(width, **kw) * 2 + 1) / width - 1  # (W,) pixel centres
    ys = (torch.arange(height, **kw) * 2 + 1) / height - 1  # (H,)
    cols = theta.transpose(1, 2)  # (B, 3, 2): columns for x_n, y_n, 1
    inner = cols[:, None, None, 2, :] + cols[:, None, None, 1, :] * ys[None, :, None, None]  # (B, H, 1, 2)
    return torch.addcmul(inner, cols[:, None, None, 0, :], xs[None, None, :, None])  # (B, H, W, 2)


class KerasAugment:
    """Random Keras-style rotation / shift / zoom / flip of a batch (docs/protocol.md §4).

    ``aug(x, generator)`` takes float (B, C, H, W) on any device and a CPU
    ``torch.Generator``; it returns the augmented batch, same shape, dtype and device.
    Every call draws six numbers per image from ``generator`` whatever the
    configuration, so the random stream does not depend on which transforms are on.
    """

    def __init__(self, cfg: AugmentConfig):
        self.cfg = cfg
        self.fill = cfg.fill

    @property
    def geometric(self) -> bool:
        """True when rotation, shift or zoom needs a resampling of every image."""
        return self.cfg.rotation > 0 or self.cfg.shift > 0 or self.cfg.zoom > 0

    @property
    def active(self) -> bool:
        """False when the augmentation would return its input unchanged."""
        return self.geometric or self.cfg.flip

    def sample(self, batch: int, height: int, width: int, generator: torch.Generator | None) -> AugmentParams:
        """Draw the Keras ``get_random_transform`` parameters of ``batch`` images.

        ``shift`` is always a fraction of the size (Keras would read a value >= 1 as
        pixels; the recipe limits it to [0, 1]).
        """
        u = torch.rand(batch, 6, generator=generator, dtype=torch.float64)  # (B, 6) on the CPU
        cfg = self.cfg
        zeros = torch.zeros(batch, dtype=torch.float64)
        ones = torch.ones(batch, dtype=torch.float64)
        theta = (2 * u[:, 0] - 1) * cfg.rotation if cfg.rotation else zeros
        tx = (2 * u[:, 1] - 1) * cfg.shift * height if cfg.shift else zeros
        ty = (2 * u[:, 2] - 1) * cfg.shift * width if cfg.shift else zeros
        if cfg.zoom:  # np.random.uniform(1 - z, 1 + z, 2): zx and zy independent
            zx = (1 - cfg.zoom) + 2 * cfg.zoom * u[:, 3]
            zy = (1 - cfg.zoom) + 2 * cfg.zoom * u[:, 4]
        else:
            zx, zy = ones, ones
        flip = (u[:, 5] < 0.5) if cfg.flip else torch.zeros(batch, dtype=torch.bool)
        return AugmentParams(theta=theta, tx=tx, ty=ty, zx=zx, zy=zy, flip=flip)

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if x.ndim != 4:
            raise ValueError(f"KerasAugment expects (B, C, H, W), got shape {tuple(x.shape)}")
        params = self.sample(x.shape[0], x.shape[2], x.shape[3], generator)
        return self.apply(x, params)

    def apply(self, x: torch.Tensor, params: AugmentParams) -> torch.Tensor:
        """Apply given parameters to ``x`` (B, C, H, W)."""
        if not self.active:
            return x
        _, c, h, w = x.shape
        # Grey replicated to C channels with stride 0: resample one plane, expand after.
        shared = c > 1 and x.stride(1) == 0
        plane = x[:, :1] if shared else x  # (B, C', H, W)

        if not self.geometric:  # flip only: no resampling
            flip = params.flip.to(x.device)[:, None, None, None]  # (B, 1, 1, 1)
            out = torch.where(flip, plane.flip(-1), plane)
        else:
            theta = _to_normalised(keras_matrices(params, h, w), h, w)  # (B, 2, 3) float64 numpy
            theta = torch.from_numpy(theta).to(device=x.device, dtype=x.dtype)
            grid = _affine_grid(theta, h, w)  # (B, H, W, 2)
            out = F.grid_sample(plane, grid, mode="bilinear", padding_mode=_PADDING[self.fill], align_corners=False)
            if self.fill == "constant":  # scipy 'constant': cval 0 outside [0, S-1], no blending
                col = (grid[..., 0] + 1) * (w / 2) - 0.5  # (B, H, W) input column of each output pixel
                row = (grid[..., 1] + 1) * (h / 2) - 0.5
                eps = 1e-3
                inside = (col >= -eps) & (col <= w - 1 + eps) & (row >= -eps) & (row <= h - 1 + eps)
                out = out * inside[:, None].to(out.dtype)
        return out.expand(-1, c, -1, -1) if shared else out

    def __repr__(self) -> str:
        cfg = self.cfg
        return (
            f"KerasAugment(rotation={cfg.rotation}, shift={cfg.shift}, zoom={cfg.zoom}, "
            f"flip={cfg.flip}, fill={cfg.fill!r})"
        )


__all__ = ["AugmentParams", "KerasAugment", "keras_matrices"]
