"""predict_probs (plain and TTA) and the ``fertool evaluate`` command."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fertool.data.datasets import ArraySplit
from fertool.evaluation.inference import predict_probs
from fertool.recipe import TTAPass, TTAPreset


class TinyNet(nn.Module):
    """A stand-in classifier that is not flip-invariant: logits from a 4x4 pooled image."""

    def __init__(self, num_classes: int = 7, seed: int = 0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.fc = nn.Linear(3 * 16, num_classes)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(num_classes, 48, generator=gen) * 0.05)
            self.fc.bias.copy_(torch.randn(num_classes, generator=gen))
        self.drop = nn.Dropout(0.5)  # must be inactive at inference

    def forward(self, x):  # (B, 3, S, S) 0..255
        pooled = nn.functional.adaptive_avg_pool2d(x / 255.0, 4).flatten(1)  # (B, 48)
        return self.fc(self.drop(pooled))


def _split(n=10, size=16, seed=1, classes=7):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
    labels = torch.from_numpy(rng.integers(0, classes, size=n).astype(np.int64))
    return ArraySplit(images=images, labels=labels, name="PrivateTest")


def _direct_probs(model, x):
    with torch.no_grad():
        return torch.softmax(model.eval()(x), dim=-1)


def test_predict_probs_plain_matches_direct_forward():
    split = _split()
    model = TinyNet()
    model.train()
    calls = []
    out = predict_probs(model, split, batch_size=4, progress=lambda d, t: calls.append((d, t)))
    x = torch.from_numpy(split.images).float()[:, None].expand(-1, 3, -1, -1)
    expected = _direct_probs(model, x).numpy()
    assert out["probs"].dtype == np.float32 and out["probs"].shape == (10, 7)
    np.testing.assert_allclose(out["probs"], expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(out["probs"].sum(1), 1.0, atol=1e-6)
    assert out["tta_probs"] is None
    np.testing.assert_array_equal(out["labels"], split.labels.numpy())
    assert calls[0] == (0, 10) and calls[-1] == (10, 10) and [d for d, _ in calls] == [0, 4, 8, 10]
    model.train()
    assert model.training  # mode restored


def test_predict_probs_tta_is_weighted_mean_of_views():
    split = _split(n=5)
    model = TinyNet()
    preset = TTAPreset(identity_weight=2.0, passes=(TTAPass(flip=(False, True), shift_h=(0.0, 16.0)),))
    out = predict_probs(model, split, batch_size=2, tta=preset)
    x = torch.from_numpy(split.images).float()[:, None].expand(-1, 3, -1, -1)
    # views at size 16 (reference 224): flip; shift right by 16*16/224 px; both
    shift = 16.0 * 16 / 224
    from fertool.evaluation.tta import View, apply_view

    p = lambda v: _direct_probs(model, apply_view(x, v))  # noqa: E731
    expected = (
        2 * _direct_probs(model, x) + p(View(flip=True)) + p(View(shift_h=shift)) + p(View(shift_h=shift, flip=True))
    ) / 5
    np.testing.assert_allclose(out["tta_probs"], expected.numpy(), rtol=1e-5, atol=1e-7)
    assert not np.allclose(out["tta_probs"], out["probs"])  # the views do change the result
    np.testing.assert_allclose(out["probs"], _direct_probs(model, x).numpy(), rtol=1e-6, atol=1e-7)


def test_predict_probs_empty_split():
    split = _split(n=0)
    out = predict_probs(TinyNet(), split, tta=TTAPreset(passes=(TTAPass(flip=(False, True)),)))
    assert out["probs"].shape == (0, 7) and out["tta_probs"].shape == (0, 7)
