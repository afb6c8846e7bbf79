"""Head analysis: correlation between the outputs of the heads of an LHC module (docs/protocol.md §6)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fertool.analysis.heads import HeadCorrelation, controller_weights, head_summary, mean_abs_offdiag, record_heads
from fertool.layers import LHC


def _feed(stat: HeadCorrelation, att: torch.Tensor, sizes=(3, 1, 4, 2)) -> None:
    start = 0
    for size in sizes:
        stat.update(att[start : start + size])
        start += size
    assert start == att.shape[0]


def test_identical_heads_correlate_one_and_independent_near_zero():
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(10, 1, 6, 50, generator=gen)  # (B, 1, C, r)
    noise = torch.randn(10, 2, 6, 50, generator=gen)
    # heads: 0 = base, 1 = base (identical), 2 = 3*base + 5 (affine copy), 3 = -base, 4,5 independent
    att = torch.cat([base, base, 3 * base + 5, -base, noise], dim=1)  # (10, 6, 6, 50)
    stat = HeadCorrelation(6)
    _feed(stat, att)
    corr = stat.correlation()
    assert stat.count == 10 * 6 * 50
    assert corr[0, 1] == pytest.approx(1.0, abs=1e-12)
    assert corr[0, 2] == pytest.approx(1.0, abs=1e-12)
    assert corr[0, 3] == pytest.approx(-1.0, abs=1e-12)
    assert abs(corr[0, 4]) < 0.1 and abs(corr[4, 5]) < 0.1  # 3000 samples: |rho| ~ 0.02
    assert np.allclose(np.diag(corr), 1.0)


def test_matches_numpy_corrcoef_over_all_features():
    rng = np.random.default_rng(1)
    mix = rng.normal(size=(4, 4))
    z = rng.normal(size=(12, 4, 5, 7)) + 100.0  # large offset: the update must stay stable
    att = np.einsum("hk,bkcr->bhcr", mix, z)  # correlated heads, (B, heads, C, r)
    stat = HeadCorrelation(4)
    _feed(stat, torch.from_numpy(att).float(), sizes=(5, 5, 2))
    flat = att.astype(np.float32).astype(np.float64).transpose(1, 0, 2, 3).reshape(4, -1)  # (heads, B*C*r)
    expected = np.corrcoef(flat)
    assert np.allclose(stat.correlation(), expected, atol=1e-9)
    off = expected[~np.eye(4, dtype=bool)]
    assert mean_abs_offdiag(stat.correlation()) == pytest.approx(np.abs(off).mean(), abs=1e-9)


def test_chunked_update_equals_one_batch():
    att = torch.randn(9, 3, 4, 6, generator=torch.Generator().manual_seed(2))
    one = HeadCorrelation(3)
    one.update(att)
    chunked = HeadCorrelation(3)
    chunked.CHUNK = 30  # < one image (24 values) * 2: one image at a time
    chunked.update(att)
    assert np.allclose(one.correlation(), chunked.correlation(), atol=1e-12)


def test_constant_head_and_single_head_are_na():
    att = torch.randn(4, 3, 2, 5)
    att[:, 2] = 1.5
    stat = HeadCorrelation(3)
    stat.update(att)
    corr = stat.correlation()
    assert np.isnan(corr[0, 2]) and np.isnan(corr[2, 2])
    assert math.isfinite(mean_abs_offdiag(corr))  # only the finite pair (0, 1) counts
    one = HeadCorrelation(1)
    one.update(torch.randn(2, 1, 3, 4))
    summary = head_summary({"a": stat, "b": one}, {})
    assert summary["modules"]["b"]["mean_abs_offdiag"] is None and "one head" in summary["modules"]["b"]["note"]
    assert summary["modules"]["a"]["correlation"][0][2] is None
    assert summary["overall_mean_abs_offdiag"] == pytest.approx(abs(corr[0, 1]))


def test_overall_pools_pairs_of_all_modules():
    a, b = HeadCorrelation(2), HeadCorrelation(3)
    a.update(torch.randn(5, 2, 3, 4))
    b.update(torch.randn(5, 3, 3, 4))
    ca, cb = a.correlation(), b.correlation()
    s = head_summary({"lhc1": a, "lhc2": b}, {})
    pairs = [abs(ca[0, 1])] * 2 + [abs(cb[i, j]) for i in range(3) for j in range(3) if i != j]
    assert s["overall_mean_abs_offdiag"] == pytest.approx(np.mean(pairs))
    assert s["mean_of_module_means"] == pytest.approx((abs(ca[0, 1]) + np.mean(pairs[2:])) / 2)


class _Tiny(torch.nn.Module):
    """Two LHC modules in a row, with the models' lhc_modules() interface."""

    def __init__(self, controller=None):
        super().__init__()
        self.a = LHC(4, heads=4, dim=3, size=4, controller=controller)
        self.b = LHC(4, heads=1, dim=3, size=4, controller=controller)

    def lhc_modules(self):
        return {"lhc1": self.a, "lhc2": self.b}

    def forward(self, x):
        return self.b(self.a(x))


def test_record_heads_hooks_forward_and_restores():
    torch.manual_seed(0)
    model = _Tiny()
    x = torch.randn(6, 4, 4, 4)
    with torch.inference_mode():
        with record_heads(model) as stats:
            model(x[:4])
            model(x[4:])
    assert not model.a.record and model.a.last_attention is None
    assert not model.a._forward_hooks
    assert stats["lhc1"].count == 6 * 4 * 4  # B * C * r with r = 16 / 4
    # independent expectation: the module's own recorded output over the same images
    model.a.record = True
    with torch.inference_mode():
        model.a(x)
    flat = model.a.last_attention.double().transpose(0, 1).reshape(4, -1).numpy()
    assert np.allclose(stats["lhc1"].correlation(), np.corrcoef(flat), atol=1e-6)


def test_controller_weights():
    assert controller_weights(_Tiny()) is None
    model = _Tiny(controller=-1.0)
    w = controller_weights(model)
    assert w["lhc1"]["w"] == -1.0
    assert w["lhc1"]["tanh_w"] == pytest.approx(math.tanh(-1.0))
    assert w["lhc1"]["gain"] == pytest.approx(1 + math.tanh(-1.0))
