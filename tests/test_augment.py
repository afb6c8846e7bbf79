"""KerasAugment against an independent numpy + scipy re-statement of Keras' code.

``keras_apply_affine_transform`` below follows keras-preprocessing 1.1.2
(``affine_transformations.apply_affine_transform`` + ``transform_matrix_offset_center``,
the version TF 2.4 used) line by line, with ``scipy.ndimage.affine_transform``; the
geometric tests also check hand-computed pixel positions.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from fertool.data.augment import AugmentParams, KerasAugment
from fertool.recipe import AugmentConfig

# --------------------------------------------------------------------------- reference


def keras_transform_matrix_offset_center(matrix, x, y):
    o_x = float(x) / 2 + 0.5
    o_y = float(y) / 2 + 0.5
    offset_matrix = np.array([[1, 0, o_x], [0, 1, o_y], [0, 0, 1]])
    reset_matrix = np.array([[1, 0, -o_x], [0, 1, -o_y], [0, 0, 1]])
    return np.dot(np.dot(offset_matrix, matrix), reset_matrix)


def keras_apply_affine_transform(x, theta=0, tx=0, ty=0, zx=1, zy=1, fill_mode="nearest", cval=0.0):
    """x: (H, W, C) like Keras channels_last (row_axis=0, col_axis=1, channel_axis=2)."""
    row_axis, col_axis, channel_axis = 0, 1, 2
    transform_matrix = None
    if theta != 0:
        theta = np.deg2rad(theta)
        transform_matrix = np.array([[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]])
    if tx != 0 or ty != 0:
        shift_matrix = np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1]])
        transform_matrix = shift_matrix if transform_matrix is None else np.dot(transform_matrix, shift_matrix)
    if zx != 1 or zy != 1:
        zoom_matrix = np.array([[zx, 0, 0], [0, zy, 0], [0, 0, 1]])
        transform_matrix = zoom_matrix if transform_matrix is None else np.dot(transform_matrix, zoom_matrix)
    if transform_matrix is not None:
        h, w = x.shape[row_axis], x.shape[col_axis]
        transform_matrix = keras_transform_matrix_offset_center(transform_matrix, h, w)
        x = np.rollaxis(x, channel_axis, 0)
        if col_axis > row_axis:  # the x/y swap of keras-preprocessing >= 1.1.1
            transform_matrix[:, [0, 1]] = transform_matrix[:, [1, 0]]
            transform_matrix[[0, 1]] = transform_matrix[[1, 0]]
        final_affine_matrix = transform_matrix[:2, :2]
        final_offset = transform_matrix[:2, 2]
        channel_images = [
            ndimage.affine_transform(ch, final_affine_matrix, final_offset, order=1, mode=fill_mode, cval=cval)
            for ch in x
        ]
        x = np.stack(channel_images, axis=0)
        x = np.rollaxis(x, 0, channel_axis + 1)
    return x


def keras_apply_transform(x_hwc, p: dict, fill_mode="nearest"):
    """ImageDataGenerator.apply_transform: affine, then horizontal flip of the columns."""
    out = keras_apply_affine_transform(x_hwc, p["theta"], p["tx"], p["ty"], p["zx"], p["zy"], fill_mode=fill_mode)
    if p["flip"]:
        out = out[:, ::-1]
    return out


def params_of(**kw) -> AugmentParams:
    b = max(len(np.atleast_1d(v)) for v in kw.values()) if kw else 1
    full = {"theta": 0.0, "tx": 0.0, "ty": 0.0, "zx": 1.0, "zy": 1.0, "flip": False}
    full.update(kw)

    def col(v, dtype):
        return torch.as_tensor(np.broadcast_to(np.asarray(v), (b,)).copy(), dtype=dtype)

    return AugmentParams(
        theta=col(full["theta"], torch.float64),
        tx=col(full["tx"], torch.float64),
        ty=col(full["ty"], torch.float64),
        zx=col(full["zx"], torch.float64),
        zy=col(full["zy"], torch.float64),
        flip=col(full["flip"], torch.bool),
    )


def full_aug(fill="nearest") -> KerasAugment:
    return KerasAugment(AugmentConfig(rotation=30, shift=0.2, zoom=0.2, flip=True, fill=fill))


# --------------------------------------------------------------------------- geometry


def test_rotation_90_moves_marked_pixel_counter_clockwise():
    # 5x5: Keras rotates about (h/2 + 0.5, w/2 + 0.5) = (3, 3), not the true centre (2, 2).
    img = torch.zeros(1, 1, 5, 5, dtype=torch.float64)
    img[0, 0, 4, 3] = 100.0  # one below the rotation centre
    out = KerasAugment(AugmentConfig(rotation=90)).apply(img, params_of(theta=90.0))
    # output (row 3, col 4) samples input (col, row) = (3, 3) + R(90) @ (1, 0) = (3, 4)
    assert out[0, 0, 3, 4].item() == pytest.approx(100.0, abs=1e-9)
    assert out.sum().item() == pytest.approx(100.0, abs=1e-9)  # the mark moved right of centre: CCW


def test_shift_moves_content_left_and_up():
    img = torch.zeros(1, 1, 9, 9, dtype=torch.float64)
    img[0, 0, 6, 6] = 50.0
    out = KerasAugment(AugmentConfig(shift=0.5)).apply(img, params_of(tx=2.0, ty=1.0))
    # in = out + (tx, ty) in (col, row): content moves 2 columns left, 1 row up
    assert out[0, 0, 5, 4].item() == pytest.approx(50.0, abs=1e-9)
    assert out.sum().item() == pytest.approx(50.0, abs=1e-9)


def test_zoom_above_one_shows_more_of_the_image():
    # A 9x9 image with the column index as value; centre column for Keras is 9/2 + 0.5 = 5.
    img = torch.arange(9, dtype=torch.float64).repeat(9, 1)[None, None]  # (1, 1, 9, 9)
    aug = KerasAugment(AugmentConfig(zoom=0.5))
    out = aug.apply(img, params_of(zx=1.5, zy=1.0))  # in_col = 5 + 1.5 (col - 5), clamped to [0, 8]
    expected = np.clip(5 + 1.5 * (np.arange(9) - 5), 0, 8)
    np.testing.assert_allclose(out[0, 0, 4].numpy(), expected, atol=1e-9)
    np.testing.assert_allclose(out[0, 0].numpy(), out[0, 0, :1].numpy().repeat(9, 0), atol=1e-9)  # rows untouched


def test_flip_only_is_exact_and_needs_no_resampling():
    x = torch.rand(4, 3, 6, 7) * 255
    aug = KerasAugment(AugmentConfig(flip=True))
    flips = torch.tensor([True, False, True, False])
    out = aug.apply(x, params_of(flip=flips.numpy()))
    assert torch.equal(out[0], x[0].flip(-1)) and torch.equal(out[1], x[1])
    assert torch.equal(out[2], x[2].flip(-1)) and torch.equal(out[3], x[3])


def test_inactive_returns_input():
    aug = KerasAugment(AugmentConfig())
    x = torch.rand(2, 3, 5, 5)
    assert not aug.active
    assert aug(x, torch.Generator().manual_seed(0)) is x


@pytest.mark.parametrize("fill", ["nearest", "reflect", "constant"])
def test_matches_keras_scipy_reference(fill):
    gen = torch.Generator().manual_seed(3)
    aug = full_aug(fill)
    x = torch.rand(6, 3, 20, 20, dtype=torch.float64, generator=gen) * 255  # sharp random texture
    params = aug.sample(6, 20, 20, gen)
    out = aug.apply(x, params)
    for i in range(6):
        p = {k: getattr(params, k)[i].item() for k in ("theta", "tx", "ty", "zx", "zy", "flip")}
        ref = keras_apply_transform(x[i].permute(1, 2, 0).numpy(), p, fill_mode=fill)  # (H, W, C)
        got = out[i].permute(1, 2, 0).numpy()
        if fill == "constant":  # pixels within 1e-6 px of the edge may differ in the 0/edge choice
            ok = np.isclose(got, ref, atol=1e-6)
            assert ok.mean() > 0.995, (i, p)
        else:
            np.testing.assert_allclose(got, ref, atol=1e-6, err_msg=str(p))


def test_float32_224_grey_batch_matches_reference():
    # The training case: float32 grey replicated to 3 channels (stride 0), 224x224.
    gen = torch.Generator().manual_seed(11)
    yy, xx = np.mgrid[0:224, 0:224]
    smooth = 127.5 + 100 * np.sin(xx / 9.0) * np.cos(yy / 13.0)  # resampling error stays tiny
    x = torch.from_numpy(np.stack([smooth, smooth[::-1].copy()])).float()[:, None].expand(-1, 3, -1, -1)
    aug = KerasAugment(AugmentConfig(rotation=10, shift=0.1, zoom=0.1, flip=True))
    params = aug.sample(2, 224, 224, gen)
    out = aug.apply(x, params)
    assert out.shape == (2, 3, 224, 224) and out.dtype == torch.float32
    for i in range(2):
        p = {k: getattr(params, k)[i].item() for k in ("theta", "tx", "ty", "zx", "zy", "flip")}
        ref = keras_apply_transform(x[i, :1].permute(1, 2, 0).double().numpy(), p)[..., 0]
        for ch in range(3):
            np.testing.assert_allclose(out[i, ch].numpy(), ref, atol=1e-3)


# --------------------------------------------------------------------------- distributions


def test_parameter_distributions():
    aug = KerasAugment(AugmentConfig(rotation=10, shift=0.1, zoom=0.1, flip=True))
    n = 20000
    p = aug.sample(n, 224, 200, torch.Generator().manual_seed(0))
    assert p.theta.min() >= -10 and p.theta.max() <= 10
    assert p.theta.min() < -9.9 and p.theta.max() > 9.9  # covers the range
    assert abs(p.theta.mean().item()) < 0.2 and p.theta.std().item() == pytest.approx(20 / 12**0.5, rel=0.03)
    assert p.tx.abs().max() <= 22.4 and p.tx.abs().max() > 22.3  # height range x H = 224
    assert p.ty.abs().max() <= 20.0 and p.ty.abs().max() > 19.9  # width range x W = 200
    for z in (p.zx, p.zy):
        assert z.min() >= 0.9 and z.max() <= 1.1 and z.min() < 0.901 and z.max() > 1.099
    corr = np.corrcoef(p.zx.numpy(), p.zy.numpy())[0, 1]
    assert abs(corr) < 0.03  # zx, zy drawn independently
    assert p.zx.sub(p.zy).abs().max() > 0.15
    assert p.flip.float().mean().item() == pytest.approx(0.5, abs=0.015)
    for a, b in [(p.theta, p.tx), (p.tx, p.ty), (p.theta, p.zx)]:
        assert abs(np.corrcoef(a.numpy(), b.numpy())[0, 1]) < 0.03


def test_disabled_parameters_are_identity():
    p = KerasAugment(AugmentConfig(rotation=5)).sample(100, 10, 10, torch.Generator().manual_seed(0))
    assert torch.all(p.tx == 0) and torch.all(p.ty == 0) and torch.all(p.zx == 1) and torch.all(p.zy == 1)
    assert not p.flip.any() and p.theta.abs().max() > 0


def test_same_seed_same_output_and_device_independent_draws():
    aug = KerasAugment(AugmentConfig(rotation=10, shift=0.1, zoom=0.1, flip=True))
    x = torch.rand(5, 3, 16, 16) * 255
    a = aug(x, torch.Generator().manual_seed(7))
    b = aug(x, torch.Generator().manual_seed(7))
    c = aug(x, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    if torch.cuda.is_available():
        d = aug(x.cuda(), torch.Generator().manual_seed(7))
        torch.testing.assert_close(d.cpu(), a, atol=1e-2, rtol=0)


def test_shared_grey_channels_stay_shared():
    aug = full_aug()
    grey = torch.rand(3, 1, 12, 12) * 255
    x = grey.expand(-1, 3, -1, -1)
    out = aug(x, torch.Generator().manual_seed(1))
    full = aug(x.contiguous(), torch.Generator().manual_seed(1))
    assert out.stride(1) == 0  # resampled once
    torch.testing.assert_close(out, full, atol=1e-4, rtol=0)


def test_fast_affine_grid_matches_torch():
    from fertool.data.augment import _affine_grid

    theta = torch.randn(3, 2, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    expected = torch.nn.functional.affine_grid(theta, [3, 1, 7, 9], align_corners=False)
    torch.testing.assert_close(_affine_grid(theta, 7, 9), expected, atol=1e-12, rtol=0)
