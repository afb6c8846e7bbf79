"""int8 inference on the CPU: ONNX Runtime static quantization calibrated on prepared faces.

:func:`quantize_onnx` turns a float32 ONNX graph (fertool's export: input ``images`` raw
0..255, NCHW) into an int8 one: QDQ format, the convolutions (:data:`QUANTIZED_OPS`) with weights int8 per output channel, activations
uint8 with ranges from running the float32 graph on ``calibration`` images (prepared faces,
N x 3 x S x S float32, as the model sees them: percentile calibration by default).
:class:`fertool.evaluation.runtimes.Int8Engine` runs such a graph (``predict --precision int8``);
``fertool export --quantize int8`` writes one.
The outputs differ from float32 (``benchmarks/infer.py`` measures the top-1 agreement).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
from pathlib import Path

import numpy as np

from ..errors import FertoolError

__all__ = ["CALIBRATION_METHODS", "QUANTIZED_OPS", "quantize_onnx"]

#: Calibration methods of :func:`quantize_onnx` and their ONNX Runtime ``CalibrationMethod`` names.
_ORT_CALIBRATION = {"percentile": "Percentile", "minmax": "MinMax", "entropy": "Entropy"}
CALIBRATION_METHODS = tuple(_ORT_CALIBRATION)


def _ort():
    try:
        import onnxruntime as ort
        from onnxruntime import quantization  # noqa: F401
    except ImportError:
        raise FertoolError("int8 quantization needs onnxruntime (pip install onnx onnxruntime)") from None
    return ort


#: Operators quantized by default: the convolutions only (where the time goes).  The LHC
#: modules' attention products and the head stay float32: quantizing them too costs far more
#: top-1 agreement with float32 than it gains in speed (``benchmarks/infer.py`` measures both).
QUANTIZED_OPS = ("Conv",)


def quantize_onnx(
    graph: bytes | str | os.PathLike,
    calibration: np.ndarray,
    *,
    batch: int = 8,
    ops: tuple[str, ...] | None = QUANTIZED_OPS,
    method: str = "percentile",
) -> bytes:
    """The int8 (QDQ) version of the float32 ONNX ``graph`` (bytes or a file), calibrated on
    ``calibration`` (N, 3, S, S) float32 images; returns the quantized model's bytes.
    ``ops``: the operator types to quantize (None: every one ONNX Runtime supports).
    ``method``: how activation ranges are taken from the calibration run, one of
    :data:`CALIBRATION_METHODS`: ``percentile`` (ONNX Runtime's 99.999th percentile of the
    absolute values) clips the rare extreme activations that ``minmax`` would spend the
    256 levels on."""
    _ort()
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in CALIBRATION_METHODS:
        raise FertoolError(f"method: unknown calibration method {method!r} (known: {', '.join(CALIBRATION_METHODS)})")
    calibration = np.ascontiguousarray(calibration, dtype=np.float32)
    if calibration.ndim != 4 or len(calibration) == 0:
        raise FertoolError(f"calibration: expected (N, 3, S, S) images, got shape {calibration.shape}")

    # Batches of one size: ONNX Runtime's histogram calibrators stack the batches' outputs.
    batch = max(d for d in range(1, batch + 1) if len(calibration) % d == 0)

    class Reader(CalibrationDataReader):
        def __init__(self, name: str) -> None:
            self.name = name
            self.batches = iter([calibration[i : i + batch] for i in range(0, len(calibration), batch)])

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
            with contextlib.redirect_stdout(io.StringIO()):  # and the histogram calibrators print()
                quantize_static(
                    str(pre),
                    str(dst),
                    Reader(name),
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    weight_type=QuantType.QInt8,
                    activation_type=QuantType.QUInt8,
                    op_types_to_quantize=list(ops) if ops else None,
                    calibrate_method=getattr(CalibrationMethod, _ORT_CALIBRATION[method]),
                )
        finally:
            logging.disable(previous)
        return dst.read_bytes()
