"""``fertool prepare``: FER2013 CSV -> JPEG folders, manifest and summary (SPEC §1)."""

from __future__ import annotations

import signal
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional

import typer

from ._common import QuietOption, RecipeOption, SetOption, err, load_recipe_from_options, out, progress_callback


def prepare_cli(
    csv: Path = typer.Option(..., "--csv", help="FER2013 CSV: fer2013.csv, icml_face_data.csv or train.csv."),
    out_dir: Path = typer.Option(..., "--out", help="Folder to create: DIR/<Usage>/<Class>/<row>.jpg + manifest."),
    recipe: Optional[str] = RecipeOption,
    sets: Optional[List[str]] = SetOption,
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing prepared folder (kept until "
                                   "the new one is complete)."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Write the good rows and list the bad ones in "
                                  "prepare.json (default: refuse the CSV)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Worker processes (default: one per core)."),
    quiet: bool = QuietOption,
) -> None:
    """Prepare FER2013 images exactly as the reference: 224x224 float bilinear, floor, RGB, JPEG q100 4:4:4."""
    from ..data.prepare import CANONICAL_PREFIX, prepare

    resolved = load_recipe_from_options(recipe, sets)
    with _terminate_as_interrupt(), progress_callback("prepare", quiet=quiet) as callback:
        summary = prepare(csv, out_dir, config=resolved.prepare, recipe=resolved, overwrite=overwrite,
                          skip_bad=skip_bad, workers=workers, progress=callback)
    _print_counts(summary)
    check = summary["canonical_fer2013"]
    for warning in summary["warnings"]:
        if warning.startswith(CANONICAL_PREFIX):
            continue
        err.print(f"[yellow]warning:[/] {warning}", highlight=False, soft_wrap=True)
    if check["match"]:
        err.print("canonical FER2013: yes (35,887 rows; 28,709 / 3,589 / 3,589)", highlight=False)
    else:
        err.print(f"[yellow]warning:[/] {CANONICAL_PREFIX} (35,887 rows; 28,709 / 3,589 / 3,589; Training "
                  "classes 3,995 / 436 / 4,097 / 7,215 / 4,830 / 3,171 / 4,965):", highlight=False, soft_wrap=True)
        for difference in check["differences"]:
            err.print(f"  - {difference}", highlight=False, soft_wrap=True)


@contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """``kill`` (SIGTERM) cleans up like Ctrl-C: the temporary folder is removed."""

    def handler(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. embedded): leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _print_counts(summary: dict) -> None:
    from rich.table import Table

    from .. import CLASS_NAMES

    counts = summary["counts"]
    table = Table(title=f"{summary['images']:,} images in {summary['output']}")
    table.add_column("class")
    for split in counts:
        table.add_column(split, justify="right")
    table.add_column("total", justify="right")
    for name in CLASS_NAMES:
        row = [counts[split][name] for split in counts]
        table.add_row(name, *(f"{n:,}" for n in row), f"{sum(row):,}")
    totals = [summary["split_totals"][split] for split in counts]
    table.add_row("[bold]total", *(f"[bold]{n:,}" for n in totals), f"[bold]{sum(totals):,}")
    out.print(table)


def register(app: typer.Typer) -> None:
    app.command("prepare")(prepare_cli)
