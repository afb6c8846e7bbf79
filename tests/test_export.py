"""fertool export: TorchScript and ONNX round trips of an LHC-NetC, metadata, refusals."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fertool import CLASS_NAMES
from fertool.checkpoint import load_checkpoint
from fertool.deploy import export as E
from fertool.errors import CheckpointError, FertoolError, ModelError
from fertool.surgery import model_from_checkpoint

from .test_predict import make_tiny_checkpoint

SIZE = 32
#: Two small LHC modules with controllers at 32 px (8x8 after the stem, 4x4 after stage 2).
LHC = [{"after": "stem", "heads": 4, "dim": 6}, {"after": "stage2_unit4", "heads": 2, "dim": 4}]


@pytest.fixture(scope="module")
def ckpt_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("export") / "lhc_netc.pt"
    return make_tiny_checkpoint(path, arch="lhc_netc", lhc=LHC, controller_init=[0.0, -0.5])


@pytest.fixture(scope="module")
def reference(ckpt_path):
    """Independent expectation: the checkpoint's model in eval mode, softmax, on 5 random images."""
    model = model_from_checkpoint(load_checkpoint(ckpt_path)).eval()
    x = torch.randint(0, 256, (5, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(7)).float()
    with torch.no_grad():
        probs = torch.softmax(model(x), dim=-1).numpy()
    assert probs.max() < 0.99  # not saturated: the comparison below means something
    return x, probs


@pytest.fixture(scope="module")
def torchscript_export(ckpt_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("ts") / "model.pt"
    return out, E.export_model(ckpt_path, out, fmt="torchscript")


@pytest.fixture(scope="module")
def onnx_export(ckpt_path, tmp_path_factory):
    pytest.importorskip("onnx")
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    return out, E.export_model(ckpt_path, out, fmt="onnx", batch=2)


def _check_metadata(meta: dict, fmt: str) -> None:
    assert meta["format"] == "fertool-export" and meta["export_format"] == fmt
    assert meta["arch"] == "lhc_netc" and meta["arch_args"]["lhc"] == LHC
    assert meta["class_names"] == list(CLASS_NAMES)
    assert meta["input"]["size"] == SIZE and meta["input"]["layout"] == "NCHW"
    assert meta["input"]["value_range"] == [0.0, 255.0] and meta["input"]["normalisation"] == "none"
    assert "48x48" in meta["preparation"] and "floor" in meta["preparation"]


@pytest.mark.filterwarnings("ignore:`torch.jit.load` is deprecated:FutureWarning")
def test_torchscript_round_trip_parity_and_metadata(torchscript_export, reference):
    out, info = torchscript_export
    assert info["checked_with"].startswith("torch.jit") and info["max_abs_diff"] < 1e-5
    extra = {"fertool.json": ""}
    loaded = torch.jit.load(str(out), _extra_files=extra)
    meta = json.loads(extra["fertool.json"])
    _check_metadata(meta, "torchscript")
    assert E.read_export_metadata(out) == meta
    x, expected = reference
    with torch.no_grad():
        got = loaded(x).numpy()  # batch 5, traced with batch 2: the batch axis is dynamic
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_onnx_round_trip_parity_with_onnxruntime_and_metadata(onnx_export, reference):
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    out, info = onnx_export
    assert info["checked_with"].startswith("onnxruntime") and info["max_abs_diff"] < 1e-4
    model = onnx.load(str(out))
    props = {p.key: p.value for p in model.metadata_props}
    meta = json.loads(props["fertool"])
    _check_metadata(meta, "onnx")
    assert json.loads(props["class_names"]) == list(CLASS_NAMES) and props["input_size"] == str(SIZE)
    assert E.read_export_metadata(out) == meta
    (inp,) = model.graph.input
    assert inp.name == "images" and inp.type.tensor_type.shape.dim[0].dim_param == "batch"
    x, expected = reference
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": x.numpy()})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_onnx_without_onnxruntime_says_not_checked(onnx_export, monkeypatch):
    out, _ = onnx_export
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    got, checked_with = E._run_export(out, "onnx", torch.zeros(1, 3, SIZE, SIZE))
    assert got is None and checked_with is None


def test_onnx_without_the_onnx_package_names_the_packages(ckpt_path, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # installed with fertool, but removable
    with pytest.raises(FertoolError, match=r"needs the 'onnx' package: pip install onnx onnxruntime"):
        E.export_model(ckpt_path, tmp_path / "m.onnx", fmt="onnx")
    assert not list(tmp_path.iterdir())


def test_failed_parity_keeps_the_existing_output(ckpt_path, tmp_path):
    out = tmp_path / "model.pt"
    out.write_bytes(b"previous export")
    with pytest.raises(ModelError, match="nothing written"):
        E.export_model(ckpt_path, out, fmt="torchscript", tolerance=-1.0)
    assert out.read_bytes() == b"previous export"
    assert [p.name for p in tmp_path.iterdir()] == ["model.pt"]  # no temp file left


def test_non_fertool_file_and_unknown_format_are_refused(ckpt_path, tmp_path, cli_runner):
    from fertool.cli import app

    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    with pytest.raises(CheckpointError, match="not a fertool checkpoint"):
        E.export_model(foreign, tmp_path / "x.pt", fmt="torchscript")
    with pytest.raises(FertoolError, match="unknown export format"):
        E.export_model(ckpt_path, tmp_path / "x.tflite", fmt="tflite")
    result = cli_runner.invoke(
        app, ["export", "-c", str(foreign), "--format", "torchscript", "--out", str(tmp_path / "y.pt")]
    )
    assert result.exit_code == 1 and "not a fertool checkpoint" in result.stderr
    result = cli_runner.invoke(
        app, ["export", "-c", str(ckpt_path), "--format", "tflite", "--out", str(tmp_path / "y")]
    )
    assert result.exit_code == 2
    assert not (tmp_path / "x.pt").exists() and not (tmp_path / "y.pt").exists()


def test_cli_prints_the_parity_difference(ckpt_path, tmp_path, cli_runner):
    from fertool.cli import app

    out = tmp_path / "m.pt"
    result = cli_runner.invoke(app, ["export", "-c", str(ckpt_path), "-f", "torchscript", "-o", str(out), "-q"])
    assert result.exit_code == 0, result.output
    assert "max |softmax difference|" in result.stdout and out.is_file()
    assert result.stderr == ""  # -q: no notes
    result = cli_runner.invoke(app, ["export", "-c", str(ckpt_path), "-f", "torchscript", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.stderr and "wrote" not in result.stdout  # notes on stderr, results on stdout
    assert result.stdout.startswith(f"{out}: torchscript, ")


def test_the_parity_bound_scales_with_the_logits():
    """tolerance x max(1, largest |logit|): a logit error proportional to the logits' size (float32
    rounding) passes through a softmax at most halved; small logits keep the absolute bound."""
    assert E.parity_bound(1e-4, torch.tensor([[0.2, -0.5, 0.9]])) == pytest.approx(1e-4)
    assert E.parity_bound(1e-4, torch.tensor([[-30.0, 2.0, 5.0]])) == pytest.approx(3e-3)
    assert E.parity_bound(0.0, torch.tensor([[-30.0, 2.0]])) == 0.0
    assert E.parity_bound(1e-4, torch.tensor([[float("nan"), 2.0]])) == pytest.approx(1e-4)


@pytest.mark.parametrize("delta,accepted", [(1e-3, True), (5e-2, False)])
def test_large_logits_widen_the_parity_check_but_a_wrong_graph_is_still_refused(tmp_path, monkeypatch, delta, accepted):
    """Logits about 20x larger than the tiny model's (head scaled by 20, largest |logit| 20..100):
    a probability difference of 1e-3 (10x the absolute 1e-4, what such a model's ONNX export
    shows) is float32 rounding and accepted; 5e-2 is an export that computes something else."""
    ckpt = torch.load(make_tiny_checkpoint(tmp_path / "base.pt"), weights_only=True)
    for key in ("head.fc2.weight", "head.fc2.bias"):
        ckpt["state_dict"][key] = ckpt["state_dict"][key] * 20
    path = tmp_path / "large.pt"
    torch.save(ckpt, path)
    real = E._run_export

    def shifted(file, fmt, x):
        got, checked_with = real(file, fmt, x)
        got = got.copy()
        got[:, 0] += delta
        got[:, 1] -= delta
        return got, checked_with

    monkeypatch.setattr(E, "_run_export", shifted)
    out = tmp_path / "m.pt"
    if accepted:
        info = E.export_model(path, out, fmt="torchscript")
        assert info["max_abs_diff"] == pytest.approx(delta, rel=1e-3) and 2e-3 <= info["bound"] <= 1e-2
    else:
        with pytest.raises(
            ModelError, match=r"max \|p diff\| = 0\.05 > 0\.00\d+ = tolerance 0\.0001 x max\(1, largest \|logit\| \d+"
        ):
            E.export_model(path, out, fmt="torchscript")
        assert not out.exists()
