"""``fertool prepare``: FER2013 (+ FER+ labels), class folders or RAF-DB -> JPEG folders, manifest, summary."""

from __future__ import annotations

from pathlib import Path

import typer

from ..errors import printable
from ._common import QuietOption, RecipeOption, SetOption, err, load_recipe_from_options, out, progress_callback, shown


def prepare_cli(
    csv: Path | None = typer.Option(None, "--csv", help="FER2013 CSV: fer2013.csv, icml_face_data.csv or train.csv."),
    ferplus: Path | None = typer.Option(
        None,
        "--ferplus",
        help="FER+ label file (fer2013new.csv) for --csv: FER+'s 8 classes instead of FER2013's labels.",
    ),
    label_mode: str | None = typer.Option(
        None,
        "--label-mode",
        help="FER+ labels: majority (FER+'s rule), "
        "crossentropy (FER+'s vote distributions) or plurality; "
        "sets prepare.label_mode.",
    ),
    folder: Path | None = typer.Option(
        None,
        "--folder",
        help="Class folders ROOT/<split>/<class>/<image> (AffectNet style), images of any size and colour.",
    ),
    rafdb: Path | None = typer.Option(
        None, "--rafdb", help="RAF-DB basic folder (with EmoLabel/list_patition_label.txt and Image/aligned/)."
    ),
    out_dir: Path | None = typer.Option(
        None, "--out", help="Folder to create: DIR/<split>/<Class>/<row>.jpg + manifest."
    ),
    verify: Path | None = typer.Option(
        None,
        "--verify",
        help="Check the prepared folder DIR instead: rows vs "
        "prepare.json, every image, the sha256 of sources still present.",
    ),
    recipe: str | None = RecipeOption,
    sets: list[str] | None = SetOption,
    overwrite: bool = typer.Option(
        False,
        "--overwrite",
        help="Write into an existing folder: fertool's own files are replaced once the new "
        "ones are complete, nothing else in it is removed.",
    ),
    skip_bad: bool = typer.Option(
        False, "--skip-bad", help="Write the good rows and list the bad ones in prepare.json (default: refuse the CSV)."
    ),
    workers: int | None = typer.Option(None, "--workers", min=1, help="Worker processes (default: one per core)."),
    quiet: bool = QuietOption,
) -> None:
    """Prepare FER2013 exactly as the reference (224x224 float bilinear, floor, RGB, JPEG q100 4:4:4), with
    FER+ labels, or class folders / RAF-DB resized as the recipe's prepare section says."""
    if verify is not None:
        _verify(verify, quiet=quiet)
        return
    if out_dir is None:
        raise typer.BadParameter("give --out DIR (the folder to create), or --verify DIR", param_hint="--out")
    sources = [name for name, value in (("--csv", csv), ("--folder", folder), ("--rafdb", rafdb)) if value is not None]
    if len(sources) != 1:
        raise typer.BadParameter(
            "give exactly one of --csv (FER2013, with --ferplus for FER+), --folder or --rafdb"
            + (f" (got {' and '.join(sources)})" if sources else "")
        )
    if ferplus is not None and csv is None:
        raise typer.BadParameter("the FER+ label file goes with the FER2013 pixels: pass --csv fer2013.csv too")
    if label_mode is not None:
        if ferplus is None:
            raise typer.BadParameter("only FER+ labels have modes; pass --ferplus", param_hint="--label-mode")
        sets = [*(sets or []), f"prepare.label_mode={label_mode}"]
    from ._artifacts import existing_file

    resolved = load_recipe_from_options(recipe, sets)  # light (YAML): recipe errors come first
    existing_file(csv, "CSV file")  # before the imports of OpenCV and torch (seconds)
    existing_file(ferplus, "FER+ label file")
    if csv is not None:
        from ._artifacts import resolve_csv

        csv = resolve_csv(csv, quiet=quiet)
    from ..data.prepare import CANONICAL_PREFIX, prepare

    if csv is None:
        _prepare_images(
            resolved, folder, rafdb, out_dir, overwrite=overwrite, skip_bad=skip_bad, workers=workers, quiet=quiet
        )
        return
    with progress_callback("prepare", quiet=quiet) as callback:
        summary = prepare(
            csv,
            out_dir,
            config=resolved.prepare,
            recipe=resolved,
            overwrite=overwrite,
            skip_bad=skip_bad,
            workers=workers,
            progress=callback,
            ferplus=ferplus,
        )
    _print_counts(summary)
    check = summary["canonical_fer2013"]
    for warning in summary["warnings"]:
        if warning.startswith(CANONICAL_PREFIX):
            continue
        err.print(f"[yellow]warning:[/] {shown(warning)}", highlight=False, soft_wrap=True)
    if check["match"]:
        err.print("canonical FER2013: yes (35,887 rows; 28,709 / 3,589 / 3,589)", highlight=False)
    else:
        err.print(
            f"[yellow]warning:[/] {CANONICAL_PREFIX} (35,887 rows; 28,709 / 3,589 / 3,589; Training "
            "classes 3,995 / 436 / 4,097 / 7,215 / 4,830 / 3,171 / 4,965):",
            highlight=False,
            soft_wrap=True,
        )
        for difference in check["differences"]:
            err.print(f"  - {shown(difference)}", highlight=False, soft_wrap=True)


def _prepare_images(
    recipe,
    folder: Path | None,
    rafdb: Path | None,
    out_dir: Path,
    *,
    overwrite: bool,
    skip_bad: bool,
    workers: int | None,
    quiet: bool,
) -> None:
    from ..data.folders import scan_folder, scan_rafdb
    from ..data.prepare_images import prepare_images

    classes = recipe.data.classes or None
    images = scan_folder(folder, classes) if folder is not None else scan_rafdb(rafdb, classes)
    with progress_callback("prepare", quiet=quiet) as callback:
        summary = prepare_images(
            images,
            out_dir,
            config=recipe.prepare,
            recipe=recipe,
            overwrite=overwrite,
            skip_bad=skip_bad,
            workers=workers,
            progress=callback,
        )
    _print_counts(summary)
    for warning in summary["warnings"]:
        err.print(f"[yellow]warning:[/] {shown(warning)}", highlight=False, soft_wrap=True)


def _print_counts(summary: dict) -> None:
    from rich.table import Table

    counts = summary["counts"]
    table = Table(
        title=f"{summary['images']:,} images of {len(summary['classes'])} classes in {shown(summary['output'])}"
    )
    table.add_column("class")
    for split in counts:
        table.add_column(split, justify="right")
    table.add_column("total", justify="right")
    for name in summary["classes"]:
        row = [counts[split][name] for split in counts]
        table.add_row(shown(name), *(f"{n:,}" for n in row), f"{sum(row):,}")
    totals = [summary["split_totals"][split] for split in counts]
    table.add_row("[bold]total", *(f"[bold]{n:,}" for n in totals), f"[bold]{sum(totals):,}")
    out.print(table)


def _verify(folder: Path, *, quiet: bool) -> None:
    from ..data.verify import verify_prepared

    with progress_callback("verify", quiet=quiet) as callback:
        result = verify_prepared(folder, progress=callback)
    for note in result["notes"]:
        err.print(f"note: {printable(note)}", highlight=False, markup=False, soft_wrap=True)
    out.print(
        printable(
            f"{folder}: OK, {result['images']:,} images in {', '.join(result['splits'])}; "
            f"{result['sources_checked']:,} source sha256 checked"
        ),
        highlight=False,
        markup=False,
    )


def register(app: typer.Typer) -> None:
    app.command("prepare")(prepare_cli)
