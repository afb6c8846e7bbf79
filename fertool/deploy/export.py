"""Export a checkpoint's model to ONNX or TorchScript, with its preprocessing contract.

The exported graph maps float32 images (B, 3, S, S) with raw grey values 0..255 (one
grey image replicated to three channels, NCHW) to softmax probabilities (B, C) in
``class_names`` order; the batch axis is dynamic.  Everything a deployer needs to feed it
correctly travels inside the file (:func:`export_metadata`):

* ONNX: ``metadata_props`` — ``fertool`` holds the whole contract as JSON, and the main
  fields are repeated as plain keys (``input_size``, ``class_names``, ...).  Needs the
  ``onnx`` package (installed with fertool).
* TorchScript: ``torch.jit.trace`` of the eval-mode model, with the contract as the extra
  file ``fertool.json`` (``torch.jit.load(path, _extra_files={"fertool.json": ""})``).

After export the file is loaded back and run on a few random 0..255 images; the largest
absolute difference of its probabilities from the PyTorch model's is returned (ONNX is
checked with onnxruntime when installed).  The file is written to a temporary sibling
and only moved into place when export and check succeeded.

The ONNX graph uses the TorchScript-based exporter (``dynamo=False``): it handles the
LHC module (einsum, pools, softmax) and needs no extra package; the dynamo exporter
would require ``onnxscript``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import warnings
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..errors import FertoolError, ModelError, printable
from ..files import write_failure
from ..tempfiles import sweep_stale, temp_file
from . import file_mode

__all__ = ["FORMATS", "export_model", "export_metadata", "read_export_metadata", "onnx_graph", "PREPARATION"]

FORMATS = ("onnx", "torchscript")
METADATA_NAME = "fertool.json"
INPUT_NAME = "images"
OUTPUT_NAME = "probs"

#: How an image must be made before it enters the exported model (docs/protocol.md §1).
PREPARATION = (
    "face crop (square, with a margin) -> grey -> 48x48 (cv2.INTER_AREA, FER2013's size) -> "
    "bilinear resize to SxS in float32 with half-pixel centres and no antialiasing (TensorFlow 2 "
    "tf.image.resize) -> floor to uint8 -> grey replicated to 3 channels -> JPEG quality 100, 4:4:4 "
    "round trip (as the stored training images) -> float32 NCHW, raw values 0..255 (no mean/std: "
    "the network's first BatchNorm normalises). fertool.deploy.faces.face_to_input does all of it."
)


def photo_preparation_text(prepare: Mapping[str, Any]) -> str:
    """The preparation of a model trained on photos (class folders, RAF-DB), in words."""
    fit = "centred square crop" if prepare.get("fit", "crop") == "crop" else "the whole crop stretched to a square"
    colour = (
        "converted to grey and replicated to 3 channels" if prepare.get("colour") == "grey" else "kept in colour (RGB)"
    )
    return (
        f"face crop (square, with a margin) -> {fit} -> resize to SxS (cv2.INTER_AREA when shrinking, "
        f"bilinear when enlarging) -> {colour} -> JPEG quality {prepare.get('jpeg_quality', 100)}, "
        f"{prepare.get('subsampling', '4:4:4')} round trip (as the stored training images) -> float32 NCHW, "
        "raw values 0..255 (no mean/std). fertool.data.prepare_images.prepared_photo does the resizing."
    )


class _WithSoftmax(nn.Module):
    """The classifier followed by a softmax: (B, 3, S, S) 0..255 -> (B, C) probabilities."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(images), dim=-1)


