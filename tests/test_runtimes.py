"""Inference engines (fertool.evaluation.runtimes): reference outputs through each, BatchNorm folding."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fertool.errors import FertoolError
from fertool.evaluation.runtimes import (
    CheckedEngine,
    OnnxRuntimeEngine,
    TorchEngine,
    bf16_supported,
    build_engine,
    onnxruntime_available,
)
from fertool.models import build_model
from fertool.models.resnet import fold_batchnorm
from tests._reference_weights import reference_state_dict

#: Two small LHC modules that fit a 64 px input (Table 2's heads need 224 or 112 px).
SMALL = {
    "input_size": 64,
    "hidden": [16],
    "lhc": [{"after": "stem", "heads": 8, "dim": 4}, {"after": "stage4_unit3", "heads": 4, "dim": 2}],
}
ENGINES = [
    "torch",
    pytest.param(
        "onnxruntime", marks=pytest.mark.skipif(not onnxruntime_available(), reason="onnxruntime not installed")
    ),
]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("arch,weights,atol", [("resnet34v2", "backbone", 1e-5), ("lhc_net", "lhc", 2e-5)])
def test_engine_reproduces_reference(engine, arch, weights, atol, net_ref, tensors):
    # The same tolerances as the eager reference tests (tests/test_models.py).
    model = build_model(arch).eval()
    model.load_state_dict(reference_state_dict(tensors, weights), strict=False)
    x = torch.from_numpy(net_ref["input"]).permute(0, 3, 1, 2).contiguous()
    run = build_engine(model, engine)
    assert run.name == engine
    prob = torch.softmax(run(x), dim=-1)
    np.testing.assert_allclose(prob.numpy(), net_ref[f"{weights}_prob"], atol=atol)


def _randomise_batchnorm(model: nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen))
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            if m.weight is not None:
                m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=gen))


@pytest.mark.parametrize(
    "arch,left",
    [
        # ResNet34v2: each unit's bn1, bn_data and final_bn follow no convolution (16 + 2)
        ("resnet34v2", 18),
        ("lhc_net", 18),
        ("resnet34_tv", 0),
    ],
)
def test_fold_batchnorm_keeps_outputs(arch, left):
    args = SMALL if arch == "lhc_net" else {k: SMALL[k] for k in ("input_size", "hidden")}
    model = build_model(arch, **args).eval()
    _randomise_batchnorm(model)
    x = torch.rand(2, 3, 64, 64) * 255
    with torch.no_grad():
        want = model(x)
        folded = fold_batchnorm(model)
        got = folded(x)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in folded.modules()) == left
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * want.abs().max().item())


def test_fold_batchnorm_needs_eval_mode():
    with pytest.raises(Exception, match="eval mode"):
        fold_batchnorm(build_model("resnet34v2", input_size=32, hidden=[8]).train())


def test_engines_leave_the_model_alone():
    model = build_model("lhc_net", **SMALL).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    run = TorchEngine(model)
    run(torch.rand(1, 3, 64, 64) * 255)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 35


def test_engine_choice_and_refusals(real_auto_runtime, monkeypatch):
    model = build_model("resnet34v2", input_size=32, hidden=[8])
    expected = OnnxRuntimeEngine if onnxruntime_available() else TorchEngine
    assert isinstance(build_engine(model, "auto"), expected)
    assert isinstance(build_engine(model, "torch"), TorchEngine)
    with pytest.raises(FertoolError, match="^engine: unknown engine 'tvm'"):
        build_engine(model, "tvm")
    with pytest.raises(FertoolError, match="CPU only"):
        build_engine(model, "onnxruntime", device="meta")
    with pytest.raises(FertoolError, match="float32 only"):
        build_engine(model, "onnxruntime", precision="bf16")
    monkeypatch.setattr("fertool.evaluation.runtimes.onnxruntime_available", lambda: False)
    assert isinstance(build_engine(model, "auto"), TorchEngine)


@pytest.mark.skipif(not bf16_supported("cpu"), reason="this CPU has no native bf16")
def test_bf16_engine_is_close_to_float32(net_ref, tensors):
    model = build_model("lhc_net").eval()
    model.load_state_dict(reference_state_dict(tensors, "lhc"), strict=False)
    x = torch.from_numpy(net_ref["input"]).permute(0, 3, 1, 2).contiguous()
    want = TorchEngine(model)(x)
    got = TorchEngine(model, precision="bf16")(x)
    assert got.dtype == torch.float32
    assert not torch.equal(got, want)  # it did run in bf16
    assert ((got - want).norm() / want.norm()).item() < 0.1  # measured 0.04


class _Fixed:
    """An engine stand-in returning fixed logits for the rows it is given (by row id in x[:, 0, 0, 0])."""

    def __init__(self, logits: torch.Tensor, precision: str) -> None:
        self.logits, self.precision, self.device, self.seen = logits, precision, torch.device("cpu"), []

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        rows = x[:, 0, 0, 0].long()
        self.seen.append(rows.tolist())
        return self.logits[rows]

    def describe(self) -> str:
        return self.precision


def test_checked_engine_recomputes_only_close_calls():
    fast = _Fixed(
        torch.tensor(
            [
                [4.0, 3.0, 0.0],  # gap 1.0  = 0.25 x max|logit|: kept
                [4.0, 3.9, 0.0],  # gap 0.1  = 0.025 x 4: close
                [-10.0, 0.1, 0.0],  # gap 0.1 < 0.03 x 10 (the largest |logit| counts): close
                [2.0, 2.0, 1.0],
            ]
        ),
        "bf16",
    )  # a tie: close
    exact = _Fixed(torch.tensor([[0.0, 1.0, 2.0]] * 4) + torch.arange(4.0)[:, None], "fp32")
    run = CheckedEngine(fast, exact, margin=0.03)
    x = torch.arange(4.0).view(4, 1, 1, 1).expand(4, 3, 2, 2)
    got = run(x)
    assert exact.seen == [[1, 2, 3]]  # only the close rows went through float32
    torch.testing.assert_close(got[0], fast.logits[0])
    torch.testing.assert_close(got[1:], exact.logits[1:])
    assert (run.rechecked, run.rows) == (3, 4)
    assert torch.equal(fast.logits[1], torch.tensor([4.0, 3.9, 0.0]))  # the fast engine's output is not edited
    off = CheckedEngine(_Fixed(fast.logits, "bf16"), exact, margin=0)
    torch.testing.assert_close(off(x), fast.logits)
    assert off.rechecked == 0
    with pytest.raises(FertoolError, match="^recheck_margin: must be >= 0"):
        CheckedEngine(fast, exact, margin=float("nan"))


@pytest.mark.skipif(not bf16_supported("cpu"), reason="this CPU has no native bf16")
def test_checked_bf16_keeps_float32_labels_where_the_margin_covers_the_error(tensors):
    # Seeded random images through LHC-Net with the reference weights (whose predictions are
    # often near-ties): every row the check did not recompute had a bf16 top-2 gap of at least
    # the margin, every recomputed row equals float32, and so the labels agree at least as
    # often as plain bf16's.
    model = build_model("lhc_net").eval()
    model.load_state_dict(reference_state_dict(tensors, "lhc"), strict=False)
    x = torch.rand(8, 3, 224, 224, generator=torch.Generator().manual_seed(0)) * 255
    exact = TorchEngine(model)(x)
    plain = TorchEngine(model, precision="bf16")(x)
    run = build_engine(model, "torch", precision="bf16", recheck=0.05)
    assert isinstance(run, CheckedEngine)
    got = run(x)
    best = plain.topk(2, dim=1).values
    close = best[:, 0] - best[:, 1] < 0.05 * plain.abs().amax(dim=1)
    assert run.rechecked == int(close.sum()) and run.rows == 8
    torch.testing.assert_close(got[close], exact[close], rtol=1e-5, atol=1e-5)
    assert torch.equal(got[~close], plain[~close])
    assert (got.argmax(1) == exact.argmax(1)).sum() >= (plain.argmax(1) == exact.argmax(1)).sum()
