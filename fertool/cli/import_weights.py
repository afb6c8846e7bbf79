"""``fertool import``: foreign weights -> a fertool checkpoint.

Keras ``.h5``/``.h5.gz`` files (the classification_models ResNet34 ImageNet weights the paper
started from) and the authors' TensorFlow checkpoints of LHC-Net / LHC-NetC.
``import-keras`` is the command's former name, kept as a hidden alias.
"""

from __future__ import annotations

from pathlib import Path

import typer

from ._common import QuietOption, err, out, progress_callback, shown


def import_cli(
    source: Path = typer.Argument(
        ...,
        metavar="FILE-OR-PREFIX",
        help="Keras weight file (.h5 or .h5.gz, no-top or whole model), or a TensorFlow checkpoint: its prefix "
        "(e.g. LHC_Net/LHC_Net), its .index file, or the folder holding its 'checkpoint' file.",
    ),
    out_path: Path = typer.Option(..., "--out", "-o", help="fertool checkpoint to write."),
    input_size: int | None = typer.Option(
        None,
        "--input-size",
        min=32,
        show_default=False,
        help="Keras files: input size the model will take (default 224).",
    ),
    num_classes: int | None = typer.Option(
        None, "--num-classes", min=2, show_default=False, help="Keras files: classes of the head (default 7)."
    ),
    seed: int | None = typer.Option(
        None,
        "--seed",
        show_default=False,
        help="Keras files: seed of the head when the file has none that fits (default 0).",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output checkpoint."),
    force: bool = typer.Option(False, "--force", hidden=True, help="Former name of --overwrite."),
    quiet: bool = QuietOption,
) -> None:
    """Import foreign weights (Keras, TensorFlow) as a fertool checkpoint.

    The ResNet34 ImageNet weights the paper started from (Keras .h5, for stage 1 via model.pretrained), or the authors' trained LHC-Net / LHC-NetC (TensorFlow checkpoints), ready for evaluate, ablate, predict and export.
    """
    from ..errors import CheckpointError
    from ..precheck import weights_source

    if out_path.exists() and not (overwrite or force):
        raise CheckpointError(f"{out_path}: already exists (pass --overwrite to replace it)")
    weights_source(source)  # before the import of torch (seconds)
    from ..checkpoint import save_checkpoint
    from ..models.importer import import_weights

    with progress_callback("importing weights", quiet=quiet, unit="tensor") as progress:
        ckpt = import_weights(source, input_size=input_size, num_classes=num_classes, seed=seed, progress=progress)
    save_checkpoint(out_path, ckpt)
    extra = ckpt["extra"]
    if "keras_version" in extra:
        n = sum(v.numel() for k, v in ckpt["state_dict"].items() if not k.startswith("head.") and v.is_floating_point())
        out.print(
            f"{shown(out_path)}: resnet34v2, {n:,} backbone values from {shown(source)} "
            f"(Keras {shown(extra['keras_version'])}); head {shown(extra['keras_head'])}"
        )
    else:
        n = sum(v.numel() for v in ckpt["state_dict"].values() if v.is_floating_point())
        files = ", ".join(f"{shown(f['name'])} (sha256 {f['sha256'][:12]}...)" for f in extra["source_files"])
        out.print(
            f"{shown(out_path)}: {shown(ckpt['arch'])}, {extra['tensors']} tensors = {n:,} values from {files}; "
            f"{extra['skipped_entries']} optimizer/bookkeeping entries skipped"
        )
    if not quiet:
        err.print(f"wrote {shown(out_path)}")


def register(app: typer.Typer) -> None:
    app.command("import")(import_cli)
    app.command("import-keras", hidden=True)(import_cli)
