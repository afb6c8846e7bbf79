"""``fertool info``: the blocks of a model with parameters, output shapes and FLOPs."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import printable
from ._common import QuietOption, RecipeOption, SetOption, out


def info_cli(
    checkpoint: Path | None = typer.Option(None, "--checkpoint", "-c", help="fertool checkpoint."),
    kind: str = typer.Option("lhc", "--kind", help="With --recipe: backbone, lhc or controller."),
    recipe: str | None = RecipeOption,
    sets: list[str] | None = SetOption,
    quiet: bool = QuietOption,  # accepted like every command's; info writes no notes
) -> None:
    """Table of a model's modules, from a checkpoint or a recipe.

    Lists parameters, output shape and FLOPs per image, with totals in PyTorch and Keras counting and the LHC share.
    """
    from ..errors import ModelError
    from ._artifacts import checkpoint_file

    if (checkpoint is None) == (recipe is None):
        raise ModelError("give exactly one of --checkpoint CKPT or --recipe RECIPE")
    if checkpoint is not None:
        checkpoint_file(checkpoint)  # before the import of torch (seconds)
    from ..checkpoint import load_checkpoint
    from ..models import arch_from_recipe, build_model
    from ..models.summary import summarize
    from ..recipe import load_recipe

    if checkpoint is not None:
        from ._artifacts import resolve_checkpoint

        checkpoint = resolve_checkpoint(checkpoint, quiet=quiet)
        ckpt = load_checkpoint(checkpoint)
        arch, args = ckpt["arch"], ckpt["arch_args"]
        model = build_model(arch, **args)
        source = str(checkpoint)
    else:
        from ._common import load_recipe_from_options

        rcp = load_recipe_from_options(recipe, sets)
        arch, args = arch_from_recipe(rcp.model, kind)
        model = build_model(arch, **args)
        ckpt = None
        source = f"recipe {recipe} ({kind})"
    size = int(args.get("input_size", 224))
    render(summarize(model, size), title=f"{arch} at {size}x{size} — {source}", ckpt=ckpt)
    widths = "-".join(str(c) for c in model.channels)
    out.print(
        f"width: stem {model.stem_width}, stages {widths}"
        + (" (the paper's)" if (model.stem_width, widths) == (64, "64-128-256-512") else "")
    )
    if ckpt is None or ckpt.get("recipe"):
        train = rcp.train if ckpt is None else load_recipe(ckpt["recipe"], stored=True).train
        out.print(
            f"precision: training {train.precision}, evaluation {train.eval_precision}"
            + (" (the checkpoint's recipe)" if ckpt is not None else "")
        )
        from ..engine.schedule import active_options, describe_options

        stages = [str(ckpt.get("stage"))] if ckpt is not None else list(train.stages)
        for name in stages:
            if name in train.stages and (options := active_options(train.stages[name], train.precision)):
                out.print(f"stage {name} options beyond the paper: {describe_options(options)}")
        if train.log:
            out.print(f"training logs: {', '.join(train.log)}")


def _fmt_flops(f: int) -> str:
    return f"{f / 1e9:.3f} G" if f >= 1e8 else f"{f / 1e6:.2f} M"


def render(summary, *, title: str, ckpt: dict | None = None) -> None:
    from rich.table import Table

    table = Table(title=title, title_justify="left")
    table.add_column("module")
    table.add_column("params", justify="right")
    table.add_column("output shape", justify="right")
    table.add_column("FLOPs/image", justify="right")
    for row in summary.rows:
        style = "bold magenta" if row.kind == "lhc" else None
        table.add_row(row.name, f"{row.params:,}", " x ".join(map(str, row.shape)), _fmt_flops(row.flops), style=style)
    table.add_section()
    table.add_row("total", f"{summary.params:,}", "", _fmt_flops(summary.flops), style="bold")
    out.print(table)
    out.print(
        f"parameters: {summary.params:,} (PyTorch) = {summary.keras_params:,} in Keras counting "
        f"(+{summary.bn_moving:,} BatchNorm moving statistics)"
    )
    if summary.lhc_params:
        out.print(
            f"LHC modules: {summary.lhc_params:,} parameters = {100 * summary.lhc_share:.1f}% of the "
            f"Keras total; {100 * summary.lhc_flop_share:.1f}% of the FLOPs"
        )
    else:
        out.print("LHC modules: none")
    out.print("FLOPs: convolutions and matrix products, 2 per multiply-add")
    if ckpt is not None:
        metrics = ", ".join(
            f"{printable(k)} {v:.4f}" for k, v in (ckpt.get("metrics") or {}).items() if isinstance(v, float)
        )
        out.print(
            f"checkpoint: stage {printable(ckpt.get('stage'))}, epoch {ckpt.get('epoch')}"
            + (f", {metrics}" if metrics else "")
            + (
                f", LHC seed {ckpt['extra']['lhc_seed']}"
                if (ckpt.get("extra") or {}).get("lhc_seed") is not None
                else ""
            ),
            markup=False,
            highlight=False,
        )
        from ..checkpoint import checkpoint_classes

        classes = checkpoint_classes(ckpt)
        data = (ckpt.get("extra") or {}).get("data") or {}
        source = f" ({data['dataset']}, {data.get('label_mode', 'majority')} labels)" if data.get("dataset") else ""
        out.print(
            printable(f"classes{source}: {len(classes)}: {', '.join(classes)}"),
            highlight=False,
            markup=False,
            soft_wrap=True,
        )


def register(app: typer.Typer) -> None:
    app.command("info")(info_cli)
