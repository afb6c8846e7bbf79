"""The LHC layer against the original Keras module (reference/lhc_modules.npz, docs/protocol.md §3)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fertool.errors import ModelError
from fertool.layers import LHC
from fertool.layers.lhc import same_avg_pool, same_max_pool

# Tolerances from reference/README.md "Observed tolerances".
TOL = {1: 5e-4, 2: 5e-4, 3: 1e-4, 4: 1e-4, 5: 1e-4}


def _module_from_fixture(ref: dict, k: int, controller: float | None = None) -> tuple[LHC, torch.Tensor]:
    size, channels, heads, dim, pool, kernel, norm_c = (int(v) for v in ref[f"m{k}_config"])
    m = LHC(
        channels, heads=heads, dim=dim, pool=pool, kernel=kernel, scale=float(norm_c), controller=controller, size=size
    )
    with torch.no_grad():
        m.qk_weight.copy_(torch.from_numpy(np.stack([ref[f"m{k}_qk{i}_kernel"] for i in range(heads)])))
        m.qk_bias.copy_(torch.from_numpy(np.stack([ref[f"m{k}_qk{i}_bias"] for i in range(heads)])))
        m.p.weight.copy_(torch.from_numpy(ref[f"m{k}_p_kernel"].T))
        m.p.bias.copy_(torch.from_numpy(ref[f"m{k}_p_bias"]))
        m.v.weight.copy_(torch.from_numpy(ref[f"m{k}_v_kernel"].transpose(3, 2, 0, 1)))
        m.v.bias.copy_(torch.from_numpy(ref[f"m{k}_v_bias"]))
    x = torch.from_numpy(ref[f"m{k}_x"]).permute(0, 3, 1, 2)  # NHWC -> NCHW
    return m, x


def _nhwc(t: torch.Tensor) -> np.ndarray:
    return t.detach().permute(0, 2, 3, 1).numpy()


@pytest.fixture(scope="module")
def ref(request):
    from tests.conftest import load_reference

    return load_reference("lhc_modules.npz")


def _modules_in(ref: dict) -> list[int]:
    return [k for k in range(1, 6) if f"m{k}_config" in ref]


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
def test_lhc_matches_reference(ref, k):
    if k not in _modules_in(ref):
        pytest.skip(f"module {k} is only in ../shared/reference/lhc_modules.npz")
    m, x = _module_from_fixture(ref, k)
    m.record = True
    with torch.no_grad():
        out = m(x)
    np.testing.assert_allclose(_nhwc(out), ref[f"m{k}_out"], atol=TOL[k], rtol=1e-4)
    # intermediates: the softmax weights of batch 0 head 0 (first 64 query channels)
    np.testing.assert_allclose(m.last_weights[0, 0, :64].numpy(), ref[f"m{k}_softmax_b0h0"], atol=1e-4)
    # last_attention is A before the residual, in the (B, heads, C, r) stripe layout
    b, c, h, w = x.shape
    att = m.last_attention.transpose(1, 2).reshape(b, c, h, w)
    np.testing.assert_allclose(_nhwc(att + x), ref[f"m{k}_out"], atol=TOL[k], rtol=1e-4)


def test_controller_matches_reference(ref):
    if 5 not in _modules_in(ref):
        pytest.skip("module 5 is only in ../shared/reference/lhc_modules.npz")
    w = float(ref["m5_ctrl_w"])
    m, x = _module_from_fixture(ref, 5, controller=w)
    with torch.no_grad():
        out = m(x)
    np.testing.assert_allclose(_nhwc(out), ref["m5_ctrl_out"], atol=1e-4)
    # with w = 0 the controller module is the plain module
    m0, _ = _module_from_fixture(ref, 5, controller=0.0)
    plain, _ = _module_from_fixture(ref, 5)
    with torch.no_grad():
        assert torch.equal(m0(x), plain(x))


def naive_lhc(m: LHC, x: torch.Tensor) -> torch.Tensor:
    """Per-head loop written straight from docs/protocol.md §3, independent of the batched layer."""
    b, c, h, w = x.shape
    n, r, d = m.heads, h * w // m.heads, m.dim
    q_src = F.avg_pool2d(x, 3, 1, 1, count_include_pad=False).reshape(b, c, h * w)
    k_src = F.max_pool2d(x, 3, 1, 1).reshape(b, c, h * w)
    v = F.avg_pool2d(F.conv2d(x, m.v.weight, m.v.bias, padding=1), 3, 1, 1, count_include_pad=False)
    v = v.reshape(b, c, h * w)
    out = torch.empty(b, c, h * w)
    for i in range(n):
        sl = slice(i * r, (i + 1) * r)
        q = q_src[:, :, sl] @ m.qk_weight[i] + m.qk_bias[i]
        k = k_src[:, :, sl] @ m.qk_weight[i] + m.qk_bias[i]
        s = q @ k.transpose(1, 2)
        t = torch.sigmoid(s.mean(-1) @ m.p.weight.T + m.p.bias)
        wts = torch.softmax(s / torch.pow(torch.tensor(float(d)), m.scale + t)[..., None], dim=-1)
        out[:, :, sl] = wts @ v[:, :, sl]
    return x + out.reshape(b, c, h, w)


@pytest.mark.parametrize("heads,size", [(1, 6), (4, 6), (9, 6), (5, 5)])
def test_batched_agrees_with_per_head_loop(heads, size):
    torch.manual_seed(0)
    m = LHC(8, heads=heads, dim=5, size=size)
    with torch.no_grad():  # non-trivial weights so the softmax is not uniform
        for p in m.parameters():
            p.normal_()
    x = torch.randn(2, 8, size, size)
    with torch.no_grad():
        torch.testing.assert_close(m(x), naive_lhc(m, x), atol=1e-5, rtol=1e-5)


def test_same_pooling_semantics():
    x = torch.arange(16.0).reshape(1, 1, 4, 4) - 8
    avg = same_avg_pool(x, 3)
    assert avg[0, 0, 0, 0] == pytest.approx((-8 - 7 - 4 - 3) / 4)  # corner: 4 real cells
    assert avg[0, 0, 0, 1] == pytest.approx((-8 - 7 - 6 - 4 - 3 - 2) / 6)  # edge: 6 cells
    mx = same_max_pool(-x.abs() - 1, 3)  # all negative: zero padding would win, -inf must not
    assert (mx < 0).all()
    # even pool size: TF pads the extra cell after (bottom/right)
    avg2 = same_avg_pool(x, 2)
    assert avg2[0, 0, 3, 3] == x[0, 0, 3, 3]
    assert avg2[0, 0, 0, 0] == pytest.approx(float(x[0, 0, :2, :2].mean()))


@pytest.mark.parametrize("kernel", [2, 3, 4, 5])
def test_pooling_implementations_agree(kernel):
    # the CPU fast paths (depthwise ones-conv, channels_last max) against the plain kernels
    x = torch.randn(2, 5, 7, 6, requires_grad=True)
    conv, pool = same_avg_pool(x, kernel, method="conv"), same_avg_pool(x, kernel, method="pool")
    torch.testing.assert_close(conv, pool, atol=1e-6, rtol=1e-6)
    if kernel % 2:
        torch.testing.assert_close(pool, F.avg_pool2d(x, kernel, 1, kernel // 2, count_include_pad=False))
    a, b = same_max_pool(x, kernel, channels_last=True), same_max_pool(x, kernel, channels_last=False)
    assert torch.equal(a, b)
    (ga,) = torch.autograd.grad(conv.sum(), x)
    (gb,) = torch.autograd.grad(pool.sum(), x)
    torch.testing.assert_close(ga, gb, atol=1e-6, rtol=1e-6)


def test_every_parameter_gets_a_finite_gradient():
    torch.manual_seed(0)
    m = LHC(6, heads=2, dim=3, controller=-0.5, size=4)
    m(torch.randn(2, 6, 4, 4)).square().sum().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_parameter_count_table2():
    # Keras counts from reference/README.md §1 (qk per head r*d + d, p C*C + C, v 9*C*C + C)
    assert sum(p.numel() for p in LHC(64, heads=8, dim=196, size=56).parameters()) == 657_312
    assert sum(p.numel() for p in LHC(512, heads=1, dim=25, size=7).parameters()) == 2_623_714


def test_enabled_and_record():
    m = LHC(4, heads=2, dim=3, size=4)
    x = torch.randn(1, 4, 4, 4)
    m.enabled = False
    assert m(x) is x
    m.enabled = True
    assert m.last_attention is None
    m.record = True
    m(x)
    assert m.last_attention.shape == (1, 2, 4, 8) and m.last_weights.shape == (1, 2, 4, 4)
    assert not m.last_attention.requires_grad
    torch.testing.assert_close(m.last_weights.sum(-1), torch.ones(1, 2, 4))


def test_reset_parameters_is_deterministic_and_keras_default():
    a = LHC(16, heads=4, dim=8, size=8, controller=-1.0)
    b = LHC(16, heads=4, dim=8, size=8, controller=-1.0)
    a.reset_parameters(torch.Generator().manual_seed(3))
    b.reset_parameters(torch.Generator().manual_seed(3))
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), n
    assert a.qk_bias.abs().sum() == 0 and a.p.bias.abs().sum() == 0 and a.v.bias.abs().sum() == 0
    assert a.controller.item() == -1.0
    # glorot-uniform limit of the per-head dense map r=16 -> d=8
    limit = (6 / (16 + 8)) ** 0.5
    assert a.qk_weight.abs().max() <= limit and a.qk_weight.abs().max() > 0.9 * limit


def test_lazy_size_and_state_dict_round_trip():
    lazy = LHC(4, heads=2, dim=3)
    out = lazy(torch.randn(1, 4, 4, 6))
    assert out.shape == (1, 4, 4, 6) and lazy.qk_weight.shape == (2, 12, 3)
    fresh = LHC(4, heads=2, dim=3)
    fresh.load_state_dict(lazy.state_dict())
    x = torch.randn(1, 4, 4, 6)
    assert torch.equal(fresh(x), lazy(x))


def test_validation_errors():
    with pytest.raises(ModelError, match="heads must be a positive integer"):
        LHC(4, heads=0, dim=3)
    with pytest.raises(ModelError, match="dim must be a positive integer"):
        LHC(4, heads=1, dim=-2)
    with pytest.raises(ModelError, match=r"5x5 = 25 positions is not divisible by heads = 2"):
        LHC(4, heads=2, dim=3, size=5)
    m = LHC(4, heads=2, dim=3, size=4, name="lhc9")
    with pytest.raises(ModelError, match=r"lhc9: H\*W = 3x3 = 9 positions is not divisible by heads = 2"):
        m(torch.randn(1, 4, 3, 3))
    with pytest.raises(ModelError, match="lhc9: built for 16 positions"):
        m(torch.randn(1, 4, 2, 4))
    with pytest.raises(ModelError, match="lhc9: expects 4 channels"):
        m(torch.randn(1, 5, 4, 4))
