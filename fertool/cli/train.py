"""``fertool train``: one stage of the staged protocol (docs/protocol.md §4) into a run directory."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from ._common import (
    QuietOption,
    RecipeOption,
    SetOption,
    err,
    load_recipe_from_options,
    log_line,
    out,
    progress_callback,
    shown,
)

_HEADER = f"{'epoch':>9}  {'loss':>8}  {'acc':>7}  {'val loss':>8}  {'val acc':>7}  {'img/s':>7}  {'time':>7}"


def _epoch_line(row: dict) -> str:
    epoch = f"{row['epoch']}/{row['max_epochs']}"
    mark = "  [green]best[/green]" if row.get("best") else f"  [dim]wait {row['wait']}/{row['patience']}[/dim]"
    return (
        f"{epoch:>9}  {row['train_loss']:8.4f}  {row['train_accuracy']:7.4f}  {row['val_loss']:8.4f}  "
        f"{row['val_accuracy']:7.4f}  {row['images_per_s']:7.1f}  {row['seconds']:6.1f}s{mark}"
    )


def train_cli(
    recipe: str | None = RecipeOption,
    stage: str = typer.Option(..., "--stage", "-s", help="Stage to train: 1, 2, 3, 4 or controller."),
    run: Path = typer.Option(
        ...,
        "--run",
        "--run-dir",
        help="Run directory; the stage writes RUN/<stage>/.  Under torchrun write --run-dir (torchrun's own "
        "parser takes --run for its --run-path).",
    ),
    csv: Path | None = typer.Option(
        None,
        "--csv",
        help="FER2013 CSV: validation images made the reference way; training images too when no --images.",
    ),
    images: Path | None = typer.Option(
        None, "--images", help="Prepared image folder (`fertool prepare`) or a folder of class subfolders."
    ),
    init: Path | None = typer.Option(None, "--init", help="Start from this checkpoint instead of the previous stage."),
    seed: int = typer.Option(
        0, "--seed", "--data-seed", help="Data seed: data order and augmentation (the paper's run sets vary it)."
    ),
    init_seed: int | None = typer.Option(
        None,
        "--init-seed",
        help="Seed of new weights (LHC modules, head) and dropout [default: recipe train.init_seed, 0].",
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted stage from RUN/<stage>/last.pt."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Train a stage again even though its folder has results."
    ),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    allow_test_selection: bool = typer.Option(
        False, "--allow-test-selection", help="Allow data.val_split to be the test split (recorded as a warning)."
    ),
    sets: list[str] | None = SetOption,
    quiet: bool = QuietOption,
) -> None:
    """Train one stage; a stage starts from the previous stage's best checkpoint.

    Stage 4 starts from RUN/stage4/init.pt (`fertool augment-lhc`) or adds the LHC modules to stage 3's best itself; the controller stage likewise from stage 4. Run under `torchrun --nproc_per_node N -m fertool train ... --run-dir DIR` for data-parallel training.
    """
    from rich.table import Table

    from ..precheck import existing_folder
    from ._artifacts import checkpoint_file, existing_file

    resolved = load_recipe_from_options(recipe, sets)  # light (YAML): recipe errors come first
    existing_file(csv, "CSV file")  # before the import of torch (seconds)
    existing_folder(images, "image folder")
    if init is not None:
        checkpoint_file(init)
    from ..engine.train import format_epoch, normalise_stage, train_stage
    from ..protocol import stage_dir
    from ._artifacts import resolve_csv

    stage = normalise_stage(stage)
    csv = resolve_csv(csv, quiet=quiet)
    main_rank = os.environ.get("RANK", "0") == "0"
    quiet = quiet or not main_rank
    # Epoch rows as a table under the bar on a terminal; as log lines in a log file or with -q.
    as_table = not quiet and err.is_terminal
    header_done = False

    def on_epoch(row: dict) -> None:
        nonlocal header_done
        if not as_table:
            log_line(format_epoch(row, row["max_epochs"]))
            return
        if not header_done:
            err.print(f"[bold]{_HEADER}[/bold]", highlight=False)
            header_done = True
        err.print(_epoch_line(row), highlight=False)

    made = [
        p
        for p in (stage_dir(run, stage), Path(run), *Path(run).parents)  # folders this call creates
        if not os.path.lexists(p)
    ]
    try:
        with progress_callback(f"stage {stage}", quiet=quiet, transient=True) as progress:
            summary = train_stage(
                resolved,
                stage,
                run,
                csv=csv,
                images=images,
                init=init,
                seed=seed,
                init_seed=init_seed,
                resume=resume,
                overwrite=overwrite,
                device=device,
                allow_test_selection=allow_test_selection,
                progress=None if quiet else progress,
                log=log_line,
                on_epoch=on_epoch,
            )
    except BaseException as exc:
        for folder in made:  # a run that failed before writing anything leaves no empty run folder
            try:
                folder.rmdir()
            except FileNotFoundError:
                continue
            except OSError:  # not empty: the run holds something
                break
        if isinstance(exc, KeyboardInterrupt) and main_rank and (stage_dir(run, stage) / "last.pt").is_file():
            log_line(f"to continue: fertool train --stage {stage} --run {run} --resume (same recipe and options)")
        raise
    if not main_rank:
        return

    table = Table(title=f"stage {stage}: {summary['status']}", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    best = summary.get("best_val_accuracy")
    rows = [
        ("run folder", str(stage_dir(run, stage))),
        ("model", f"{summary.get('arch')} from {summary.get('init')}"),
        ("epochs", f"{summary.get('epochs')} (best {summary.get('best_epoch')})"),
        ("best val accuracy", "-" if best is None else f"{100 * best:.2f}%"),
        ("best train loss", "-" if summary.get("best_train_loss") is None else f"{summary['best_train_loss']:.4f}"),
        ("training speed", "-" if not summary.get("images_per_s") else f"{summary['images_per_s']:,.1f} img/s"),
    ]
    if summary.get("options"):
        rows.append(("options", ", ".join(f"{k} {v}" for k, v in summary["options"].items())))
    if summary.get("skipped_steps"):
        rows.append(("fp16 skipped steps", str(summary["skipped_steps"])))
    selection = summary.get("selection")
    if selection:
        verdict = "accepted" if selection["accepted"] else "[red]rejected[/red]"
        rows.append(
            (
                "selection rule",
                f"train loss {selection['train_loss']:.4f} / starting "
                f"{selection['reference_train_loss']:.4f} = {selection['ratio']:.3f} "
                f"(< {selection['factor']}): {verdict}",
            )
        )
    for warning in summary.get("warnings") or []:
        rows.append(("[yellow]warning[/yellow]", shown(warning)))
    for key, value in rows:
        table.add_row(key, value if key == "selection rule" else shown(value))
    out.print(table)


def register(app: typer.Typer) -> None:
    app.command("train")(train_cli)
