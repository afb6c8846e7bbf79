"""Helpers shared by the command modules: consoles, progress bars, recipe options."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, List, Optional, Sequence

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

#: Results go to stdout; progress and notes to stderr so stdout stays pipeable.
out = Console()
err = Console(stderr=True)

RecipeOption = typer.Option(None, "--recipe", "-r", help="Recipe YAML file or shipped recipe name (paper, demo, ...).")
SetOption = typer.Option(
    None, "--set", help="Override a recipe key: dotted.key=value (repeatable), e.g. --set train.stages.2.lr=0.005"
)
QuietOption = typer.Option(False, "--quiet", "-q", help="No progress bars; log lines only.")
EngineOption = typer.Option(
    "auto", "--engine", metavar="ENGINE",
    help="What runs the network: torch, onnxruntime (CPU, float32; needs the onnxruntime package), "
    "or auto (onnxruntime on the CPU when installed, else torch).",
)


def load_recipe_from_options(recipe: Optional[str], sets: Optional[List[str]]):
    """Load the recipe named on the command line with its ``--set`` overrides."""
    from ..recipe import load_recipe

    return load_recipe(recipe, sets or ())


class RateColumn(ProgressColumn):
    """Items per second, e.g. ``2,731 img/s``."""

    def __init__(self, unit: str = "img") -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if speed is None:
            return Text(f"-- {self.unit}/s", style="progress.data.speed")
        return Text(f"{speed:,.0f} {self.unit}/s", style="progress.data.speed")


def make_progress(*, quiet: bool = False, unit: str = "img", extra: Sequence[ProgressColumn] = ()) -> Progress:
    """A Rich progress bar with count, rate and ETA, on stderr; disabled when quiet."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(unit),
        *extra,
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=quiet,
        transient=False,
    )


@contextmanager
def progress_callback(description: str, *, quiet: bool = False, unit: str = "img") -> Iterator:
    """Yield ``callback(done, total)`` that drives one progress bar.

    Library functions accept such a callback and never print themselves.
    """
    with make_progress(quiet=quiet, unit=unit) as progress:
        task = progress.add_task(description, total=None)

        def callback(done: int, total: int | None = None, **fields) -> None:
            progress.update(task, completed=done, total=total, **fields)

        yield callback
