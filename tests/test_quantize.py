"""int8 inference: ONNX Runtime static quantization calibrated on prepared faces
(``predict --precision int8``, ``fertool export --quantize int8``)."""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from fertool import CLASS_NAMES
from fertool.cli import app
from fertool.deploy.export import read_export_metadata
from fertool.deploy.predict import FaceClassifier, calibration_images
from fertool.errors import FertoolError
from fertool.evaluation.runtimes import Int8Engine

from .test_predict import SIZE, make_tiny_checkpoint

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def ckpt_path(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    """Ten LFW faces prepared at the model's size (N, S, S) uint8."""

    from fertool.deploy.faces import face_to_48, prepare_faces

    lfw = (skimage_data.lfw_subset()[:10] * 255).round().astype(np.uint8)
    return prepare_faces([face_to_48(f) for f in lfw], SIZE, jpeg=False)


def _ops(graph: bytes) -> set[str]:
    return {n.op_type for n in onnx.load_from_string(graph).graph.node}


def test_calibration_images_are_model_inputs_with_mirrors(faces):
    x = calibration_images(faces[:3])
    assert x.shape == (6, 3, SIZE, SIZE) and x.dtype == np.float32
    np.testing.assert_array_equal(x[0, 1], faces[0])
    np.testing.assert_array_equal(x[3, 2], faces[0][:, ::-1])


def test_predict_int8_is_a_quantized_graph_close_to_float32(ckpt_path, faces):
    fp32 = FaceClassifier.from_checkpoint(ckpt_path, batch_size=16)
    int8 = FaceClassifier.from_checkpoint(ckpt_path, batch_size=16, precision="int8")
    p32, _ = fp32.classify(faces)
    p8, _ = int8.classify(faces)
    assert isinstance(int8._engine, Int8Engine) and "int8" in int8._engine.describe()
    ops = _ops(int8._engine.graph)
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and "Conv" in ops
    np.testing.assert_allclose(p8.sum(1), 1.0, atol=1e-5)
    assert np.abs(p8 - p32).max() < 0.15  # int8 rounding moves probabilities, not wholesale
    assert np.abs(p8 - p32).max() > 0  # it is not the float32 graph
    with pytest.raises(FertoolError, match="int8"):
        FaceClassifier.from_checkpoint(ckpt_path, precision="int8", engine="torch")


def test_export_quantize_int8_keeps_the_contract(cli_runner, tmp_path, ckpt_path):
    out = tmp_path / "model.int8.onnx"
    result = cli_runner.invoke(
        app, ["export", "-c", str(ckpt_path), "-f", "onnx", "-o", str(out), "--quantize", "int8"]
    )
    assert result.exit_code == 0, result.output
    assert "int8: top-1 agreement" in result.stdout
    model = onnx.load(str(out))
    props = {p.key: p.value for p in model.metadata_props}
    assert props["quantization"].startswith("int8 static") and "synthetic sample" in props["quantization"]
    assert read_export_metadata(out)["class_names"] == list(CLASS_NAMES)
    assert "QuantizeLinear" in {n.op_type for n in model.graph.node}
    bad = cli_runner.invoke(
        app, ["export", "-c", str(ckpt_path), "-f", "torchscript", "-o", str(tmp_path / "m.pt"), "--quantize", "int8"]
    )
    assert bad.exit_code == 1 and "onnx format" in bad.output


def test_calibration_methods_give_different_ranges_quietly(ckpt_path, faces, capfd):
    """Percentile (the default) clips the extreme activations that min/max keeps: the two
    graphs' activation scales differ, and neither calibrator prints to the terminal."""
    import io

    import torch

    from fertool.checkpoint import load_checkpoint
    from fertool.deploy.quantize import quantize_onnx
    from fertool.evaluation.runtimes import onnx_graph
    from fertool.surgery import model_from_checkpoint

    buf = io.BytesIO()
    onnx_graph(model_from_checkpoint(load_checkpoint(ckpt_path)).eval(), torch.zeros(1, 3, SIZE, SIZE), buf)
    x = calibration_images(faces)

    def scales(graph: bytes) -> np.ndarray:
        g = onnx.load_from_string(graph).graph
        inits = {t.name: onnx.numpy_helper.to_array(t) for t in g.initializer}
        return np.array(
            [inits[n.input[1]] for n in g.node if n.op_type == "QuantizeLinear" and inits[n.input[1]].ndim == 0]
        )

    percentile, minmax = (
        scales(quantize_onnx(buf.getvalue(), x)),
        scales(quantize_onnx(buf.getvalue(), x, method="minmax")),
    )
    assert percentile.shape == minmax.shape and (percentile <= minmax + 1e-12).all() and (percentile < minmax).any()
    assert capfd.readouterr().out == ""
    with pytest.raises(FertoolError, match="unknown calibration method 'kl'"):
        quantize_onnx(buf.getvalue(), x, method="kl")