def export_metadata(ckpt: Mapping[str, Any], *, fmt: str, checkpoint_path: str | os.PathLike | None = None) -> dict:
    """The preprocessing contract and provenance stored in an export (plain JSON types)."""
    from ..checkpoint import checkpoint_classes, photo_preparation

    arch_args = dict(ckpt.get("arch_args") or {})
    size = int(arch_args.get("input_size", 224))
    classes = list(checkpoint_classes(ckpt))
    photo = photo_preparation(ckpt)
    grey = photo is None or photo.get("colour") == "grey"
    return {
        "format": "fertool-export",
        "fertool_version": __version__,
        "export_format": fmt,
        "arch": ckpt.get("arch"),
        "arch_args": arch_args,
        "stage": ckpt.get("stage"),
        "epoch": ckpt.get("epoch"),
        "checkpoint": Path(checkpoint_path).name if checkpoint_path is not None else None,
        "class_names": classes,
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", 3, size, size],
            "size": size,
            "dtype": "float32",
            "layout": "NCHW",
            "channels": "RGB with three identical channels (grey replicated)" if grey else "RGB",
            "value_range": [0.0, 255.0],
            "normalisation": "none",
        },
        "output": {
            "name": OUTPUT_NAME,
            "shape": ["batch", len(classes)],
            "meaning": "softmax probabilities in class_names order",
        },
        "preparation": PREPARATION if photo is None else photo_preparation_text(photo),
    }


