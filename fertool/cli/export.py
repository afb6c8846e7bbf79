"""``fertool export``: a checkpoint's model as ONNX or TorchScript, checked against PyTorch."""

from __future__ import annotations

import contextlib
from enum import Enum
from pathlib import Path

import typer

from ..errors import printable
from ._common import QuietOption, err, out, shown


class ExportFormat(str, Enum):
    onnx = "onnx"
    torchscript = "torchscript"


def export_cmd(
    checkpoint: Path = typer.Option(..., "--checkpoint", "-c", help="fertool checkpoint (.pt) to export."),
    fmt: ExportFormat = typer.Option(
        ..., "--format", "-f", help="onnx (needs the 'export' extra: onnx, onnxruntime) or torchscript."
    ),
    out_path: Path = typer.Option(..., "--out", "-o", help="Output file (.onnx / .pt); replaced only on success."),
    opset: int = typer.Option(17, "--opset", min=9, help="ONNX opset version."),
    batch: int = typer.Option(
        2, "--batch", min=1, help="Batch size of the tracing example (the batch axis stays dynamic)."
    ),
    samples: int = typer.Option(4, "--samples", min=1, help="Random 0..255 images for the parity check."),
    tolerance: float = typer.Option(
        1e-4,
        "--tolerance",
        min=0.0,
        help="Largest accepted |probability difference| from the PyTorch model, "
        "per unit of the largest |logit| (when above 1): float32 rounding grows with the logits.",
    ),
    quantize: str | None = typer.Option(
        None,
        "--quantize",
        metavar="int8",
        help="int8: ONNX Runtime static quantization (QDQ), calibrated on prepared faces of the synthetic sample; "
        "the check then reports the difference and top-1 agreement instead of enforcing --tolerance.",
    ),
    quiet: bool = QuietOption,
) -> None:
    """Export the model (eval mode, softmax output, dynamic batch) with its preprocessing contract.

    The input contract (size, raw 0..255 float values, NCHW grey replicated to RGB, class names, architecture, preparation of docs/protocol.md §1) is stored in the file's metadata. The export is then run on random images and compared with the PyTorch model (ONNX with onnxruntime when installed).
    """
    from ._artifacts import checkpoint_file

    checkpoint_file(checkpoint)  # before the import of torch (seconds)
    from ..deploy.export import export_model
    from ._artifacts import resolve_checkpoint

    checkpoint = resolve_checkpoint(checkpoint, quiet=quiet)

    status = err.status(f"exporting to {fmt.value} and checking parity...") if not quiet else contextlib.nullcontext()
    with status:
        info = export_model(
            checkpoint,
            out_path,
            fmt=fmt.value,
            opset=opset,
            batch=batch,
            samples=samples,
            tolerance=tolerance,
            quantize=quantize,
        )
    meta = info["metadata"]
    out.print(f"{shown(info['path'])}: {fmt.value}, {info['bytes'] / 2**20:.1f} MiB", highlight=False, soft_wrap=True)
    out.print(
        f"  {shown(meta['arch'])}: input float32 (batch, 3, {meta['input']['size']}, {meta['input']['size']}) "
        f"raw 0..255, {meta['input']['channels']} -> softmax over {len(meta['class_names'])} classes "
        f"({shown(', '.join(meta['class_names']))})"
    )
    if info["max_abs_diff"] is None:
        out.print("  parity: not checked (onnxruntime is not installed: pip install onnxruntime)")
    else:
        out.print(
            f"  parity: max |softmax difference| = {info['max_abs_diff']:.3g} on {info['samples']} random images "
            f"({info['checked_with']} vs PyTorch)"
            + (f"; int8: top-1 agreement {info['top1_agreement']:.0%}" if info.get("quantize") else "")
        )
    if not quiet:
        err.print(f"wrote {printable(info['path'])}", highlight=False, markup=False, soft_wrap=True)
        err.print("the preprocessing contract is in the file's metadata (fertool.deploy.export.read_export_metadata)")


def register(app: typer.Typer) -> None:
    app.command("export")(export_cmd)
