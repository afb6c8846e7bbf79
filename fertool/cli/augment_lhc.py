"""``fertool augment-lhc``: add LHC modules (or LHC-NetC controllers) to a trained checkpoint."""

from __future__ import annotations

from pathlib import Path

import typer

from ._common import QuietOption, RecipeOption, SetOption, err, out, shown


def augment_lhc_cli(
    checkpoint: Path | None = typer.Option(
        None, "--checkpoint", "-c", help="Trained backbone (or LHC-Net with --controller) checkpoint."
    ),
    out_path: Path | None = typer.Option(None, "--out", "-o", help="Checkpoint to write."),
    run: Path | None = typer.Option(
        None,
        "--run",
        help="Run folder: read stage3/best.pt, write stage4/init.pt "
        "(with --controller: stage4/best.pt -> controller/init.pt).",
    ),
    controller: bool = typer.Option(
        False, "--controller", help="Add the LHC-NetC controllers (model.controller_init) too / instead."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the new LHC modules' initial weights."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output checkpoint."),
    force: bool = typer.Option(False, "--force", hidden=True, help="Old name of --overwrite."),
    recipe: str | None = RecipeOption,
    sets: list[str] | None = SetOption,
    quiet: bool = QuietOption,
) -> None:
    """Build LHC-Net from a trained ResNet34v2 checkpoint, or LHC-NetC with --controller.

    The LHC modules come from model.lhc (Table 2 by default). Every backbone tensor is copied bit for bit; the new modules are initialised from --seed. Without --recipe the checkpoint's own recipe is used.
    """
    from ..errors import CheckpointError
    from ..precheck import checkpoint_file

    if run is not None:
        if checkpoint is not None or out_path is not None:
            raise CheckpointError("--run: takes the place of --checkpoint and --out; give one or the other")
        src_stage, dst_stage = ("stage4", "controller") if controller else ("stage3", "stage4")
        checkpoint = run / src_stage / "best.pt"
        out_path = run / dst_stage / "init.pt"
        if not checkpoint.is_file():
            raise CheckpointError(f"{checkpoint}: not found (train {src_stage} of {run} first)")
    if checkpoint is None or out_path is None:
        raise CheckpointError("give --checkpoint CKPT and --out CKPT, or --run DIR")
    checkpoint_file(checkpoint)  # before the import of torch (seconds)
    from ..surgery import augment_lhc_file

    result = augment_lhc_file(
        checkpoint,
        out_path,
        recipe=recipe,
        overrides=sets or (),
        controller=controller,
        seed=seed,
        overwrite=overwrite or force,
    )
    ckpt = result["checkpoint"]
    what = "LHC modules" if result["added"] == "lhc" else "controllers"
    if result["added"] == "lhc" and ckpt["arch_args"].get("controller_init") is not None:
        what = "LHC modules and controllers"
    n = len(ckpt["arch_args"].get("lhc") or [])
    out.print(
        f"{shown(result['out'])}: {shown(result['arch'])} ({what} added to {shown(checkpoint)}, {n} modules, "
        f"LHC seed {result['lhc_seed']})"
    )
    if not quiet:
        err.print(f"wrote {shown(result['out'])} and {shown(result['recipe'])}")


def register(app: typer.Typer) -> None:
    app.command("augment-lhc")(augment_lhc_cli)
