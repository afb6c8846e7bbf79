"""Inference engines: what runs a model's forward passes in evaluation, TTA, ablation and prediction.

* ``torch`` — eager PyTorch on an inference copy of the model: BatchNorm folded into the
  convolution before it where there is one (:func:`fertool.models.resnet.fold_batchnorm`),
  channels_last memory, ``torch.inference_mode``, in a precision of
  :func:`fertool.utils.precision` (``fp32``, ``tf32``, ``bf16``; TF32 switched explicitly).
  ``precision="bf16"`` adds bf16 autocast: on CUDA when the recipe's
  ``train.eval_precision`` asks for it; on a CPU with native bf16 instructions only for
  ``predict --precision bf16`` (faster, slightly different outputs; never for reported
  metrics unless asked).
* ``onnxruntime`` — the model exported to ONNX in memory (the exporter of ``fertool
  export``) and run by ONNX Runtime's CPU provider, whose convolutions work in a blocked
  layout with BatchNorm and ReLU fused in (faster than eager PyTorch on a CPU;
  ``benchmarks/infer.py`` measures by how much).  Needs the ``onnx`` and ``onnxruntime`` packages (installed
  with fertool); CPU only.
* ``auto`` — ``onnxruntime`` on the CPU when it is installed and the precision is float32,
  else ``torch``.

:class:`CheckedEngine` wraps a low-precision engine (``predict --precision bf16``): images
whose two best classes are closer than the rounding could move them are run again in
float32, so the bf16 path's top-1 label agrees with float32's on every image but those
whose bf16 error exceeds the margin.

``python benchmarks/infer.py`` measures them against each other.  Every engine maps
(B, 3, S, S) float32 raw pixels on its device to (B, C) float32 logits there; in float32
each matches the eager model to rounding (the reference-fixture tests run through each).
"""

from __future__ import annotations

import abc
import copy
import io

import numpy as np
import torch
from torch import nn

from ..deploy.export import INPUT_NAME, OUTPUT_NAME, onnx_graph
from ..errors import FertoolError
from ..models.resnet import fold_batchnorm
from ..recipe import PRECISIONS, RECHECK_MARGIN
from ..utils import precision as precision_mode

__all__ = [
    "ENGINES",
    "PRECISIONS",
    "RECHECK_MARGIN",
    "InferenceEngine",
    "TorchEngine",
    "OnnxRuntimeEngine",
    "Int8Engine",
    "CheckedEngine",
    "build_engine",
    "checked_bf16",
    "recheck_margin",
    "choose_engine",
    "bf16_supported",
    "onnxruntime_available",
]

ENGINES = ("auto", "torch", "onnxruntime")


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def bf16_supported(device: torch.device | str) -> bool:
    """True where bf16 arithmetic is native: CUDA with bf16, or a CPU with AVX512-BF16 or AMX."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu" or not torch.backends.mkldnn.is_available():
        return False
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")  # private torch.cpu probes
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


class InferenceEngine(abc.ABC):
    """(B, 3, S, S) float32 images on ``device`` -> (B, C) float32 logits on ``device``."""

    name = "?"
    device: torch.device

    @abc.abstractmethod
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of one batch (no gradients)."""

    def describe(self) -> str:
        return self.name


class TorchEngine(InferenceEngine):
    """Eager PyTorch on an eval-mode copy of the model with BatchNorm folded in.

    ``copy_model=False`` runs ``model`` itself, unchanged apart from eval mode and memory layout
    (for callers that need its hooks or recorded attention).  ``channels_last`` defaults to
    True (faster on CPUs and GPUs for these convolution networks).
    """

    name = "torch"

    def __init__(
        self,
        model: nn.Module,
        *,
        device: torch.device | str = "cpu",
        precision: str = "fp32",
        channels_last: bool = True,
        copy_model: bool = True,
    ) -> None:
        self.device = torch.device(device)
        if precision not in PRECISIONS:
            raise FertoolError(f"precision: unknown precision {precision!r} (known: {', '.join(PRECISIONS)})")
        self.precision = precision
        self.channels_last = channels_last
        if copy_model:
            model = fold_batchnorm(copy.deepcopy(model).eval())
        self.model = model.to(self.device).eval()
        if channels_last:
            self.model.to(memory_format=torch.channels_last)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), precision_mode(self.device, self.precision):
            return self.model(x).float()

    def describe(self) -> str:
        return f"torch ({self.precision}{', channels_last' if self.channels_last else ''})"


def recheck_margin(margin: float) -> float:
    """``margin`` of a :class:`CheckedEngine` as a float; negative or NaN is a FertoolError."""
    if not margin >= 0:
        raise FertoolError(f"recheck_margin: must be >= 0, got {margin}")
    return float(margin)


class CheckedEngine(InferenceEngine):
    """A low-precision engine whose close calls are recomputed by an exact one.

    Rows whose two best logits from ``fast`` are less than ``margin`` x the row's largest
    |logit| apart are run again by ``exact``, and take its logits.  ``rows`` and
    ``rechecked`` count what went through and what was recomputed.
    """

    def __init__(self, fast: InferenceEngine, exact: InferenceEngine, *, margin: float = RECHECK_MARGIN) -> None:
        self.fast, self.exact, self.margin = fast, exact, recheck_margin(margin)
        self.device = fast.device
        self.rows = self.rechecked = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.fast(x)
        best = logits.topk(2, dim=1).values  # (B, 2); models have >= 2 classes
        # (a margin of 0 selects nothing: the gap is never negative)
        close = best[:, 0] - best[:, 1] < self.margin * logits.abs().amax(dim=1)
        if close.any():
            logits = logits.clone()
            logits[close] = self.exact(x[close])
        self.rows += len(logits)
        self.rechecked += int(close.sum())
        return logits

    def describe(self) -> str:
        return f"{self.fast.describe()}; close calls (< {self.margin:g} x max |logit|) by {self.exact.describe()}"


