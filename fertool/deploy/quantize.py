"""int8 inference on the CPU: ONNX Runtime static quantization calibrated on prepared faces.

:func:`quantize_onnx` turns a float32 ONNX graph (fertool's export: input ``images`` raw
0..255, NCHW) into an int8 one: QDQ format, weights int8 per output channel, activations
uint8 with ranges from running the float32 graph on ``calibration`` images (prepared faces,
N x 3 x S x S float32, as the model sees them: min/max calibration).  :class:`Int8Engine` is
an inference engine (``predict --precision int8``) that runs such a graph; it is built from a
model and calibration faces, or from an int8 ``.onnx`` file (``fertool export --quantize int8``).
The outputs differ from float32 (``benchmarks/infer.py`` measures the top-1 agreement).
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import FertoolError
from ..evaluation.runtimes import InferenceEngine

__all__ = ["Int8Engine", "model_onnx_bytes", "quantize_onnx"]


def _ort():
    try:
        import onnxruntime as ort
        from onnxruntime import quantization  # noqa: F401
    except ImportError:
        raise FertoolError("int8 quantization needs onnxruntime (pip install onnx onnxruntime)") from None
    return ort


def model_onnx_bytes(model: nn.Module, *, opset: int = 17) -> bytes:
    """``model``'s float32 ONNX graph (input ``images``, its logits as output), in memory."""
    import copy

    from .export import onnx_graph

    model = copy.deepcopy(model).cpu().eval()
    size = int(getattr(model, "input_size", 224))
    buf = io.BytesIO()
    onnx_graph(model, torch.zeros(1, 3, size, size), buf, opset=opset)
    return buf.getvalue()


def quantize_onnx(graph: bytes | str | os.PathLike, calibration: np.ndarray, *, batch: int = 8) -> bytes:
    """The int8 (QDQ) version of the float32 ONNX ``graph`` (bytes or a file), calibrated on
    ``calibration`` (N, 3, S, S) float32 images; returns the quantized model's bytes."""
    _ort()
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    calibration = np.ascontiguousarray(calibration, dtype=np.float32)
    if calibration.ndim != 4 or len(calibration) == 0:
        raise FertoolError(f"calibration: expected (N, 3, S, S) images, got shape {calibration.shape}")

    class Reader(CalibrationDataReader):
        def __init__(self, name: str) -> None:
            self.name = name
            self.batches = iter([calibration[i:i + batch] for i in range(0, len(calibration), batch)])

        def get_next(self):
            x = next(self.batches, None)
            return None if x is None else {self.name: x}

    with tempfile.TemporaryDirectory(prefix="fertool-int8-") as tmp:
        src, pre, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        if isinstance(graph, (bytes, bytearray)):
            src.write_bytes(graph)
        else:
            src = Path(graph)
        try:
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        except Exception:  # noqa: BLE001 -- optimisation is optional: quantize the graph as it is
            pre = src
        import onnx

        name = onnx.load(str(pre), load_external_data=False).graph.input[0].name
        previous = logging.root.manager.disable
        logging.disable(logging.WARNING)  # the quantizer logs a warning per BatchNorm vector
        try:
            quantize_static(
                str(pre), str(dst), Reader(name), quant_format=QuantFormat.QDQ, per_channel=True,
                weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
            )
        finally:
            logging.disable(previous)
        return dst.read_bytes()


class Int8Engine(InferenceEngine):
    """ONNX Runtime (CPU) on an int8 graph: from ``model`` + ``calibration`` faces, or ``graph``."""

    name = "onnxruntime-int8"

    def __init__(self, model: nn.Module | None = None, calibration: np.ndarray | None = None, *,
                 graph: bytes | None = None, threads: int | None = None) -> None:
        ort = _ort()
        if graph is None:
            if model is None or calibration is None:
                raise FertoolError("int8 engine: give a model and calibration faces, or a quantized graph")
            graph = quantize_onnx(model_onnx_bytes(model), calibration)
        self.device = torch.device("cpu")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.version = ort.__version__
        self.graph = graph

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        images = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        (out,) = self.session.run(None, {self.input_name: images})
        return torch.from_numpy(out)

    def describe(self) -> str:
        return f"onnxruntime {self.version} int8 (static, QDQ, CPU)"