@contextlib.contextmanager
def _quiet_export():
    """Silence tracer/exporter warnings (Python-level shape checks in the LHC layer) and
    TorchScript's deprecation notices."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _export_torchscript(wrapped: nn.Module, sample: torch.Tensor, path: Path, metadata: dict) -> None:
    with _quiet_export(), torch.no_grad():
        traced = torch.jit.trace(wrapped, (sample,), check_trace=False)
        buffer = io.BytesIO()  # in memory first: a full disk is an OSError here, not a C++ abort
        torch.jit.save(traced, buffer, _extra_files={METADATA_NAME: json.dumps(metadata)})
    with open(path, "wb") as fh:
        fh.write(buffer.getbuffer())


def _require_onnx():
    try:
        import onnx
    except ImportError:
        raise FertoolError("ONNX export needs the 'onnx' package: pip install onnx onnxruntime") from None
    return onnx


def onnx_graph(module: nn.Module, sample: torch.Tensor, f: str | os.PathLike | io.BytesIO, *, opset: int = 17) -> None:
    """Write ``module``'s ONNX graph to ``f`` (a path or a bytes buffer): input ``images``,
    output ``probs`` (whatever the module returns), dynamic batch axis."""
    with _quiet_export(), torch.no_grad():
        try:
            torch.onnx.export(
                module,
                (sample,),
                f if isinstance(f, io.BytesIO) else str(f),
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        except Exception as exc:  # the exporter raises many types; report one line
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"ONNX export (opset {opset}) failed: {first[:200]}") from None


def _export_onnx(wrapped: nn.Module, sample: torch.Tensor, path: Path, metadata: dict, opset: int) -> None:
    onnx = _require_onnx()
    onnx_graph(wrapped, sample, path, opset=opset)
    model = onnx.load(str(path))
    del model.metadata_props[:]
    flat = {
        "fertool": json.dumps(metadata),
        "fertool_version": metadata["fertool_version"],
        "arch": str(metadata["arch"]),
        "class_names": json.dumps(metadata["class_names"]),
        "input_size": str(metadata["input"]["size"]),
        "input_layout": "NCHW, grey replicated to 3 channels",
        "input_value_range": "0..255 float32, no normalisation",
        "output": "softmax probabilities",
    }
    for key, value in flat.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.doc_string = f"fertool {metadata['arch']} facial expression classifier. Input preparation: {PREPARATION}"
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _run_export(path: Path, fmt: str, x: torch.Tensor) -> tuple[np.ndarray | None, str | None]:
    """Probabilities of the exported file on ``x``, and the runtime used (None: not checked)."""
    if fmt == "torchscript":
        with _quiet_export():  # torch.jit.load warns that TorchScript is deprecated
            loaded = torch.jit.load(str(path), map_location="cpu")
        with torch.no_grad():
            return loaded(x).numpy(), f"torch.jit {torch.__version__}"
    try:
        import onnxruntime as ort
    except ImportError:
        return None, None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0], f"onnxruntime {ort.__version__}"


def export_model(
    checkpoint_path: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    fmt: str,
    opset: int = 17,
    batch: int = 2,
    samples: int = 4,
    seed: int = 0,
    tolerance: float = 1e-4,
    progress: Callable[..., None] | None = None,
    quantize: str | None = None,
    calibration: np.ndarray | None = None,
) -> dict:
    """Export the checkpoint's model (eval mode, softmax output) to ``out_path``.

    ``fmt``: ``onnx`` or ``torchscript``.  ``batch``: batch size of the example input
    used for tracing (the batch axis stays dynamic: the check runs ``samples`` images at
    once).  Returns ``{"max_abs_diff": float | None, "checked_with": str | None,
    "metadata": dict, "path": str, "bytes": int, "bound": float}``; a probability difference
    above ``bound`` (:func:`parity_bound`: ``tolerance`` per unit of the largest |logit|, at
    least 1) raises :class:`ModelError` and leaves ``out_path`` as it was.
    ``quantize="int8"`` (ONNX only): the graph is quantized statically (int8 QDQ,
    :mod:`fertool.deploy.quantize`), calibrated on ``calibration`` (N, 3, S, S) float32 images,
    by default 64 prepared faces of the synthetic sample; the check then reports the largest
    probability difference and ``top1_agreement`` with PyTorch instead of enforcing ``tolerance``.
    """
    from ..checkpoint import load_checkpoint
    from ..surgery import model_from_checkpoint

    if fmt not in FORMATS:
        raise FertoolError(f"fmt: unknown export format {fmt!r} (known: {', '.join(FORMATS)})")
    if batch < 1:
        raise FertoolError(f"batch: must be >= 1, got {batch}")
    if samples < 1:
        raise FertoolError(f"samples: must be >= 1, got {samples}")
    out_path = Path(out_path)
    if out_path.is_dir():
        raise FertoolError(f"out_path {out_path}: is a folder, expected a file name")
    if fmt == "onnx":
        _require_onnx()
    if quantize not in (None, "int8"):
        raise FertoolError(f"quantize: unknown quantization {quantize!r} (known: int8)")
    if quantize and fmt != "onnx":
        raise FertoolError(f"quantize: int8 quantization is for the onnx format, not {fmt}")
    ckpt = load_checkpoint(checkpoint_path)
    model = model_from_checkpoint(ckpt).eval()
    size = int(getattr(model, "input_size", ckpt["arch_args"].get("input_size", 224)))
    metadata = export_metadata(ckpt, fmt=fmt, checkpoint_path=checkpoint_path)
    wrapped = _WithSoftmax(model).eval()
    gen = torch.Generator().manual_seed(seed)
    sample = torch.randint(0, 256, (batch, 3, size, size), generator=gen).to(torch.float32)
    check = torch.randint(0, 256, (samples, 3, size, size), generator=gen).to(torch.float32)

    step = 0

    def tick(description: str) -> None:
        nonlocal step
        if progress is not None:
            progress(step, 3, description=description)
        step += 1

    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        sweep_stale(out_path.parent, out_path.name)  # temporaries of killed exports
        tmp = temp_file(out_path)
    except OSError as exc:
        raise write_failure(exc, out_path) from None
    try:
        tick(f"export {fmt}")
        if fmt == "onnx":
            _export_onnx(wrapped, sample, tmp, metadata, opset)
            if quantize:
                tick("int8 quantization")
                _quantize_file(tmp, size, calibration)
        else:
            _export_torchscript(wrapped, sample, tmp, metadata)
        tick("parity check")
        with torch.no_grad():
            logits = model(check)
            expected = torch.softmax(logits, dim=-1).numpy()  # (samples, C): what wrapped(check) gives
        got, checked_with = _run_export(tmp, fmt, check)
        max_abs_diff = float(np.abs(got - expected).max()) if got is not None else None
        agreement = float((got.argmax(1) == expected.argmax(1)).mean()) if got is not None else None
        bound = parity_bound(tolerance, logits)
        if max_abs_diff is not None and not quantize and not max_abs_diff <= bound:
            raise ModelError(
                f"{printable(out_path)}: exported model disagrees with PyTorch (max |p diff| = {max_abs_diff:.3g} "
                f"> {bound:.3g} = tolerance {tolerance:g} x max(1, largest |logit| "
                f"{float(logits.abs().max()):.3g}), {checked_with}); nothing written"
            )
        tick("done")
        os.chmod(tmp, file_mode())
        os.replace(tmp, out_path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        failure = write_failure(exc, out_path, tmp)
        if failure is not None:
            raise failure from None
        raise
    return {
        "path": str(out_path),
        "format": fmt,
        "bytes": out_path.stat().st_size,
        "max_abs_diff": max_abs_diff,
        "checked_with": checked_with,
        "samples": samples,
        "metadata": metadata,
        "quantize": quantize,
        "top1_agreement": agreement,
        "bound": bound if not quantize else None,
    }


def parity_bound(tolerance: float, logits: torch.Tensor) -> float:
    """The largest probability difference accepted between an export and PyTorch.

    ``tolerance`` scaled by the largest |logit| of the reference output (at least 1).  Why:
    float32 keeps about 7 significant digits and every operation rounds relative to its
    operands, so two correct runtimes (different kernels, fused or reordered sums) differ in
    the logits by an amount proportional to their magnitude, not by a fixed amount; and a
    softmax turns a logit error into a probability error at most half its size
    (``dp_i = p_i (dz_i - sum_j p_j dz_j)``).  A fixed absolute bound therefore refuses
    sound exports of models with large logits (an augment-lhc'd stage-1 model: 1.76e-4
    against 1e-4), while a wrong graph (a missing layer, swapped channels) changes the
    probabilities by orders of magnitude more than ``tolerance x |logit|``.  A model whose
    logits stay within 1 keeps ``tolerance`` as an absolute bound.
    """
    scale = float(logits.detach().abs().max()) if logits.numel() else 1.0
    return float(tolerance) * max(1.0, scale if np.isfinite(scale) else 1.0)


def _quantize_file(path: Path, size: int, calibration: np.ndarray | None) -> None:
    """Replace the float32 ONNX file ``path`` by its int8 version, fertool metadata kept."""
    import onnx

    from .quantize import quantize_onnx

    what = "the given calibration images"
    if calibration is None:
        from ..data.datasets import ReferenceSplit
        from ..data.sample import generate_faces

        images, labels, splits = generate_faces()
        rows = np.flatnonzero(splits == 0)[:64]
        split = ReferenceSplit(images=images[rows], labels=torch.from_numpy(labels[rows]), size=size)
        calibration = split.load(torch.arange(len(rows))).float().numpy()
        what = f"{len(rows)} prepared faces of the synthetic sample"
    fp32 = onnx.load(str(path))
    quantized = onnx.load_from_string(quantize_onnx(path, calibration))
    del quantized.metadata_props[:]
    for prop in fp32.metadata_props:
        entry = quantized.metadata_props.add()
        entry.key, entry.value = prop.key, prop.value
    entry = quantized.metadata_props.add()
    entry.key, entry.value = "quantization", f"int8 static (QDQ, per-channel weights), calibrated on {what}"
    quantized.doc_string = fp32.doc_string
    onnx.save(quantized, str(path))


def read_export_metadata(path: str | os.PathLike) -> dict:
    """The fertool contract stored in an exported ``.onnx`` or TorchScript file."""
    path = Path(path)
    if not path.is_file():
        raise FertoolError(f"{path}: no such file")
    if zipfile.is_zipfile(path):  # TorchScript archives are zip files: read the extra file only
        with zipfile.ZipFile(path) as zf:
            names = [n for n in zf.namelist() if n.endswith(f"/extra/{METADATA_NAME}")]
            if not names:
                raise FertoolError(f"{path}: TorchScript file without {METADATA_NAME} (not exported by fertool)")
            return json.loads(zf.read(names[0]).decode("utf-8"))
    onnx = _require_onnx()
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:
        raise FertoolError(f"{path}: neither a TorchScript archive nor an ONNX model") from None
    props = {p.key: p.value for p in model.metadata_props}
    if "fertool" not in props:
        raise FertoolError(f"{path}: ONNX model without fertool metadata (not exported by fertool)")
    return json.loads(props["fertool"])