def checked_bf16(
    model: nn.Module, *, device: torch.device | str = "cpu", margin: float = RECHECK_MARGIN, channels_last: bool = True
) -> CheckedEngine:
    """bf16 torch engine with float32 rechecks of close calls; both share one model copy."""
    fast = TorchEngine(model, device=device, precision="bf16", channels_last=channels_last)
    exact = TorchEngine(fast.model, device=device, precision="fp32", channels_last=channels_last, copy_model=False)
    return CheckedEngine(fast, exact, margin=margin)


class OnnxRuntimeEngine(InferenceEngine):
    """ONNX Runtime (CPU provider) on the model's ONNX graph, exported in memory."""

    name = "onnxruntime"

    def __init__(self, model: nn.Module, *, threads: int | None = None, opset: int = 17) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise FertoolError(
                "--engine onnxruntime: the onnxruntime package is not installed (pip install onnx onnxruntime)"
            ) from None
        self.device = torch.device("cpu")
        model = copy.deepcopy(model).cpu().eval()
        size = int(getattr(model, "input_size", 224))
        graph = io.BytesIO()
        onnx_graph(model, torch.zeros(1, 3, size, size), graph, opset=opset)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        self.session = ort.InferenceSession(graph.getvalue(), options, providers=["CPUExecutionProvider"])
        self.input_name, self.output_name = INPUT_NAME, OUTPUT_NAME
        self.version = ort.__version__

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        images = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        (logits,) = self.session.run([self.output_name], {self.input_name: images})
        return torch.from_numpy(logits)

    def describe(self) -> str:
        return f"onnxruntime {self.version} (CPU)"


class Int8Engine(InferenceEngine):
    """ONNX Runtime (CPU) on an int8 graph (:func:`fertool.deploy.quantize.quantize_onnx`): the
    model's graph quantized statically with ranges from ``calibration`` (N, 3, S, S) float32
    prepared faces, or a given quantized ``graph`` that outputs logits (``predict --precision int8``)."""

    name = "onnxruntime-int8"

    def __init__(
        self,
        model: nn.Module | None = None,
        calibration: np.ndarray | None = None,
        *,
        graph: bytes | None = None,
        threads: int | None = None,
        opset: int = 17,
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise FertoolError(
                "precision int8: the onnxruntime package is not installed (pip install onnx onnxruntime)"
            ) from None
        if graph is None:
            from ..deploy.quantize import quantize_onnx

            if model is None or calibration is None:
                raise FertoolError("precision int8: give a model and calibration faces, or a quantized graph")
            model = copy.deepcopy(model).cpu().eval()
            size = int(getattr(model, "input_size", 224))
            buf = io.BytesIO()
            onnx_graph(model, torch.zeros(1, 3, size, size), buf, opset=opset)
            graph = quantize_onnx(buf.getvalue(), calibration)
        self.device = torch.device("cpu")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        self.session = ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.version = ort.__version__
        self.graph = graph

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        images = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        (logits,) = self.session.run(None, {self.input_name: images})
        return torch.from_numpy(logits)

    def describe(self) -> str:
        return f"onnxruntime {self.version} int8 (static, QDQ, CPU)"


def choose_engine(engine: str, device: torch.device | str = "cpu", precision: str = "fp32") -> str:
    """The concrete engine (``torch`` or ``onnxruntime``) that ``engine`` means for ``device``
    and ``precision``; every impossible combination is a :class:`FertoolError`.

    ``auto`` takes ONNX Runtime for float32 on the CPU when it is installed, else torch.
    """
    device = torch.device(device)
    if engine not in ENGINES:
        raise FertoolError(f"engine: unknown engine {engine!r} (known: {', '.join(ENGINES)})")
    if precision not in PRECISIONS:
        raise FertoolError(f"precision: unknown precision {precision!r} (known: {', '.join(PRECISIONS)})")
    if precision == "bf16" and device.type != "cuda" and not bf16_supported(device):
        # (CUDA autocast runs bf16 on any GPU, as training's train.precision does)
        raise FertoolError(f"precision bf16: {device} has no native bf16 support (use precision=fp32)")
    if engine == "auto":
        engine = "onnxruntime" if device.type == "cpu" and precision == "fp32" and onnxruntime_available() else "torch"
    if engine == "onnxruntime":
        if device.type != "cpu":
            raise FertoolError(f"engine onnxruntime: runs on the CPU only (device is {device}; use engine=torch)")
        if precision != "fp32":
            raise FertoolError(f"engine onnxruntime: float32 only (use engine=torch for precision={precision})")
    return engine


def build_engine(
    model: nn.Module,
    engine: str = "auto",
    *,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    channels_last: bool = True,
    recheck: float | None = None,
) -> InferenceEngine:
    """The engine named ``engine`` (``auto``, ``torch``, ``onnxruntime``; see
    :func:`choose_engine`) for ``model`` on ``device``.  The model itself is not modified
    (engines work on a copy).  ``recheck`` (bf16 only): the margin of a
    :class:`CheckedEngine` around the bf16 engine; None or 0 for plain bf16."""
    if choose_engine(engine, device, precision) == "onnxruntime":
        return OnnxRuntimeEngine(model)
    if precision == "bf16" and recheck:
        return checked_bf16(model, device=device, margin=recheck, channels_last=channels_last)
    return TorchEngine(model, device=device, precision=precision, channels_last=channels_last)
