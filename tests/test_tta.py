"""TTA views against the original implementation (reference/tta_views.npz, docs/protocol.md §5)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fertool.evaluation.tta import View, apply_view, projective_transform, tta_divisor, tta_plan
from fertool.recipe import TTAPass, TTAPreset, load_recipe

from .conftest import load_reference


@pytest.fixture(scope="module")
def ref():
    data = load_reference("tta_views.npz")
    # tests/data holds a subset of the 60 views; view_index says which ones
    data.setdefault("view_index", np.arange(len(data["views"])))
    return data


@pytest.fixture(scope="module")
def paper():
    return load_recipe(None, ()).tta.presets["paper"]


def test_paper_plan_matches_reference_table(ref, paper):
    views = tta_plan(paper, 224)
    assert len(views) == 59
    table = np.array([(1.0, 0.0, 0.0, 0.0, 0.0)] + [v.params() for v in views])
    np.testing.assert_array_equal(table, ref["params"])
    weights = np.array([paper.identity_weight] + [v.weight for v in views], dtype=np.float32)
    np.testing.assert_array_equal(weights, ref["weights"])
    assert tta_divisor(paper, views) == float(ref["divisor"]) == 62.0


def test_transform_coefficients_match_reference(ref, paper):
    views = tta_plan(paper, 224)
    for i, view in enumerate(views, start=1):
        if view.rotation:
            got = projective_transform("rotate", (view.rotation, 0.0), 224, 224)
            np.testing.assert_array_equal(got, ref["rot_transform"][i])
        if view.shift_h or view.shift_v:
            got = projective_transform("translate", (view.shift_h, view.shift_v), 224, 224)
            np.testing.assert_array_equal(got, ref["translate_transform"][i])


def test_every_view_is_bit_identical_on_a_batch(ref, paper):
    """All views computed on a (B, 3, H, W) batch equal the reference exactly, every channel."""
    views = [None] + tta_plan(paper, 224)  # index 0 = identity
    image = torch.from_numpy(ref["image"])
    grey = torch.stack([image, 255.0 - image])[:, None].expand(-1, 3, -1, -1)  # (2, 3, 224, 224), one plane
    batch = grey.contiguous()  # three separate planes
    for k, index in enumerate(ref["view_index"]):
        view = views[int(index)]
        got = batch if view is None else apply_view(batch, view)
        if view is not None:  # the one-plane shortcut for expanded grey batches gives the same values
            assert torch.equal(apply_view(grey, view), got)
        expected = torch.from_numpy(ref["views"][k])
        assert got.shape == batch.shape and got.dtype == torch.float32
        for c in range(3):
            assert torch.equal(got[0, c], expected), (
                f"view {index} {view}: max diff {(got[0, c] - expected).abs().max()}"
            )
        # channels and batch items are independent: the second image is the mirror in value
        if view is not None and not (0 < view.zoom < 1):
            # resampling is linear with weights summing to 1, so 255 - image maps to ~255 - view
            torch.testing.assert_close(got[1, 0], 255.0 - expected, atol=1e-3, rtol=0)


def test_identity_skipped_and_shifts_scale_with_size():
    preset = TTAPreset(
        identity_weight=2.0,
        reference_size=224,
        passes=(TTAPass(shift_h=(0.0, 14.0), flip=(False, True)),),
    )
    views = tta_plan(preset, 112)
    assert views == [View(flip=True), View(shift_h=7.0), View(shift_h=7.0, flip=True)]
    assert tta_divisor(preset, views) == 5.0


def test_flip_preset_from_recipe():
    preset = load_recipe(None, ()).tta.presets["flip"]
    views = tta_plan(preset, 48)
    assert views == [View(flip=True)]
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.float32).reshape(2, 3, 4, 4)
    assert torch.equal(apply_view(x, views[0]), x.flip(-1))


def test_integer_translation_moves_content_and_fills_nearest():
    x = torch.arange(36, dtype=torch.float32).reshape(1, 1, 6, 6)
    got = apply_view(x, View(shift_h=2.0, shift_v=-1.0))
    # out(x, y) = in(clamp(x - 2), clamp(y + 1)): content moves right by 2 and up by 1
    rows = torch.tensor([1, 2, 3, 4, 5, 5])
    cols = torch.tensor([0, 0, 0, 1, 2, 3])
    assert torch.equal(got[0, 0], x[0, 0][rows][:, cols])


def test_rotation_by_half_turn_reverses_both_axes():
    x = torch.rand(1, 2, 9, 9) * 255
    got = apply_view(x, View(rotation=float(np.pi)))
    torch.testing.assert_close(got, x.flip(-1).flip(-2), atol=1e-3, rtol=0)
