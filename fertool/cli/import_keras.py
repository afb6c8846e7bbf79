"""``fertool import-keras``: classification_models ResNet34 Keras weights -> fertool checkpoint."""

from __future__ import annotations

from pathlib import Path

import typer

from ._common import err, out


def import_keras_cli(
    h5: Path = typer.Argument(..., help="Keras weight file (.h5 or .h5.gz), no-top or whole model."),
    out_path: Path = typer.Option(..., "--out", "-o", help="fertool checkpoint to write."),
    input_size: int = typer.Option(224, "--input-size", min=32, help="Input size the model will take."),
    num_classes: int = typer.Option(7, "--num-classes", min=2, help="Classes of the head."),
    seed: int = typer.Option(0, "--seed", help="Seed of the head when the file has none that fits."),
    force: bool = typer.Option(False, "--force", help="Replace an existing output checkpoint."),
) -> None:
    """Import the ResNet34 ImageNet weights the paper started from (classification_models,
    Keras .h5) by layer name, as a resnet34v2 checkpoint for stage 1 (model.pretrained)."""
    from ..checkpoint import save_checkpoint
    from ..errors import CheckpointError
    from ..models.keras import import_keras

    if out_path.exists() and not force:
        raise CheckpointError(f"{out_path}: already exists (pass --force to replace it)")
    ckpt = import_keras(h5, input_size=input_size, num_classes=num_classes, seed=seed)
    save_checkpoint(out_path, ckpt)
    n = sum(v.numel() for k, v in ckpt["state_dict"].items() if not k.startswith("head.") and v.is_floating_point())
    out.print(f"{out_path}: resnet34v2, {n:,} backbone values from {h5} "
              f"(Keras {ckpt['extra']['keras_version']}); head {ckpt['extra']['keras_head']}")
    err.print(f"wrote {out_path}")


def register(app: typer.Typer) -> None:
    app.command("import-keras")(import_keras_cli)
